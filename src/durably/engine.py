"""The Engine: the public entry point that runs, queues, inspects and repairs executions.

A thin facade. It opens the store and builds the :class:`~durably.runtime.Runtime` that the
in-process :class:`~durably.runner.Runner` and the :class:`~durably.worker.Worker` share;
the rules are :mod:`durably.plan`'s and the queries :mod:`durably.repository`'s.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from . import attempt_logs, codec, starts, tracing
from .arguments import as_id, check_int, check_key, check_lease, encode_initial
from .backends import open_store
from .clock import SYSTEM, Clock
from .context import Context
from .driving import InProcessRuns
from .exceptions import (
    ExecutionStateError,
    StoreConflictError,
)
from .flow import check_priority
from .inspection import Inspection
from .registry import Registry
from .results import ExecutionResult
from .runtime import DEFAULT_MAX_CONTEXT_BYTES, Runtime
from .state import ExecutionState
from .statuses import EXECUTION_TERMINAL
from .store import Store
from .workflow import Workflow

if TYPE_CHECKING:
    from .runner import Job, Runner
    from .scheduler import ScheduleStatus
    from .worker import Worker

# What runs executions (the runner, the worker, the repairs, the mailbox, retention and the
# schedules) is imported by the methods that use it: an engine that only reads executions, as
# `durably list` and `show` do, loads none of it (about 20 ms of a start without bytecode).


class Engine(Inspection):
    """Runs workflows against one database (SQLite by default, or PostgreSQL)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        workflows: Iterable[Workflow] = (),
        lease: float = 30.0,
        concurrency: int | None = None,
        max_recovery_attempts: int = 3,
        max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
        synchronous: str | None = None,
        schema: str | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        capture_logs: bool = False,
    ) -> None:
        lease = check_lease(lease)
        check_int("concurrency", concurrency, minimum=1, optional=True)
        check_int("max_recovery_attempts", max_recovery_attempts, minimum=0)
        check_int("max_context_bytes", max_context_bytes, minimum=1)
        self.store = store or open_store(url, synchronous=synchronous, schema=schema)
        self.registry = Registry()
        self.runtime = Runtime(
            self.store,
            clock=clock or SYSTEM,
            lease=lease,
            concurrency=concurrency or min(32, (os.cpu_count() or 1) + 4),
            max_recovery_attempts=max_recovery_attempts,
            max_context_bytes=max_context_bytes,
            registry=self.registry,
            capture_logs=attempt_logs.capturing(capture_logs),
        )
        self.lease = lease
        self.worker_id = self.runtime.worker_id
        self._runs = InProcessRuns(self.runtime)
        self.runtime.drive_child = lambda child_id: self._runs.drive_child(child_id, self.resume)
        for wf in workflows:
            self.register(wf)

    @property
    def max_context_bytes(self) -> int:
        return self.runtime.max_context_bytes

    def register(self, wf: Workflow) -> Workflow:
        """Make ``wf`` resumable by this engine (``run`` and ``start`` register too)."""
        return self.registry.add(wf)

    def _definition(self, wf: Workflow | str) -> Workflow:
        if isinstance(wf, str):
            return self.registry.by_name(wf)
        return self.register(wf)

    # -- starting ------------------------------------------------------------------------------

    def run(
        self,
        wf: Workflow | str,
        context: Context | Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> ExecutionResult:
        """Run ``wf`` in this process until it is terminal (compensations included). With a
        ``key`` already used for this workflow, return (or wait for) that execution."""
        import asyncio  # here, not at the top: reading executions (durably list) needs no asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._run(wf, context, key)
        raise ExecutionStateError(
            "engine.run() blocks until the execution is terminal and was called inside a "
            "running event loop: use `await engine.run_async(...)` there"
        )

    async def run_async(
        self,
        wf: Workflow | str,
        context: Context | Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> ExecutionResult:
        """``run`` without blocking the event loop (the engine's threads do the work)."""
        import asyncio

        return await asyncio.to_thread(self._run, wf, context, key)

    def _run(
        self, wf: Workflow | str, context: Context | Mapping[str, Any] | None, key: str | None
    ) -> ExecutionResult:
        definition = self._definition(wf)
        found = tracing.tracer()
        if found is not None:  # the execution's span: its attempts' spans are its children
            name = f"durably.execution {definition.name}"
            with tracing.span(found, name, tracing.attributes(workflow=definition.name)):
                return self._run_here(definition, context, key)
        return self._run_here(definition, context, key)

    def _run_here(
        self, definition: Workflow, context: Context | Mapping[str, Any] | None, key: str | None
    ) -> ExecutionResult:
        from .runner import Runner

        initial = encode_initial(context, self.max_context_bytes)
        try:
            with self.store.transaction() as tx:
                existing, states = starts.insert(
                    self.runtime, tx, definition, initial, key, claimed=True
                )
                if existing is None:
                    state = ExecutionState(definition, states[0], states[1], {}, initial)
                    state.trace = tracing.carrier()
                    runner = Runner(self.runtime, definition, state)
                    first = runner.start(tx)
        except starts.KeyTaken:
            existing = starts.by_key(self.runtime, definition, key)
        if existing is not None:
            return self._join(existing)
        return self._drive(runner, first)

    def start(
        self,
        wf: Workflow | str,
        context: Context | Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        priority: int = 0,
    ) -> UUID:
        """Queue an execution for workers (``durably worker``); return its id. With a ``key``
        already used for this workflow, create nothing and return that execution's id.
        Workers claim the tasks of higher ``priority`` executions first, oldest first within
        one priority."""
        priority = check_priority(priority)
        definition = self._definition(wf)
        initial = encode_initial(context, self.max_context_bytes)
        found = tracing.tracer()
        with (
            tracing.span(
                found, f"durably.execution {definition.name}",
                tracing.attributes(workflow=definition.name), kind="PRODUCER",
            )
            if found is not None
            else contextlib.nullcontext()
        ):  # fmt: skip
            return self._start(definition, initial, key, priority)

    def _start(self, definition: Workflow, initial: str, key: str | None, priority: int) -> UUID:
        try:
            with self.store.transaction() as tx:
                existing, created = starts.insert(
                    self.runtime, tx, definition, initial, key, claimed=False,
                    priority=priority, notify=True,
                )  # fmt: skip
        except starts.KeyTaken:
            existing = starts.by_key(self.runtime, definition, key)
        return UUID(existing or created[0])

    def _join(self, execution_id: str) -> ExecutionResult:
        """A second ``run`` with the same key: the existing execution, run here to its end
        if nobody else drives it."""
        try:
            return self.resume(execution_id)
        except ExecutionStateError:
            return self.wait(execution_id)

    def _drive(self, runner: Runner, first: list[Job]) -> ExecutionResult:
        self._runs.drive(runner, first)
        return self.get(runner.id)

    # -- recovery ------------------------------------------------------------------------------

    def resume(self, execution_id: UUID | str) -> ExecutionResult:
        """Continue an unfinished execution here, taking over claims whose process is gone or
        whose lease expired; a finished execution just returns its result."""
        from . import repair
        from .runner import Runner

        key = as_id(execution_id)
        if self._runs.running(key):
            raise ExecutionStateError(f"execution {key} is already running in this engine")
        runner: Runner | None = None
        with self.store.transaction() as tx:
            record = self._record(tx, key)
            if record.status not in EXECUTION_TERMINAL:
                wf = self.runtime.workflow(record.workflow, record.version, record.shape)
                repair.take_over(self.runtime, tx, record)
                runner = Runner(self.runtime, wf, self.runtime.load(tx, record, wf))
                first = runner.start(tx)
        if runner is None:  # read after the transaction: SQLite cannot nest one in it
            return self.get(key)
        return self._drive(runner, first)

    # -- operations ----------------------------------------------------------------------------

    def cancel(self, execution_id: UUID | str) -> ExecutionResult:
        """Stop an execution: tasks not yet started are skipped, running ones finish."""
        key = as_id(execution_id)
        for attempt in range(1, 4):
            try:
                cancelled = self._cancel(key)
                break
            except StoreConflictError:
                # A worker claiming one of its tasks locks the task row before the
                # execution's, the reverse of this order: PostgreSQL broke the cycle, and
                # nothing of this transaction was written. Doing it again is safe.
                if attempt == 3:
                    raise
                time.sleep(0.01 * attempt)
        self._runs.cancel(cancelled)
        return self.get(key)

    def _cancel(self, key: str) -> list[str]:
        """Cancel the execution and its children in one transaction; return their ids."""
        cancelled = [key]
        with self.store.transaction() as tx:
            record = self._record(tx, key)
            if record.status not in EXECUTION_TERMINAL:
                now = self.runtime.now()
                cancelled += self.runtime.cancel_children(tx, key, now)
                self.runtime.repo.cancel_execution(tx, key, now)
                parent = record.parent_id if record.parent_task is not None else None
                self.runtime.report_cancel(tx, key, parent, now)
                # Its slots under flow limits free up: wake the workers a limit holds back.
                self.runtime.repo.notify_work(tx)
        return cancelled

    def retry(self, execution_id: UUID | str) -> ExecutionResult:
        """Run the failed, skipped, upstream_failed and abandoned tasks of a failed or
        cancelled execution again, keeping completed ones, and return when it is terminal.
        A completed task whose compensation ran was undone, so it runs again too, with every
        task after it."""
        from . import repair

        key = as_id(execution_id)
        with self.store.transaction() as tx:
            # Locked before it is read, as fork() does: a retry deletes the rows of the
            # outputs it discards unless another execution links them, and a fork linking
            # them at the same moment must commit first or wait.
            self.runtime.repo.lock_execution(tx, key)
            repair.reopen(self.runtime, tx, self._record(tx, key))
        return self.resume(key)

    def fork(
        self,
        execution_id: UUID | str,
        from_task: str,
        context_patch: Mapping[str, Any] | None = None,
        *,
        on_start: Callable[[UUID], object] | None = None,
    ) -> ExecutionResult:
        """A new execution that reuses the outputs of the tasks before ``from_task`` (none
        that was compensated), runs ``from_task`` (its input updated with ``context_patch``)
        and what follows it, and returns when it is terminal. ``on_start``, if given, is
        called with the new execution's id once it is committed, before its first task
        runs: a caller that runs the fork on another thread learns which execution to
        follow (the dashboard does)."""
        from . import repair

        key = as_id(execution_id)
        if context_patch is not None and not isinstance(context_patch, Mapping):
            raise TypeError("context_patch must be a dict")
        if on_start is not None and not callable(on_start):
            raise TypeError(f"on_start must be callable, not {type(on_start).__name__}")
        # Kept as codec text: a jsonb column would reorder the patch's keys.
        patch = (
            codec.dumps(dict(context_patch), max_bytes=self.max_context_bytes)
            if (context_patch)
            else None
        )
        with self.store.transaction() as tx:
            # The source locked (see retry()); a prune skips a locked execution.
            self.runtime.repo.lock_execution(tx, key)
            runner = repair.fork(self.runtime, tx, self._record(tx, key), from_task, patch)
            first = runner.start(tx)
        if on_start is not None:
            try:
                on_start(UUID(runner.id))
            except BaseException:
                # Given back as a run that stops early gives it back: resume() or a worker
                # takes it over (its first task once that claim's lease runs out).
                self._runs.release(runner.id)
                raise
        return self._drive(runner, first)

    def send(
        self, execution_id: UUID | str, name: str, payload: Any = None, *, key: str | None = None
    ) -> bool:
        """Send an event to an execution (SPEC §3.4): a task waiting for it runs with the
        payload in its input; one sent earlier waits in the mailbox. A repeated ``key`` is
        ignored: returns False then, True when the event was stored."""
        from . import mailbox

        key_id = as_id(execution_id)
        stored = mailbox.send(self.runtime, key_id, name, payload, key=check_key(key))
        self._runs.poke(key_id)
        return stored

    def worker(self, concurrency: int | None = None, **options: Any) -> Worker:
        """A worker that claims and runs queued tasks of this engine's workflows."""
        from .worker import Worker

        return Worker(self.runtime, concurrency=concurrency, **options)

    # -- retention and schedules ---------------------------------------------------------------

    def prune(
        self, older_than: timedelta, status: str | None = None, *, dry_run: bool = False
    ) -> int:
        """Delete the executions (workflow and saga) that finished more than ``older_than``
        ago, of one finished ``status`` or all of them, with everything they own; return how
        many (``dry_run``: how many would be). Running ones are never touched."""
        from . import retention

        return retention.prune(
            self.store, self.runtime.repo, self.runtime.now(), older_than, status, dry_run=dry_run
        )

    def fire_schedules(self) -> builtins.list[UUID]:
        """Start the executions of every due slot of the registered workflows' schedules, as a
        worker's turn does (once per slot across every engine and worker); return their ids."""
        from .scheduler import fire_all

        return [UUID(found) for found in fire_all(self.runtime)]

    def schedules(self) -> builtins.list[ScheduleStatus]:
        """Each schedule's next slot, last run and missed count (what ``durably schedules``
        shows): those in the database and those of the registered workflows."""
        from .scheduler import statuses

        return statuses(self.runtime)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background threads, release claims and close the database."""
        self._runs.cancel_all()
        self.runtime.close()
        self.store.close()
        if self.runtime.logs.capture:
            self.runtime.logs.capture = False
            attempt_logs.stop_capture()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
