"""The structured fields of the saga side's log records (SPEC §8): every record carries
``execution_id``, ``workflow``, ``task``, ``attempt`` and ``action`` as ``extra`` fields, so a
log pipeline can filter on them without parsing messages. For a saga, ``execution_id`` is the
saga execution's uuid and ``task`` the step path; ``workflow`` and ``attempt`` are None."""

from __future__ import annotations

from typing import Any

__all__ = ["log_fields"]


def log_fields(
    action: str,
    *,
    execution_id: Any = None,
    task: str | None = None,
    attempt: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """``extra=`` for a log record: the five SPEC fields, then ``more`` (topic, message_id)."""
    return {
        "execution_id": str(execution_id) if execution_id is not None else None,
        "workflow": None,
        "task": task,
        "attempt": attempt,
        "action": action,
        **more,
    }
