"""Workers: claim ready tasks of queued executions and run them (``durably worker``).

A worker's turn is one transaction: the outcomes of every attempt that finished since the
last (outputs, statuses, the dependents they made ready) and the claim of the slots they
freed (which also loads what each task needs: its dependencies' statuses and outputs, or the
initial context). So a worker with N slots commits about once per N tasks. On PostgreSQL the
turn's round trips do not grow with N either: the completions with the reads around them,
the claim (which reads the claimed executions too), and what their inputs are made of, each
sent as one batch.
A sweeper returns stale claims of *other* processes to ``ready``, takes over executions whose
in-process driver died, and finishes executions whose last task was completed by a worker
that then died. The rules are :mod:`durably.plan`'s, applied through
the shared :class:`~durably.runtime.Runtime`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from datetime import timedelta
from typing import Any

from . import metrics, plan
from .deployments import Deployments
from .exceptions import StoreConnectionError, StoreError, TaskInterrupted, WaitTimeout
from .logs import log
from .retention import Pruner
from .runtime import Runtime
from .scheduler import Scheduler
from .state import ExecutionState
from .store import Row, Statement, Tx
from .sweeper import Sweeping
from .worker_batches import load_all, locks, plan_records, save_planned
from .worker_steps import Finished, Job, after, around, is_root, mark_ready, plan_claimed, prepare
from .workflow import Workflow

logger = logging.getLogger("durably.worker")

# How long a turn waits for the tasks it just started before recording those already done
# (seconds): far below a commit's time, long enough for a trivial task to run on its thread.
LINGER = 0.001


class Worker(Sweeping):
    """Claims and runs tasks until ``stop()``; ``run()`` blocks.

    ``Worker(engine)`` (or ``engine.worker()``) serves the workflows registered with that
    engine; ``concurrency`` defaults to the engine's."""

    def __init__(
        self,
        engine: Runtime | Any,
        *,
        concurrency: int | None = None,
        poll_interval: float = 0.5,
        retain: timedelta | None = None,
    ) -> None:
        # An Engine carries its runtime; the worker needs only that (no arrow back to it).
        runtime = engine if isinstance(engine, Runtime) else getattr(engine, "runtime", None)
        if not isinstance(runtime, Runtime):
            raise TypeError(f"Worker needs an Engine, not {type(engine).__name__}")
        concurrency = runtime.executor.concurrency if concurrency is None else concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("concurrency must be an int >= 1")
        if not isinstance(poll_interval, int | float) or not 0 < poll_interval <= 60:
            raise ValueError("poll_interval must be a number of seconds in (0, 60]")
        self.rt = runtime
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.completed = 0
        self._stopping = threading.Event()
        self._last_sweep = 0.0
        # Outcomes whose transaction failed: retried until the database is back (each write
        # is conditional on the claim, so a retry never applies twice).
        self._unsaved: list[Finished] = []
        self._active: set[str] = set()
        # Between tasks: fire due schedules and, with ``retain``, prune old executions.
        self._deployments = Deployments(runtime)  # advertise what it serves, log stranded
        self._upkeep: list[Scheduler | Pruner | Deployments] = [
            Scheduler(runtime),
            self._deployments,
        ]
        if retain is not None:
            self._upkeep.append(Pruner(runtime, retain))

    def stop(self) -> None:
        """Finish the running tasks, claim nothing more, and make ``run()`` return."""
        self._stopping.set()

    def run(self) -> None:
        running: dict[concurrent.futures.Future[dict[str, Any]], Job] = {}
        failures = 0
        log(logger, logging.INFO, "worker %s started", self.rt.worker_id, action="worker_started")
        # After stop(): finish the running tasks and try a few times to save their outcomes;
        # one still unsaved then is redone elsewhere once its claim's lease expires.
        while not self._stopping.is_set() or running or (self._unsaved and failures < 3):
            try:
                self._step(running)
                failures = 0
            except StoreError as exc:
                # The database went away (restart, failover, a killed connection): back off
                # and go on; outcomes not yet saved are kept and saved when it is back.
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log(
                    logger,
                    logging.WARNING,
                    "database error, retrying in %.1fs: %s",
                    delay,
                    exc,
                    action="worker_db_error",
                )
                time.sleep(delay)
        self._deployments.retire()
        log(logger, logging.INFO, "worker %s stopped", self.rt.worker_id, action="worker_stopped")

    def _step(self, running: dict[concurrent.futures.Future[dict[str, Any]], Job]) -> None:
        """One turn: sweep when due, record what finished and claim up to the free slots
        (one transaction), then wait for a task to finish, or for work."""
        if time.monotonic() - self._last_sweep > self.rt.lease / 2:
            self.sweep()
        if not self._stopping.is_set():
            for chore in self._upkeep:
                chore.tick()
        free = 0 if self._stopping.is_set() else self.concurrency - len(running)
        jobs = self._turn(free)
        claimed = bool(jobs)
        started: list[concurrent.futures.Future[dict[str, Any]]] = []
        for job in jobs:
            if job.timed_out is not None:
                timeout = WaitTimeout(
                    f"no event {job.timed_out!r} arrived before the wait's timeout"
                )
                self._unsaved.append(Finished(job, None, timeout))
                continue
            ctx = self.rt.context(job.state, job.name, job.input)
            handle = self.rt.handle(job.state, job.name, job.attempt)
            declared = job.state.tasks[job.name].parent or job.name
            future = self.rt.executor.submit(job.wf.tasks[declared], ctx, handle)
            running[future] = job
            started.append(future)
        if running:
            done, _ = concurrent.futures.wait(
                running, timeout=self._slot_wait(), return_when=concurrent.futures.FIRST_COMPLETED
            )
            if done and (young := [f for f in started if f not in done]):
                # Tasks that finished while the last turn was in the database are back at
                # once, before the ones just started: recorded apart, the two groups would
                # keep alternating, each turn half the slots. The young get a moment to join.
                done |= concurrent.futures.wait(young, timeout=LINGER)[0]
            for future in done:
                job = running.pop(future)
                exc = future.exception()
                if exc is not None and not isinstance(exc, Exception):
                    exc = TaskInterrupted(f"the task raised {plan.describe(exc)}")
                self._unsaved.append(Finished(job, None if exc else future.result(), exc))
            # Recorded at once by the next turn, with the claim of the slots they free.
        elif not claimed:
            self.rt.store.wait_for_work(self._idle_wait())

    def _slot_wait(self) -> float:
        """While tasks run: until one finishes, the poll interval ends, or the next token of
        a rate limit that held the last claim back is due."""
        token = self.rt.repo.next_token_at
        if token is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.0, token - self.rt.now()))

    def _idle_wait(self) -> float:
        """Until new work is signalled, or the next timer or event timeout is due, or the poll
        interval ends, whichever comes first (a wake time already past is not ours to claim:
        another driver holds that execution)."""
        with self.rt.store.read() as tx:
            wake = self.rt.repo.next_wake(tx)
        delay = None if wake is None else wake - self.rt.now()
        if delay is not None and delay <= 0:
            delay = None
        token = self.rt.repo.next_token_at  # a rate limit held the last claim back
        if token is not None:  # due already: look again at once (it was short at the claim)
            until = max(0.0, token - self.rt.now())
            delay = until if delay is None else min(delay, until)
        return self.poll_interval if delay is None else min(self.poll_interval, delay)

    # -- claiming ------------------------------------------------------------------------------

    def claim(self, limit: int) -> list[Job]:
        """Claim up to ``limit`` ready tasks in one transaction, loading just what each needs.
        A claimed task that its trigger does not run is settled in the same transaction, and
        the claim goes on."""
        jobs: list[Job] = []
        while not jobs:
            began = time.perf_counter()
            with self.rt.store.transaction(keyed=True) as tx:
                jobs, done, any_claimed = self._claim_in(tx, limit)
            if not any_claimed:
                return []
            self._claimed(jobs, done, began)
        return jobs

    def _turn(self, limit: int) -> list[Job]:
        """Record every finished attempt and claim up to ``limit`` in ONE transaction (one
        commit a turn, not two); apart when there is only one of them to do, when the
        records lock an execution (its other completions, on other workers, wait for the
        lock: it is not held through the claim's round trips), or when that transaction
        fails (an outcome the database refuses is then found, as before)."""
        if not self._unsaved or limit <= 0 or any(locks(item.job) for item in self._unsaved):
            self._save_outcomes()
            return self.claim(limit) if limit > 0 else []
        batch = sorted(self._unsaved, key=lambda item: item.job.state.id)
        began = time.perf_counter()
        try:
            with self.rt.store.transaction(keyed=True) as tx:
                # Sent with the records where it needs nothing they return (PostgreSQL).
                now = self.rt.now()
                claim = None
                if tx.combined:
                    claimable = self.rt.registry.claimable()
                    claim = self.rt.repo.plain_claim(self.rt.worker_id, claimable, limit, now)
                saved, finished, claimed = self._save_in(tx, batch, claim)
                jobs, done, any_claimed = self._claim_in(tx, limit, claimed, now)
        except StoreConnectionError:
            raise
        except StoreError:
            self._save_outcomes()
            return self.claim(limit)
        self._unsaved.clear()
        self._saved(batch, saved, finished)
        if any_claimed:
            self._claimed(jobs, done, began)
        # Claims all settled without running (their triggers): claim on, as claim() does.
        return jobs if jobs or not any_claimed else self.claim(limit)

    def _claim_in(
        self, tx: Tx, limit: int, claimed: list[Row] | None = None, now: float | None = None
    ) -> tuple[list[Job], list[tuple[Workflow, ExecutionState]], bool]:
        """The claim's statements: the jobs to run, the executions it finished, and whether
        it claimed anything. ``claimed``: the rows of a claim already sent (at ``now``)."""
        jobs: list[Job] = []
        done: list[tuple[Workflow, ExecutionState]] = []
        now = self.rt.now() if now is None else now
        claimable = self.rt.registry.claimable()
        if claimed is not None:
            claims = self.rt.repo.claims_from(claimed)
        else:
            claims = self.rt.repo.claim_tasks(tx, self.rt.worker_id, claimable, limit, now)
        if not claims:
            return jobs, done, False
        # Every claimed task's execution row (a root task's with the initial context it runs
        # on): read by the claim itself on PostgreSQL, else in one more round trip.
        wanted = [(c.execution_id, is_root(claimable, c)) for c in claims]
        executions = self.rt.repo.executions(tx, wanted, [c.execution for c in claims])
        # Then what each task's input is made of, for all of them in one round trip.
        planned = [
            plan_claimed(self.rt, claim, execution, initial)
            for claim, (execution, initial) in zip(claims, executions, strict=True)
        ]
        states = load_all(self.rt, tx, planned)
        for claim, (execution, initial), state in zip(claims, executions, states, strict=True):
            job, finished = prepare(self.rt, tx, claim, execution, state, now, initial)
            if job is not None:
                jobs.append(job)
            elif finished is not None:
                done.append(finished)
        return jobs, done, True

    def _claimed(
        self, jobs: list[Job], done: list[tuple[Workflow, ExecutionState]], began: float
    ) -> None:
        """Once the claim is committed: hold its leases, say so, finish what it finished."""
        if metrics.active is not None:
            metrics.active.claim(len(jobs), time.perf_counter() - began)
        for job in jobs:
            self._active.add(job.task_id)
            self.rt.heartbeat.hold(task=job.task_id)
            log(
                logger,
                logging.INFO,
                "claimed task %r attempt %d of execution %s",
                job.name,
                job.attempt,
                job.state.id,
                action="task_claimed",
                execution_id=job.state.id,
                workflow=job.wf.name,
                task=job.name,
                attempt=job.attempt,
            )
        for wf, state in done:
            self._finish_if_done(wf, state)

    def _finish_if_done(self, wf: Workflow, state: ExecutionState) -> None:
        # Compensations run once: only the worker that claims the execution runs them.
        with self.rt.store.transaction() as tx:
            claimed = self.rt.repo.claim_execution(
                tx, state.id, self.rt.worker_id, None, self.rt.now()
            )
        if not claimed:
            return
        self.rt.compensate(state)
        with self.rt.store.transaction() as tx:
            self.rt.finish(tx, state)

    # -- saving outcomes -----------------------------------------------------------------------

    def record(
        self, job: Job, output: dict[str, Any] | None, error: BaseException | None = None
    ) -> None:
        """Save one finished attempt now (``run`` does this for every task it claims;
        ``claim`` and ``record`` drive a worker one step at a time, e.g. in tests)."""
        self._unsaved.append(Finished(job, output, error))
        self._save_outcomes()

    def _save_outcomes(self) -> None:
        """Record every finished attempt in ONE transaction (a commit is the expensive part on
        PostgreSQL). If the database is unreachable they all stay for the next turn; if it
        refuses one outcome (its output), that task fails instead."""
        if not self._unsaved:
            return
        # Executions locked in id order: two workers' batches can never deadlock.
        batch = sorted(self._unsaved, key=lambda item: item.job.state.id)
        try:
            saved, finished = self._save(batch)
        except StoreConnectionError:
            raise
        except StoreError:
            saved, finished = [], []
            for item in batch:
                try:
                    one, done = self._save([item])
                except StoreConnectionError:
                    raise
                except StoreError as exc:
                    refused = StoreError(f"the database refused the output: {exc}")
                    one, done = self._save([Finished(item.job, None, refused)])
                saved += one
                finished += done
        self._unsaved.clear()
        self._saved(batch, saved, finished)

    def _saved(
        self,
        batch: list[Finished],
        saved: list[bool],
        finished: list[tuple[Workflow, ExecutionState]],
    ) -> None:
        """Once the outcomes are committed: drop their leases, count them, say which were
        discarded, finish what they finished."""
        for item, ok in zip(batch, saved, strict=True):
            self._active.discard(item.job.task_id)
            self.rt.heartbeat.drop(task=item.job.task_id)
            if ok:
                self.completed += 1
            else:
                log(
                    logger,
                    logging.WARNING,
                    "lost the claim on task %r attempt %d of execution %s: output discarded",
                    item.job.name,
                    item.job.attempt,
                    item.job.state.id,
                    action="zombie_discarded",
                    execution_id=item.job.state.id,
                    task=item.job.name,
                    attempt=item.job.attempt,
                )
        for wf, state in finished:
            self._finish_if_done(wf, state)

    def _save(
        self, batch: list[Finished]
    ) -> tuple[list[bool], list[tuple[Workflow, ExecutionState]]]:
        with self.rt.store.transaction(keyed=True) as tx:
            saved, finished, _ = self._save_in(tx, batch)
            return saved, finished

    def _save_in(
        self, tx: Tx, batch: list[Finished], claim: Statement | None = None
    ) -> tuple[list[bool], list[tuple[Workflow, ExecutionState]], list[Row] | None]:
        """The outcomes' statements: whether each was recorded (its claim still held), the
        executions they finished that have compensations to run first, and the rows of
        ``claim`` where it could travel with them (None: it was not sent)."""
        now = self.rt.now()
        planned = plan_records(self.rt, batch, now) if tx.combined else None
        if planned is not None:
            return save_planned(self.rt, tx, batch, planned, now, claim)
        saved: list[bool] = []
        finished: list[tuple[Workflow, ExecutionState]] = []
        locked: set[str] = set()
        for item in batch:
            job = item.job
            parent = job.state.tasks[job.name].parent
            if job.state.id not in locked and locks(job):
                # The task's own row is not read again: the writes are fenced on it.
                self.rt.repo.lock_execution(tx, job.state.id)
                locked.add(job.state.id)
            known = [job.record] if job.record is not None else []
            fresh = around(self.rt, tx, job.wf, job.state.id, job.name, parent, known)
            now = self.rt.now()
            unblocked = self.rt.record(
                tx, fresh, job.name, job.attempt, item.output, item.error, now
            )
            saved.append(unblocked is not None)
            if unblocked is None:
                continue
            if parent is not None:
                _, unblocked = self.rt.close_instance(tx, fresh, job.name, now, in_process=False)
                self.rt.repo.notify_work(tx)  # a freed slot, or what its end unblocked
            mark_ready(self.rt, tx, fresh, unblocked, now)
            if (done := after(self.rt, tx, job.wf, fresh, job.execution)) is not None:
                finished.append(done)
        return saved, finished, None
