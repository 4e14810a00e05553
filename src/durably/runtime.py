"""What the in-process runner and the workers share: the store, the repository, the executor,
the clock, the worker id, the lease, the heartbeat and the registry, and the transitions they
both apply.

The rules come from :mod:`durably.plan`; this module writes their decisions through the
repository inside the caller's transaction and keeps the in-memory state in step. Nothing here
knows the :class:`~durably.Engine`: ``engine → runner/worker → runtime → repository/plan``.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import codec, metrics, outcomes, plan, tracing
from .attempt_logs import AttemptLogs
from .children import Children
from .clock import Clock
from .context import Context, ExecutionScope
from .executor import Executor, TaskHandle
from .heartbeat import Heartbeat
from .logs import fields, log
from .ownership import new_worker_id, owner_is_dead
from .plan import Start
from .records import AttemptRef, ExecutionRecord, StaleClaim, TaskRecord
from .registry import Registry
from .repository import Repository
from .repository.contexts import PlannedCompletion
from .state import ExecutionState
from .statuses import (
    COMPLETED,
    FAILED,
    READY,
    RUNNING,
    WAITING,
)
from .store import Row, Statement, Store, Tx
from .transitions import WaitsAndMaps
from .workflow import Workflow

logger = logging.getLogger("durably.runtime")

DEFAULT_MAX_CONTEXT_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PlannedLoad:
    """A partial load's statements (``tasks`` of them read task rows, then outputs, then
    the initial context if ``initial``), and what :meth:`Runtime.loaded` needs besides."""

    wf: Workflow
    execution_id: str
    missing: list[str] | None  # the task rows read (None: all)
    known: Sequence[TaskRecord]
    waits: Mapping[str, Sequence[str]] | None
    statements: list[Statement]
    tasks: int
    outputs: bool
    initial: bool


@dataclass(frozen=True, slots=True)
class PlannedRecord:
    """A completed attempt's write, planned (Runtime.plan_record)."""

    name: str
    attempt: int
    value: str  # the output, as codec text
    completion: PlannedCompletion


