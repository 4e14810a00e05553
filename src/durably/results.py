"""What an execution looks like from outside: its status, context, and each task's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from uuid import UUID

from .context import Context

# Execution statuses (SPEC §3.2).
PENDING: Final = "pending"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
PAUSED: Final = "paused"
EXECUTION_TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})

# Task statuses.
NOT_STARTED: Final = "not_started"
READY: Final = "ready"
SKIPPED: Final = "skipped"
ABANDONED: Final = "abandoned"
TASK_TERMINAL: Final = frozenset({COMPLETED, FAILED, SKIPPED, ABANDONED})


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome in an execution."""

    status: str
    attempts: int
    error: str | None
    context: Context | None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    compensation: str | None = None
    """``None`` (nothing to undo), ``"pending"``, ``"completed"`` or ``"failed"``."""


@dataclass(frozen=True)
class ExecutionResult:
    """An execution as stored: terminal once ``status`` is completed, failed or cancelled."""

    execution_id: UUID
    workflow: str
    status: str
    context: Context
    error: str | None = None
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    version: str = ""
    created_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in EXECUTION_TERMINAL
