"""The structured fields of the saga side's log records (SPEC §8): every record carries
``execution_id``, ``workflow``, ``task``, ``attempt`` and ``action`` as ``extra`` fields, so a
log pipeline can filter on them without parsing messages. For a saga, ``execution_id`` is the
saga execution's uuid and ``task`` the step path; ``workflow`` and ``attempt`` are None.

A record about a message takes the execution and the step from its headers
(:func:`message_fields`); a message a consumer rejects for good is logged by
:func:`log_rejected`, the same way on every broker."""

from __future__ import annotations

import logging
from typing import Any

from .exceptions import UndecodableMessageError
from .saga_messages import HEADER_SAGA, HEADER_STEP
from .wire import Message

__all__ = ["log_fields", "log_rejected", "message_fields"]

# Brokers log under one logger, whichever of their modules writes the record.
broker_logger = logging.getLogger("durably.broker")


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


def message_fields(message: Message, action: str) -> dict[str, Any]:
    """``extra=`` for a log record about a saga message: its saga and step, id and topic."""
    headers = message.headers
    return log_fields(
        action,
        execution_id=headers.get(HEADER_SAGA),
        task=headers.get(HEADER_STEP),
        message_id=message.id,
        topic=message.topic,
    )


def log_rejected(message: Message, error: UndecodableMessageError, what: str) -> None:
    """Log, once, a message a consumer rejects for good (``what``: "dead-lettered", ...)."""
    broker_logger.error(
        "message %s on %r rejected (%s): %s",
        message.id or "?",
        message.topic,
        what,
        error,
        extra=message_fields(message, "message_rejected"),
    )
