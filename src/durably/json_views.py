"""The JSON documents the command line prints with ``--json``: executions of both kinds,
their tasks and steps, and each task's context diff.

Context values are encoded as durably stores them, special types tagged (``codec.TAG``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import codec
from .context import Context
from .diffs import Diff, TaskInput, task_diffs
from .engine import Engine
from .results import ExecutionResult, TaskResult

if TYPE_CHECKING:
    from .saga_repository import SagaExecutionSummary

SAGA_TERMINAL = frozenset({"finished", "errored"})


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def encode_value(value: Any) -> Any:
    """A context value as plain JSON (special types tagged, as stored)."""
    return json.loads(codec.dumps_value(value))


def encode_context(ctx: Mapping[str, Any] | None) -> Any:
    if ctx is None:
        return None
    if isinstance(ctx, Context):
        return json.loads(ctx.to_json())
    return json.loads(codec.dumps(ctx))


def diff_json(diff: Diff) -> dict[str, Any]:
    return {
        "added": {k: encode_value(v) for k, v in diff.added.items()},
        "changed": {
            k: {"old": encode_value(old), "new": encode_value(new)}
            for k, (old, new) in diff.changed.items()
        },
        "removed": list(diff.removed),
    }


# -- workflow executions -------------------------------------------------------------------


def summary_json(result: ExecutionResult) -> dict[str, Any]:
    return {
        "id": str(result.execution_id),
        "kind": "workflow",
        "workflow": result.workflow,
        "status": result.status,
        "version": result.version,
        "created_at": iso(result.created_at),
        "completed_at": iso(result.completed_at),
        "error": result.error,
        "parent_id": str(result.parent_id) if result.parent_id else None,
        "parent_task": result.parent_task,
    }


def task_json(task: TaskResult, diff: Diff | None, basis: TaskInput | None) -> dict[str, Any]:
    return {
        "status": task.status,
        "attempts": task.attempts,
        "error": task.error,
        "started_at": iso(task.started_at),
        "completed_at": iso(task.completed_at),
        "compensation": task.compensation,
        "context": encode_context(task.context),
        "input_from": basis.basis if basis else None,
        "diff": diff_json(diff) if diff is not None else None,
        "map_parent": task.parent,
        "map_index": task.index,
        "child_id": str(task.child_id) if task.child_id else None,
        "wait": {"event": task.wait_event, "wake_at": iso(task.wake_at)}
        if task.status == "waiting"
        else None,
        "history": [
            {
                "attempt": a.number,
                "status": a.status,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "worker": a.worker,
                "error": a.error,
                "logs": [
                    {"at": iso(e.at), "level": e.level, "logger": e.logger, "message": e.message}
                    for e in a.logs
                ],
                "version": a.version,
            }
            for a in task.history
        ],
    }


def execution_json(engine: Engine, result: ExecutionResult) -> dict[str, Any]:
    diffs, inputs, exact = task_diffs(engine, result)
    return {
        **summary_json(result),
        "context": encode_context(result.context),
        "diff_basis": "dependencies" if exact else "previous_task",
        "tasks": {
            name: task_json(task, diffs.get(name), inputs.get(name))
            for name, task in result.tasks.items()
        },
    }


# -- saga executions -----------------------------------------------------------------------


def saga_summary_json(execution: SagaExecutionSummary) -> dict[str, Any]:
    """Shaped like :func:`summary_json`, so that ``durably list`` mixes both kinds."""
    status = execution.status.value
    return {
        "id": str(execution.id),
        "kind": "saga",
        "workflow": execution.saga_name,
        "status": status,
        "fingerprint": execution.fingerprint,
        "created_at": iso(execution.created_at),
        "completed_at": iso(execution.updated_at) if status in SAGA_TERMINAL else None,
        "error": execution.error,
    }


def saga_json(execution: SagaExecutionSummary) -> dict[str, Any]:
    return {
        **saga_summary_json(execution),
        "context": encode_context(execution.context),
        "rollback_errors": list(execution.rollback_errors),
        "steps": [
            {
                "path": step.path,
                "name": step.name,
                "kind": step.kind,
                "status": step.status.value,
                "error": step.error,
            }
            for step in execution.steps
        ],
    }
