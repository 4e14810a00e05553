"""How each task changed the context: the input it received, rebuilt from its dependencies'
saved outputs (SPEC §3.1), and what its output added, changed and removed.

``durably show`` and the demo present these; :mod:`durably.views` and
:mod:`durably.json_views` render them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from . import codec
from .engine import Engine
from .merge import merge
from .results import ExecutionResult
from .workflow import registered


@dataclass
class Diff:
    """How a task's output differs from the input it received."""

    added: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def between(cls, before: Mapping[str, Any], after: Mapping[str, Any]) -> Diff:
        diff = cls()
        for key, value in after.items():
            if key not in before:
                diff.added[key] = value
            elif not _same(before[key], value):
                diff.changed[key] = (before[key], value)
        diff.removed = {key: value for key, value in before.items() if key not in after}
        return diff

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


@dataclass
class TaskInput:
    """What a task received, and where it came from (``basis`` is for people)."""

    data: dict[str, Any]
    basis: str


def initial_context(engine: Engine, execution_id: UUID) -> dict[str, Any]:
    """The context the execution started with (ExecutionResult holds only the final one)."""
    with engine.store.read() as tx:
        row = tx.fetch_one("get_execution", {"id": str(execution_id)})
        if row is None:
            return {}
        saved = tx.fetch_one("get_context", {"id": str(row["context_id"])})
    return codec.loads(saved["value"]) if saved else {}


def task_configurations(engine: Engine, execution_id: UUID) -> dict[str, dict[str, Any]]:
    """Each task's stored configuration (retry, merge, a fork's ``context_patch``...)."""
    with engine.store.read() as tx:
        rows = tx.fetch_all("get_tasks", {"id": str(execution_id)})
    return {row["task_name"]: json.loads(row["task_configuration"] or "{}") for row in rows}


def stored_dependencies(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]] | None:
    """Dependencies recorded with the tasks, if the engine records them (today it does not)."""
    found: dict[str, list[str]] = {}
    for name, config in configs.items():
        deps = config.get("dependencies")
        if not isinstance(deps, list):
            return None
        found[name] = [str(dep) for dep in deps]
    return found or None


def task_inputs(engine: Engine, result: ExecutionResult) -> tuple[dict[str, TaskInput], bool]:
    """Each completed task's input, rebuilt by SPEC §3.1 when the dependencies are known
    (exact), else the previous task's output in declaration order (approximate)."""
    initial = initial_context(engine, result.execution_id)
    configs = task_configurations(engine, result.execution_id)
    outputs = {name: dict(t.context) for name, t in result.tasks.items() if t.context is not None}
    wf = registered(result.workflow)
    dependencies: dict[str, list[str]] | None = None
    strategies: dict[str, Any] = {}
    if wf is not None and wf.version == result.version and set(wf.tasks) == set(result.tasks):
        dependencies = {name: list(task.dependencies) for name, task in wf.tasks.items()}
        strategies = {name: task.merge for name, task in wf.tasks.items()}
    else:
        dependencies = stored_dependencies(configs)
    inputs: dict[str, TaskInput] = {}
    if dependencies is not None:
        for name in result.tasks:
            deps = dependencies.get(name, [])
            if not deps:
                inputs[name] = TaskInput(initial, "the initial context")
                continue
            present = [(dep, outputs[dep]) for dep in deps if dep in outputs]
            strategy = strategies.get(name, "latest_wins")
            try:
                data = merge(strategy, present) if present else {}
            except Exception:
                continue
            how = (
                ""
                if len(present) < 2
                else f", merged {strategy if isinstance(strategy, str) else 'by callable'}"
            )
            inputs[name] = TaskInput(data, " + ".join(dep for dep, _ in present) + how)
        return patched(inputs, configs), True
    previous: tuple[str, dict[str, Any]] | None = None
    for name in result.tasks:
        if previous is None:
            inputs[name] = TaskInput(initial, "the initial context")
        else:
            inputs[name] = TaskInput(previous[1], f"{previous[0]} (the previous task)")
        if name in outputs:
            previous = (name, outputs[name])
    return patched(inputs, configs), False


def patched(
    inputs: dict[str, TaskInput], configs: Mapping[str, Mapping[str, Any]]
) -> dict[str, TaskInput]:
    """A fork's ``--set`` values are part of the forked task's input, not its changes."""
    for name, config in configs.items():
        patch = config.get("context_patch")
        if name in inputs and patch:
            # Stored as the codec's JSON text (older rows: as a JSON object).
            values = codec.loads(patch if isinstance(patch, str) else json.dumps(patch))
            basis = f"{inputs[name].basis}, with --set {', '.join(values)}"
            inputs[name] = TaskInput({**inputs[name].data, **values}, basis)
    return inputs


def task_diffs(
    engine: Engine, result: ExecutionResult
) -> tuple[dict[str, Diff], dict[str, TaskInput], bool]:
    """The diff of each task that saved an output, the tasks' inputs, and whether those were
    rebuilt from the dependencies (exact) or not."""
    inputs, exact = task_inputs(engine, result)
    diffs = {
        name: Diff.between(inputs[name].data, dict(task.context))
        for name, task in result.tasks.items()
        if task.context is not None and name in inputs
    }
    return diffs, inputs, exact
