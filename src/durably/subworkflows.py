"""What a sub-workflow task runs (SPEC §3.4), apart from the runtime that starts its child.

A sub-workflow task never blocks a thread on its child. When it becomes runnable the runtime
starts the child execution and the task *waits*, like an event wait, for the event the child's
end sends it (:func:`durably.plan.child_event`). That event makes the task ready; its attempt
then runs :func:`adopt_outcome`, which turns the child's outcome into the task's output or
failure, so retries, claims, recovery and workers need nothing of their own.
"""

from __future__ import annotations

from typing import Any

from .context import Context
from .exceptions import ExecutionStateError, SubworkflowFailed

# Where a sub-workflow task's received payloads keep its child's outcome.
CHILD_OUTCOME = "durably.child"
_CHILD_EVENT = "durably.child:"


def child_event(child_id: str) -> str:
    """The event a child execution's end sends its parent's task (a reserved name: ``send``
    refuses names under ``durably.``)."""
    return f"{_CHILD_EVENT}{child_id}"


def child_of_event(name: str | None) -> str | None:
    """The child execution whose end the event ``name`` is (None: not a child's event)."""
    if name is None or not name.startswith(_CHILD_EVENT):
        return None
    return name[len(_CHILD_EVENT) :]


def adopt_outcome(ctx: Context, handle: Any) -> dict[str, Any]:
    """The sub-workflow task's body: its child's final context, or the child's failure."""
    outcome = handle.child
    if outcome is None:
        raise ExecutionStateError(f"sub-workflow task {handle.task_name!r} has no child outcome")
    if outcome.get("status") != "completed":
        raise SubworkflowFailed(
            f"sub-workflow execution {outcome.get('execution_id')} {outcome.get('status')}"
            + (f": {outcome['error']}" if outcome.get("error") else "")
        )
    context = outcome.get("context")
    return dict(context) if isinstance(context, dict) else {}


def compensate_child(ctx: Context) -> None:
    """Stands for "undo the child": the runtime runs the child's own compensations instead
    of calling this (a completed child is compensated when its parent fails)."""
    raise ExecutionStateError("a sub-workflow's compensation is run by the runtime")


def outcome(execution_id: str, status: str, context: Any, error: str | None) -> dict[str, Any]:
    """The payload a child's end sends its parent's task."""
    return {"execution_id": execution_id, "status": status, "context": context, "error": error}
