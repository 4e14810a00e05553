"""One workflow execution as the dashboard shows it, read by the same code paths as
``durably show``: the stored snapshot becomes a result (``results.result_of``), each task's
input and diff come from ``diffs.task_diffs`` (the plan's §3.1 rule), and mapped tasks are
counted per status as ``views.instance_counts`` counts them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ..diffs import Diff, task_diffs
from ..engine import Engine
from ..execution_views import instance_counts, waiting_for
from ..json_views import encode_context, encode_value
from ..results import Attempt, ExecutionResult, TaskResult
from ..view_parts import duration
from . import graph, timeline


def pretty(value: Any) -> str:
    """A JSON value (already codec-encoded) for people: indented, non-ASCII kept."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def shown(value: Any) -> str:
    """A context value as its stored JSON (special types tagged), indented."""
    return pretty(encode_value(value))


@dataclass(frozen=True)
class AttemptView:
    number: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    took: str
    worker: str | None
    error: str | None
    logs: str | None  # present once attempts carry their log records


@dataclass(frozen=True)
class DiffView:
    added: list[tuple[str, str]]
    changed: list[tuple[str, str, str]]
    removed: list[str]

    @classmethod
    def of(cls, diff: Diff) -> DiffView:
        return cls(
            [(k, shown(v)) for k, v in diff.added.items()],
            [(k, shown(old), shown(new)) for k, (old, new) in diff.changed.items()],
            list(diff.removed),
        )

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


@dataclass
class TaskView:
    name: str
    status: str
    attempts: int
    error: str | None
    compensation: str | None
    took: str
    dependencies: tuple[str, ...]
    basis: str | None = None
    input_json: str | None = None
    diff: DiffView | None = None
    history: list[AttemptView] = field(default_factory=list)
    waiting: str = ""
    counts: str = ""
    instances: list[TaskView] = field(default_factory=list)
    child_id: str | None = None  # a sub-workflow task's child execution


@dataclass
class ExecutionView:
    result: ExecutionResult
    tasks: list[TaskView]
    graph: graph.Graph
    timeline: timeline.Timeline
    exact_inputs: bool
    context_json: str

    @property
    def id(self) -> UUID:
        return self.result.execution_id


def _logs(attempt: Attempt) -> str | None:
    # Attempts carry their log records once per-attempt logs are stored (SPEC §8).
    logs = getattr(attempt, "logs", None)
    if not logs:
        return None
    if isinstance(logs, str):
        return logs
    return "\n".join(str(line) for line in logs)


def _attempts(task: TaskResult) -> list[AttemptView]:
    return [
        AttemptView(
            a.number, a.status, a.started_at, a.finished_at,
            duration(a.started_at, a.finished_at), a.worker, a.error, _logs(a),
        )
        for a in task.history
    ]  # fmt: skip


def _spans(task: TaskResult, created: datetime | None) -> list[timeline.Span]:
    return timeline.attempt_spans(
        ((a.number, a.status, a.started_at, a.finished_at) for a in task.history),
        waiting_since=(created or task.started_at) if task.status == "waiting" else None,
        waiting_for=waiting_for(task) if task.status == "waiting" else "",
    )


def build(engine: Engine, execution_id: UUID, now: datetime | None = None) -> ExecutionView:
    """Everything the execution page shows. Raises ``ExecutionNotFound``."""
    snapshot = engine.snapshot(execution_id, initial=False)
    shape = engine.shape(snapshot)
    result = engine.result(snapshot, shape)
    diffs, inputs, exact = task_diffs(engine, result)
    counts = instance_counts(result)
    if shape is not None:
        deps = {name: tuple(t.dependencies) for name, t in shape.tasks.items()}
    else:
        deps = {name: () for name, t in result.tasks.items() if t.parent is None}
    views: dict[str, TaskView] = {}
    rows: dict[str, list[timeline.Span]] = {}
    for name, task in result.tasks.items():
        view = TaskView(
            name=name,
            status=task.status,
            attempts=task.attempts,
            error=task.error,
            compensation=task.compensation,
            took=duration(task.started_at, task.completed_at),
            dependencies=deps.get(name, ()),
            history=_attempts(task),
            waiting=waiting_for(task) if task.status == "waiting" and not task.child_id else "",
            child_id=str(task.child_id) if task.child_id else None,
        )
        if name in inputs:
            view.basis = inputs[name].basis
            view.input_json = pretty(encode_context(inputs[name].data))
        if name in diffs:
            view.diff = DiffView.of(diffs[name])
        row = task.parent if task.parent is not None else name
        rows.setdefault(row, []).extend(_spans(task, result.created_at))
        if task.parent is not None and task.parent in views:
            views[task.parent].instances.append(view)
        else:
            views[name] = view
    for name, per in counts.items():
        if name in views:
            views[name].counts = ", ".join(f"{n} {s}" for s, n in sorted(per.items()))
    statuses = {name: view.status for name, view in views.items()}
    end = result.completed_at if result.done and result.completed_at else now or datetime.now(UTC)
    return ExecutionView(
        result=result,
        tasks=list(views.values()),
        graph=graph.layout(deps, statuses, counts),
        timeline=timeline.build(list(rows.items()), result.created_at, end),
        exact_inputs=exact,
        context_json=pretty(encode_context(result.context)),
    )