class Runtime(WaitsAndMaps, Children):
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        lease: float,
        concurrency: int,
        max_recovery_attempts: int,
        max_context_bytes: int,
        registry: Registry,
        capture_logs: bool = False,
    ) -> None:
        self.store = store
        self.repo = Repository()
        self.clock = clock
        self.lease = lease
        self.max_recovery_attempts = max_recovery_attempts
        self.max_context_bytes = max_context_bytes
        self.registry = registry
        self.worker_id = new_worker_id()
        self.executor = Executor(concurrency)
        self.heartbeat = Heartbeat(store, self.repo, self.worker_id, clock, lease / 3)
        self.logs = AttemptLogs(capture=capture_logs)  # what running attempts logged
        # The clock's own method: read on every transition, so no wrapper in between.
        self.now: Callable[[], float] = clock.now

    def workflow(self, name: str, version: str, shape: str | None = None) -> Workflow:
        """The definition to run an execution of ``name`` started on ``version``: any of
        its shape version (the one registered last), see :mod:`durably.versions`."""
        return self.registry.get(name, version, shape)

    # -- claims ------------------------------------------------------------------------------

    def is_stale(self, claimed_by: str | None, heartbeat_at: float | None) -> bool:
        """Whether a claim can be taken over: nobody holds it, its process is gone (this
        host), or it has not beaten within the lease. Our own claims are never stale."""
        if not claimed_by:
            return True
        if claimed_by == self.worker_id:
            return False
        if owner_is_dead(claimed_by):
            return True
        return heartbeat_at is None or heartbeat_at < self.now() - self.lease

    def recover(self, tx: Tx, claim: StaleClaim, now: float) -> bool:
        """Return a lost claim's task to ``ready``, or abandon it past the recovery cap; True
        when it was abandoned (its dependents may now be decided)."""
        abandon = claim.recovery_attempts + 1 > self.max_recovery_attempts
        changed = self.repo.recover_task(tx, claim, abandon, now)
        if changed and metrics.active is not None:
            metrics.active.recovered("task_abandoned" if abandon else "claim_recovered")
        if changed:
            log(
                logger,
                logging.WARNING,
                "recovered the lost claim of %s on task %r attempt %d of execution %s%s",
                claim.claimed_by,
                claim.name,
                claim.attempt,
                claim.execution_id,
                ": abandoned" if abandon else "",
                action="task_abandoned" if abandon else "claim_recovered",
                execution_id=claim.execution_id,
                task=claim.name,
                attempt=claim.attempt,
            )
        return abandon and changed

    # -- loading -----------------------------------------------------------------------------

    def load(self, tx: Tx, execution: ExecutionRecord, wf: Workflow) -> ExecutionState:
        """The whole execution: every task, every output, the initial context."""
        state = self.load_partial(tx, execution.id, wf, None, None, context_id=execution.context_id)
        self.adopt_record(state, execution)
        return state

    def adopt_record(self, state: ExecutionState, execution: ExecutionRecord) -> None:
        """What the state takes from the execution's row: its trace, and a child's parent."""
        state.trace = execution.trace_context
        if execution.parent_task is not None:
            state.parent = execution.parent_id  # a child: its end reaches its parent's task

    def load_partial(
        self,
        tx: Tx,
        execution_id: str,
        wf: Workflow,
        names: Sequence[str] | None,
        outputs: Sequence[str] | None = (),
        *,
        context_id: str | None = None,
        known: Sequence[TaskRecord] = (),
        waits: Mapping[str, Sequence[str]] | None = None,
    ) -> ExecutionState:
        """The named tasks, the named outputs (None: all of either) and, given its id, the
        initial context. ``known``: task rows this transaction already read (a claim's).
        ``waits``: tasks whose listed dependencies are not read but counted: one still
        unfinished counts in the task's ``remaining`` like a loaded one. (One round trip:
        :meth:`plan_load`, then :meth:`loaded`.)"""
        planned = self.plan_load(
            execution_id, wf, names, outputs, context_id=context_id, known=known, waits=waits
        )
        return self.loaded(planned, tx.fetch_batch(planned.statements))

    def plan_load(
        self,
        execution_id: str,
        wf: Workflow,
        names: Sequence[str] | None,
        outputs: Sequence[str] | None = (),
        *,
        context_id: str | None = None,
        known: Sequence[TaskRecord] = (),
        waits: Mapping[str, Sequence[str]] | None = None,
    ) -> PlannedLoad:
        """:meth:`load_partial`'s reads, to send with other statements (a worker's batch)."""
        missing: list[str] | None = None
        tasks: list[Statement] = []
        if names is None:
            tasks = self.repo.task_reads(execution_id, None)
        else:
            have = {task.name for task in known}
            missing = [name for name in names if name not in have]
            tasks = self.repo.task_reads(execution_id, missing, waits) if missing else []
        found = self.repo.output_reads(execution_id, outputs)
        initial = [self.repo.initial_reads(context_id)] if context_id else []
        statements = [*tasks, *found, *initial]
        return PlannedLoad(
            wf, execution_id, missing, known, waits, statements, len(tasks), bool(found),
            bool(initial),
        )  # fmt: skip

    def loaded(self, planned: PlannedLoad, rows: Sequence[list[Row]]) -> ExecutionState:
        """The state a :meth:`plan_load` reads, from its statements' rows."""
        split = planned.tasks
        rest = rows[split:]
        found: list[TaskRecord] = []
        waiting: set[str] = set()
        if split:
            found, waiting = self.repo.tasks_read(planned.missing, planned.waits, rows[:split])
        outputs = {}
        if planned.outputs:
            rows_of = self.repo.outputs_read(planned.execution_id, rest[0])
            outputs = {name: row.text for name, row in rows_of}
        initial = None
        if planned.initial:
            initial = self.repo.initial_read(planned.execution_id, rest[-1])
        tasks = [*planned.known, *found]
        state = ExecutionState(
            planned.wf,
            planned.execution_id,
            [task.state() for task in tasks],
            outputs,
            initial,
            patches_of(tasks),
            received_of(tasks),
        )
        for name in waiting:
            state.remaining[name] += 1  # an unfinished dependency, not loaded
        return state

    # -- transitions -------------------------------------------------------------------------

    def record(
        self,
        tx: Tx,
        state: ExecutionState,
        name: str,
        attempt: int,
        output: dict[str, Any] | None,
        error: BaseException | None,
        now: float,
    ) -> list[str] | None:
        """Write an attempt's outcome; return the dependents it unblocked, or None when this
        process no longer held the claim (a zombie: nothing is written)."""
        task = state.tasks[name]
        definition = state.definition(name)
        outcome = plan.attempt_outcome(
            definition.retry, attempt, output, error, now, self.max_context_bytes
        )
        ref = self._attempt_ref(state, name, attempt)
        self._slot_freed(tx, state)
        if isinstance(outcome, plan.Completed):
            deps = definition.dependencies  # its output is stored as what it changed in them
            if not self.repo.complete_task(tx, ref, outcome.value, now, dependencies=deps):
                return None
            self._took_outcome(tx, state, name, now)
            return self._completed(state, name, attempt, outcome.value, now)
        retry_at = outcome.at if isinstance(outcome, plan.RetryAt) else None
        if not self.repo.fail_task(tx, ref, outcome.error, now, retry_at):
            return None
        self._took_outcome(tx, state, name, now)
        if metrics.active is not None:
            metrics.active.attempt_of(state, name, "failed" if retry_at is None else "retry", now)
        if retry_at is not None:
            task.status, task.retry_at, task.error, task.claimed_by = READY, retry_at, None, None
            self._log_outcome(logging.WARNING, "will retry", state, name, attempt, outcome.error)
            return []
        self._log_outcome(logging.WARNING, "failed", state, name, attempt, outcome.error)
        return state.mark(name, FAILED, outcome.error)

    def plan_record(
        self, state: ExecutionState, name: str, attempt: int, outcome: plan.Completed, now: float
    ) -> PlannedRecord:
        """:meth:`record`'s write of a completed attempt as one statement, to send with
        others (a worker's batch, where the store combines writes); :meth:`recorded` then
        applies its answer. Not for a sub-workflow's task (its child outcome is reset)."""
        ref = self._attempt_ref(state, name, attempt)
        deps = state.definition(name).dependencies
        completion = self.repo.plan_complete(ref, outcome.value, now, deps)
        return PlannedRecord(name, attempt, outcome.value, completion)

    def recorded(
        self, tx: Tx, state: ExecutionState, planned: PlannedRecord, rows: Sequence[Row],
        now: float,
    ) -> list[str] | None:  # fmt: skip
        """:meth:`record`'s answer for a :meth:`plan_record` statement's rows (``state``:
        the tasks around it, read before that statement ran)."""
        self._slot_freed(tx, state)
        if not self.repo.completion_read(planned.completion, rows):
            return None
        return self._completed(state, planned.name, planned.attempt, planned.value, now)

    def _attempt_ref(self, state: ExecutionState, name: str, attempt: int) -> AttemptRef:
        """The fence an attempt's outcome is written under, with the logs it captured."""
        task = state.tasks[name]
        ref = AttemptRef(state.id, task.id, name, attempt, self.worker_id, task.started_at)
        ref.logs = self.logs.take(task.id, attempt)
        return ref

    def _slot_freed(self, tx: Tx, state: ExecutionState) -> None:
        if self.repo.limits_of(state.shape) is not None:
            self.repo.notify_work(tx)  # a slot frees up: wake the workers a limit holds back

    def _completed(
        self, state: ExecutionState, name: str, attempt: int, value: str, now: float
    ) -> list[str]:
        """A completion written: the state, metrics and log follow; the dependents it
        unblocked."""
        state.outputs[name] = value
        if metrics.active is not None:
            metrics.active.attempt_of(state, name, "completed", now)
        if logger.isEnabledFor(logging.INFO):
            self._log_outcome(logging.INFO, "completed", state, name, attempt, None)
        return state.mark(name, COMPLETED)

    def _took_outcome(self, tx: Tx, state: ExecutionState, name: str, now: float) -> None:
        """A sub-workflow task's child outcome belongs to the attempt just recorded: a retry
        (or ``retry()``, or a fork) starts a new child."""
        if name in state.received and state.definition(name).child is not None:
            self.repo.set_received(tx, state.tasks[name].id, None, now)
            del state.received[name]

    def _log_outcome(
        self, level: int, what: str, state: ExecutionState, name: str, attempt: int,
        error: str | None,
    ) -> None:  # fmt: skip
        action = {"completed": "task_completed", "failed": "task_failed"}.get(what, "task_retry")
        log(
            logger,
            level,
            "task %r attempt %d of execution %s %s%s",
            name,
            attempt,
            state.id,
            what,
            f": {error}" if error else "",
            action=action,
            execution_id=state.id,
            workflow=getattr(state.shape, "name", None),
            task=name,
            attempt=attempt,
        )

    def dispatch(
        self, tx: Tx, state: ExecutionState, unblocked: Iterable[str], now: float
    ) -> list[Start]:
        """In-process: decide the unblocked tasks (and what settling them unblocks) and claim
        those that run; a task with a wait waits instead, unless its wait is over already."""
        started = []
        for decision in plan.advance(state, unblocked, now):
            if type(decision) is Start:  # the common case first: one check per task
                if self.claim(tx, state, decision.name, now):
                    started.append(decision)
                continue
            if isinstance(decision, plan.Settle):
                task = state.tasks[decision.name]
                self.repo.settle_task(tx, task.id, decision.status, decision.reason, now)
                continue
            if isinstance(decision, plan.WaitFor):
                if not self.wait(tx, state, decision, now, claimed=False):
                    continue
                decision = Start(decision.name, plan.input_for(state, decision.name))
            if isinstance(decision, plan.Expand):
                starts, unblocked = self.expand(tx, state, decision, now, in_process=True)
                started.extend(starts)
                started.extend(self.dispatch(tx, state, unblocked, now))
                continue
            if isinstance(decision, plan.Spawn):
                self.spawn(tx, state, decision, now, claimed=False)
                continue
            if isinstance(decision, Start) and self.claim(tx, state, decision.name, now):
                started.append(decision)
        return started

    def claim(self, tx: Tx, state: ExecutionState, name: str, now: float) -> bool:
        """Start the task's next attempt here (in-process runs claim what they unblock)."""
        task = state.tasks[name]
        wf = state.shape
        assert isinstance(wf, Workflow), "an execution runs under its registered workflow"
        limits = self.repo.limits_of(wf)
        if limits is None:
            started = self.repo.start_task(tx, task.id, self.worker_id, now, wf.version)
        else:  # flow control: it may have to wait for a slot or a token (flow.py)
            started = self.repo.start_limited_task(
                tx, task.id, self.worker_id, now, wf.version, limits
            )
        if not started:
            return False  # settled elsewhere meanwhile, or held back by a limit
        if task.status == WAITING and task.wait_event is None:
            task.waited = True  # as start_task records: its timer is over
        task.status, task.attempt, task.retry_at = RUNNING, task.attempt + 1, None
        task.claimed_by, task.started_at = self.worker_id, now
        return True

    def settle(self, tx: Tx, state: ExecutionState, decision: plan.Settle, now: float) -> list[str]:
        """Finish a task without running it; return the dependents that unblocks."""
        self.repo.settle_task(
            tx, state.tasks[decision.name].id, decision.status, decision.reason, now
        )
        return state.mark(decision.name, decision.status, decision.reason)

    def make_ready(self, tx: Tx, state: ExecutionState, names: Iterable[str], now: float) -> bool:
        """Worker path: leave unblocked tasks for whichever worker claims them first."""
        unblocked = [state.tasks[name] for name in names]
        marked = [task for task in unblocked if task.status == "not_started"]
        if marked:
            self.repo.mark_ready(tx, [task.id for task in marked], now)
        for task in marked:
            task.status = READY
        return bool(marked)

    def finish(
        self, tx: Tx, state: ExecutionState, now: float | None = None, *, written: bool = False
    ) -> str:
        """Write the final context and status once every task is terminal (``written``: the
        statement that completed a lone task wrote them), report them; return the status."""
        status, error = outcomes.execution_outcome(state)
        final = codec.dumps(plan.final_context(state))
        now = now or self.now()
        if not written:
            sources = plan.final_sources(state)
            self.repo.finish_execution(tx, state.id, status, final, error, now, sources=sources)
        self.report(tx, state, status, final, error, now)
        if getattr(state.shape, "concurrency", None) is not None:
            self.repo.notify_work(tx)  # its slot frees up: a queued execution may start
        log(
            logger,
            logging.INFO if status == COMPLETED else logging.WARNING,
            "execution %s %s",
            state.id,
            status,
            action=f"execution_{status}",
            execution_id=state.id,
            workflow=getattr(state.shape, "name", None),
        )
        return status

    def compensate(self, state: ExecutionState, *, undo: bool = False) -> None:
        """Run the pending compensations (of a failed execution, or with ``undo`` of a
        completed child whose parent failed), each recorded in its own transaction so a crash
        during rollback resumes it. A sub-workflow task's undoes its child."""
        for name in outcomes.compensation_order(state, undo=undo):
            task = state.tasks[name]
            definition = state.definition(name)
            status, error = COMPLETED, None
            try:
                if definition.child is not None:
                    self.compensate_child(state, name)
                else:
                    ctx = Context._from_data(
                        codec.loads(state.outputs[name]),
                        ExecutionScope(state.uuid, uuid.UUID(task.id), name),
                    )
                    self.call(definition.compensate, ctx)
            except Exception as exc:
                status, error = FAILED, plan.describe(exc)
                log(
                    logger,
                    logging.WARNING,
                    "compensation of task %r of execution %s failed: %s",
                    name,
                    state.id,
                    error,
                    action="compensation_failed",
                    execution_id=state.id,
                    task=name,
                )
            with self.store.transaction() as tx:
                self.repo.set_compensation(tx, task.id, status, error, self.now())
            task.compensation = status

    def call(self, fn: Callable[..., Any], ctx: Context) -> None:
        if inspect.iscoroutinefunction(fn):
            import asyncio  # only async compensations need it (an engine that reads does not)

            asyncio.run_coroutine_threadsafe(fn(ctx), self.executor.loop).result()
        else:
            fn(ctx)

    # -- running a task ------------------------------------------------------------------------

    def handle(self, state: ExecutionState, name: str, attempt: int) -> TaskHandle:
        """The handle an attempt about to run gets (its logs begin empty)."""
        task = state.tasks[name]
        task_id = task.id
        self.logs.begin(task_id, attempt)
        handle = TaskHandle(
            state.uuid,
            name,
            attempt,
            lambda: self.heartbeat.beat_task(task_id),
            log=lambda: self.logs.open(task_id, log_fields(state, name, attempt)),
            capture=self.logs.capture,
            trace=(getattr(state.shape, "name", ""), state.trace) if tracing.tracer() else None,
        )
        if task.parent is not None:  # an instance of a mapped task
            handle.item, handle.index = plan.item_of(state, name), task.index
        elif name in state.received:  # a sub-workflow task's child outcome, among others
            handle.child = plan.child_outcome(state, name)
        return handle

    def context(self, state: ExecutionState, name: str, data: dict[str, Any]) -> Context:
        scope = ExecutionScope(state.uuid, state.tasks[name].id, name)
        return Context._from_data(data, scope)

    def close(self) -> None:
        self.heartbeat.stop()
        self.executor.close()


def log_fields(state: ExecutionState, name: str, attempt: int) -> dict[str, Any]:
    workflow = getattr(state.shape, "name", None)
    return fields("task_log", state.id, workflow, name, attempt)


def patch_of(configuration: dict[str, Any]) -> dict[str, Any] | None:
    """A fork's context patch for a task, kept (as codec text) in its configuration."""
    patch = configuration.get("context_patch")
    if not patch:
        return None
    # Stored as the codec's text (older rows: as a JSON object).
    return codec.loads(patch if isinstance(patch, str) else json.dumps(patch))


def received_of(tasks: Iterable[TaskRecord]) -> dict[str, dict[str, Any]]:
    """The event payloads each task received, for its input."""
    return {t.name: codec.loads(t.received_text) for t in tasks if t.received_text}


def patches_of(tasks: Iterable[TaskRecord]) -> dict[str, dict[str, Any]]:
    return {t.name: p for t in tasks if t.patched and (p := patch_of(t.configuration)) is not None}
