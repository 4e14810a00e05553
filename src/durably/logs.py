"""Structured logs (SPEC §8): loggers under ``durably.*``, and on every record the fields
``execution_id``, ``workflow``, ``task``, ``attempt`` and ``action`` as ``extra``.

The message itself says the same in words, so a log read without a formatter is complete.
"""

from __future__ import annotations

import logging
from typing import Any


def fields(
    action: str,
    execution_id: str | None = None,
    workflow: str | None = None,
    task: str | None = None,
    attempt: int | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The ``extra`` of a durably log record."""
    return {
        "action": action,
        "execution_id": execution_id,
        "workflow": workflow,
        "task": task,
        "attempt": attempt,
        **more,
    }


def log(
    logger: logging.Logger,
    level: int,
    message: str,
    *args: Any,
    action: str,
    execution_id: str | None = None,
    workflow: str | None = None,
    task: str | None = None,
    attempt: int | None = None,
    **more: Any,
) -> None:
    if logger.isEnabledFor(level):
        extra = fields(action, execution_id, workflow, task, attempt, **more)
        logger.log(level, message, *args, extra=extra)
