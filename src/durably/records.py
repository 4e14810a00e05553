"""Typed rows: what the repository reads back from the workflow tables.

Times are aware datetimes here (for people) and epoch seconds in :mod:`durably.plan` (for
arithmetic); :meth:`TaskRecord.state` converts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .state import TaskState


def epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    id: str
    workflow: str
    version: str
    status: str
    context_id: str
    final_context_id: str | None
    claimed_by: str | None
    heartbeat_at: datetime | None
    error: str | None
    key: str | None
    parent_id: str | None
    created_at: datetime | None
    completed_at: datetime | None
    recovery_attempts: int = 0
    parent_task: str | None = None  # set on a sub-workflow's execution only
    trace_context: str | None = None  # the trace of the span that started it (tracing.py)
    shape: str | None = None  # the shape version it needs (versions.py)
    priority: int = 0
    configuration_id: str | None = None  # its tasks' (repository/configurations.py)


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """A sub-workflow execution, as its parent knows it."""

    id: str
    task: str  # the parent's task that started it
    status: str
    workflow: str


# Not frozen: a result reads every task row of an execution, and a frozen dataclass pays an
# object.__setattr__ per field (25 here) on construction. Nothing mutates a record.
@dataclass(slots=True, eq=False)
class TaskRecord:
    id: str
    name: str
    status: str
    attempt: int
    max_attempts: int
    error: str | None
    last_error: str | None
    started_at: datetime | None
    completed_at: datetime | None
    retry_at: datetime | None
    claimed_by: str | None
    heartbeat_at: datetime | None
    compensation: str | None
    compensation_error: str | None
    recovery_attempts: int
    # The stored JSON, parsed only when asked for: whole in a snapshot's records, else only
    # the row's own part, a fork's context_patch (repository/configurations.py).
    config_text: str | None = None
    wake_at: datetime | None = None
    wait_event: str | None = None
    waited: bool = False
    received_text: str | None = None  # event payloads for its input (codec JSON)
    map_parent: str | None = None
    map_index: int | None = None
    map_total: int | None = None
    logs_text: str | None = None  # the current attempt's log records (JSON text)
    code_version: str | None = None  # the version of the code its current attempt ran

    @property
    def configuration(self) -> dict[str, Any]:
        """The stored configuration (dependencies, retry, merge, a fork's context_patch)."""
        if not self.config_text:
            return {}
        parsed = json.loads(self.config_text)
        return parsed if isinstance(parsed, dict) else {}

    @property
    def patched(self) -> bool:
        """Whether a fork patched this task's input (cheap: no parsing)."""
        return bool(self.config_text) and "context_patch" in (self.config_text or "")

    def state(self) -> TaskState:
        return TaskState(
            id=self.id,
            name=self.name,
            status=self.status,
            attempt=self.attempt,
            retry_at=epoch(self.retry_at),
            claimed_by=self.claimed_by,
            heartbeat_at=epoch(self.heartbeat_at),
            error=self.error,
            compensation=self.compensation,
            started_at=epoch(self.started_at),
            wake_at=epoch(self.wake_at),
            wait_event=self.wait_event,
            waited=self.waited,
            parent=self.map_parent,
            index=self.map_index,
            instances=self.map_total,
        )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    task: str
    number: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    error: str | None
    logs_text: str | None = None  # its log records (JSON text, attempt_logs)
    code_version: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerVersions:
    """What a worker advertised: the definitions (``name@shape version``) it serves."""

    worker: str
    versions: tuple[str, ...]
    lease: float
    started_at: datetime | None
    heartbeat_at: datetime | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A task a worker just claimed: its row's essentials."""

    task_id: str
    execution_id: str
    name: str
    attempt: int
    configuration: dict[str, Any]  # the row's own part only (repository/configurations.py)
    wait_event: str | None = None  # claimed from an event wait past its timeout
    map_parent: str | None = None  # an instance of this mapped task
    # Its whole row as the claim left it (running, this attempt): not read again.
    record: TaskRecord | None = None
    pipeline_key: str | None = None  # the claimable definition it was claimed for
    # Its execution's row as the claim read it (PostgreSQL's claim_tasks), with the initial
    # context for a root task; None where the claim did not read it.
    execution: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StaleClaim:
    """A claim to take back: the task and who held it."""

    task_id: str
    execution_id: str
    name: str
    claimed_by: str
    attempt: int
    recovery_attempts: int
    started_at: datetime | None = None

    @classmethod
    def of(cls, execution_id: str, task: TaskRecord) -> StaleClaim:
        return cls(
            task_id=task.id,
            execution_id=execution_id,
            name=task.name,
            claimed_by=task.claimed_by or "",
            attempt=task.attempt,
            recovery_attempts=task.recovery_attempts,
            started_at=task.started_at,
        )

    def ref(self) -> AttemptRef:
        return AttemptRef(
            self.execution_id, self.task_id, self.name, self.attempt, self.claimed_by,
            epoch(self.started_at),
        )  # fmt: skip


@dataclass(slots=True)
class AttemptRef:
    """One attempt of one task: the fence its outcome is written under (the claim of
    ``worker`` on attempt ``number``) and what its history row records."""

    execution_id: str
    task_id: str
    name: str
    number: int
    worker: str
    started_at: float | None
    logs: str | None = None  # its log records (JSON text), written with its outcome


@dataclass
class Snapshot:
    """Everything stored about one execution: what ``get``, ``show`` and the dashboard read."""

    execution: ExecutionRecord
    tasks: list[TaskRecord]
    outputs: dict[str, str]
    initial: str | None  # None when not asked for and a final context exists
    final: str | None
    attempts: dict[str, list[AttemptRecord]]
