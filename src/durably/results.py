"""What an execution looks like from outside: its status, context, and each task's outcome,
with every attempt (its history)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from . import codec, plan
from .attempt_logs import LogEntry, entries_of
from .context import Context
from .records import AttemptRecord, ChildRecord, ExecutionRecord, Snapshot, TaskRecord
from .state import ExecutionState, Shape
from .statuses import COMPLETED, EXECUTION_TERMINAL, FAILED, RUNNING, WAITING


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task: ``status`` is ``completed``, ``failed``, ``running``, or
    ``lost`` (its claim was taken back after its process stopped beating)."""

    number: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    error: str | None
    logs: tuple[LogEntry, ...] = ()
    """The records the attempt logged (``handle.logger``, SPEC §8), oldest first; when they
    outgrew the bound, the last says how many more were not kept."""
    version: str | None = None
    """The version of the workflow definition whose code ran it (``wf.version``)."""


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
    """``None`` (nothing to undo), ``"completed"`` or ``"failed"``."""
    history: tuple[Attempt, ...] = ()
    """Every attempt, oldest first: an earlier attempt's error stays visible here."""
    wake_at: datetime | None = None
    """Waiting: when its timer is over, or when its event wait times out."""
    wait_event: str | None = None
    """Waiting for this event (``engine.send``)."""
    parent: str | None = None
    """An instance of a mapped task: that task's name (its own name is ``task[index]``)."""
    index: int | None = None
    child_id: UUID | None = None
    """A sub-workflow task: the execution of its child (the latest one, after retries)."""


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
    key: str | None = None
    """The idempotency key it was started with, if any."""
    parent_id: UUID | None = None
    """The execution it was forked from, or whose sub-workflow task started it."""
    parent_task: str | None = None
    """A sub-workflow's execution: the parent's task that runs it (else None)."""

    @property
    def done(self) -> bool:
        return self.status in EXECUTION_TERMINAL


def _attempt(record: AttemptRecord) -> Attempt:
    return Attempt(
        record.number,
        record.status,
        record.started_at,
        record.finished_at,
        record.worker,
        record.error,
        entries_of(record.logs_text),
        record.code_version,
    )


def _history(task: TaskRecord, superseded: Sequence[AttemptRecord]) -> tuple[Attempt, ...]:
    """The attempts a later one superseded (stored), then the current one (the task row)."""
    attempts = [_attempt(record) for record in superseded]
    if task.attempt > 0 and task.status in (RUNNING, COMPLETED, FAILED):
        error = task.error if task.status == FAILED else None
        attempts.append(
            Attempt(
                task.attempt,
                task.status,
                task.started_at,
                task.completed_at,
                task.claimed_by,
                error,
                entries_of(task.logs_text),
                task.code_version,
            )
        )
    return tuple(attempts)


def summary_of(record: ExecutionRecord, context: Context | None = None) -> ExecutionResult:
    """An execution without per-task detail (``list``)."""
    return ExecutionResult(
        execution_id=UUID(record.id),
        workflow=record.workflow,
        status=record.status,
        context=context if context is not None else Context._from_data({}),
        error=record.error,
        version=record.version,
        created_at=record.created_at,
        completed_at=record.completed_at,
        key=record.key,
        parent_id=UUID(record.parent_id) if record.parent_id else None,
        parent_task=record.parent_task,
    )


def result_of(
    snapshot: Snapshot, shape: Shape | None, children: Sequence[ChildRecord] = ()
) -> ExecutionResult:
    """The full result; before the execution finished, its context is what the finished
    tasks produced so far (by the plan's final-context rule, when the shape is known)."""
    if snapshot.final is not None:
        context = codec.loads(snapshot.final)
    elif shape is not None:
        state = ExecutionState(
            shape,
            snapshot.execution.id,
            [task.state() for task in snapshot.tasks],
            snapshot.outputs,
            snapshot.initial,
        )
        context = plan.final_context(state)
    else:
        context = codec.loads(snapshot.initial or "{}")
    child_of = {child.task: UUID(child.id) for child in children}  # the latest wins
    # Decoded by the codec, the data is valid context data: no need to check it key by key.
    summary = summary_of(snapshot.execution, Context._from_data(context))
    tasks = {
        t.name: TaskResult(
            status=t.status,
            attempts=t.attempt,
            error=t.error or (t.last_error if t.status != COMPLETED else None),
            context=Context._from_text(snapshot.outputs[t.name])
            if t.name in snapshot.outputs
            else None,
            started_at=t.started_at,
            completed_at=t.completed_at,
            compensation=t.compensation,
            history=_history(t, snapshot.attempts.get(t.name, ())),
            wake_at=t.wake_at if t.status == WAITING else None,
            wait_event=t.wait_event if t.status == WAITING else None,
            parent=t.map_parent,
            index=t.map_index,
            child_id=child_of.get(t.name),
        )
        for t in snapshot.tasks
    }
    return replace(summary, tasks=tasks)
