"""Driving one execution in this process (``engine.run``, ``resume``, ``retry``, ``fork``).

Database work per task: ONE write transaction, in which the attempt is recorded, the task's
output context inserted and linked, the task marked completed (conditional on this process
still holding its claim for that attempt), and the dependents it made runnable claimed for
their first attempt, or settled by their trigger rule. The transaction that completes the last
task also writes the final context and the execution's status. A failed attempt that will be
retried costs a second transaction when the retry starts.

A commit that fails because the database went away is retried for up to one lease; after an
ambiguous failure the runner reloads the execution, so nothing is recorded twice and no claim
it made is forgotten.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue as queue_module
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from . import outcomes, plan
from .exceptions import StoreConnectionError, StoreError, TaskInterrupted, WaitTimeout
from .executor import run_inline
from .logs import log
from .plan import Start
from .records import StaleClaim
from .runtime import Runtime
from .state import ExecutionState
from .statuses import COMPLETED, RUNNING, WAITING
from .store import Tx
from .subworkflows import child_of_event
from .workflow import Workflow

logger = logging.getLogger("durably.runner")
_T = TypeVar("_T")

Job = tuple[str, int]  # (task name, attempt)


class Runner:
    """One execution driven by this process, which holds its claim."""

    def __init__(self, runtime: Runtime, wf: Workflow, state: ExecutionState) -> None:
        self.rt = runtime
        self.wf = wf
        self.state = state
        state.track_readers()  # it holds every task: it can let go of outputs no one reads
        self.timed = state.timed_tasks()  # what may wake (a retry time), None: scan them all
        self.cancelled = False
        self.finished = False
        self.inputs: dict[str, dict[str, Any]] = {}
        self.running: dict[concurrent.futures.Future[dict[str, Any]], Job] = {}
        self.inline: Job | None = None
        self.poked = threading.Event()
        self.completions: queue_module.SimpleQueue[concurrent.futures.Future[dict[str, Any]]] = (
            queue_module.SimpleQueue()
        )

    @property
    def id(self) -> str:
        return self.state.id

    def start(self, tx: Tx) -> list[Job]:
        """Claim (or settle) every startable task, inside the caller's transaction, and pick
        up tasks this process claimed before (an earlier driver of it stopped); return the
        jobs to run."""
        now = self.rt.now()
        mine = [
            (t.name, t.attempt)
            for t in self.state.tasks.values()
            if t.status == RUNNING and t.claimed_by == self.rt.worker_id
        ]
        started = self.rt.dispatch(tx, self.state, plan.startable(self.state, now), now)
        return mine + self._take(started)

    def _take(self, started: list[Start]) -> list[Job]:
        for decision in started:
            self.inputs[decision.name] = decision.input
        return [(s.name, self.state.tasks[s.name].attempt) for s in started]

    # -- the loop ----------------------------------------------------------------------------

    def drive(self, first: list[Job]) -> None:
        """Run until every task is terminal, compensate if it failed, and finish. On the way
        out by an error, the claims of tasks still in flight are released."""
        try:
            self._adopt_children()
            self._loop(first)
        except BaseException:
            self._release()
            raise
        if not self.cancelled:
            self.rt.compensate(self.state)
            if not self.finished:
                self._write(lambda tx: self.rt.finish(tx, self.state))
                self.finished = True

    def _loop(self, first: list[Job]) -> None:
        executor = self.rt.executor
        queue: deque[Job] = deque(first)
        while True:
            if self.cancelled:
                queue.clear()
            while queue:
                name, attempt = queue.popleft()
                task = self.wf.tasks[self.state.tasks[name].parent or name]
                data = self.inputs.pop(name, None)
                ctx = self.rt.context(self.state, name, data or plan.input_for(self.state, name))
                handle = self.rt.handle(self.state, name, attempt)
                if not self.running and not queue and executor.can_inline(task):
                    # The common chain case: no thread hop for a lone sync task.
                    self.inline = (name, attempt)
                    try:
                        output, error = run_inline(task, ctx, handle), None
                    except Exception as failure:
                        output, error = None, failure
                    self.inline = None
                    queue.extend(self._commit(name, attempt, output, error))
                    continue
                future = executor.submit(task, ctx, handle)
                self.running[future] = (name, attempt)
                # Finished futures arrive on a queue: waiting costs O(1) per completion, not
                # a scan of every future in flight (a map runs thousands at once).
                future.add_done_callback(self.completions.put)
            if self.running:
                done = self._completed(timeout=0.5 if queue else self._wake_in())
                for future in done:
                    name, attempt = self.running.pop(future)
                    exc = future.exception()
                    output = None if exc else future.result()
                    queue.extend(self._commit(name, attempt, output, exc))
                if done:
                    continue
            if self.cancelled and not self.running:
                return
            queue.extend(self._start_ready())
            queue.extend(self._wake_due())
            if queue or self.running:
                continue
            if self.state.all_done() or self.cancelled:
                return
            if plan.waiting(self.state):
                # Until the next wake time, or until an event arrives (send() pokes a run of
                # this engine; PostgreSQL's NOTIFY wakes us for another process's send).
                self._pause(self._wake_in())
                queue.extend(self._follow_others())
                continue
            if plan.next_retry(self.state) is None:
                # Tasks claimed by another process: follow them, and take over a stale claim.
                queue.extend(self._follow_others())
                if queue or self.state.all_done():
                    continue
            self.rt.clock.sleep(min(self._wake_in(), 0.5))

    def _completed(self, timeout: float) -> list[concurrent.futures.Future[dict[str, Any]]]:
        try:
            done = [self.completions.get(timeout=timeout)]
        except queue_module.Empty:
            return []
        while True:
            try:
                done.append(self.completions.get_nowait())
            except queue_module.Empty:
                return [future for future in done if future in self.running]

    def _wake_in(self) -> float:
        if self.timed is not None:  # the retries that started since have no time ahead
            self.timed = {n for n in self.timed if self.state.tasks[n].retry_at is not None}
        due = plan.next_wake(self.state, self.timed)
        token = self.rt.repo.next_token_at  # a rate limit held a task back until then
        if token is not None and token > self.rt.now():
            due = token if due is None else min(due, token)
        return 0.5 if due is None else max(0.0, min(due - self.rt.now(), 0.5))

    def poke(self) -> None:
        """Something changed for this execution (an event was sent): look again now."""
        self.poked.set()

    def _pause(self, seconds: float) -> None:
        if self.rt.store.dialect == "postgres" and not self.poked.is_set():
            self.rt.store.wait_for_work(seconds)
        else:
            self.poked.wait(seconds)
        self.poked.clear()

    def _wake_due(self) -> list[Job]:
        """Start the waiting tasks whose time came; an event wait past its timeout starts an
        attempt that fails with WaitTimeout (retried by the task's policy)."""
        due = plan.due(self.state, self.rt.now())
        if not due:
            return []
        expired = [name for name in due if self.state.tasks[name].wait_event is not None]

        def wake(tx: Tx) -> list[Start]:
            now = self.rt.now()
            started = []
            for name in due:
                if self.rt.claim(tx, self.state, name, now):
                    started.append(
                        Start(name, {} if name in expired else plan.input_for(self.state, name))
                    )
            return started

        jobs = self._take(self._write(wake))
        queue: list[Job] = []
        for name, attempt in jobs:
            if name in expired:
                event = self.state.tasks[name].wait_event
                timeout = WaitTimeout(f"no event {event!r} arrived before the wait's timeout")
                queue.extend(self._commit(name, attempt, None, timeout))
            else:
                queue.append((name, attempt))
        return queue

    def _start_ready(self) -> list[Job]:
        if not plan.startable(self.state, self.rt.now()):
            return []
        return self._write(lambda tx: self._take(self._dispatch_startable(tx)))

    def _dispatch_startable(self, tx: Tx) -> list[Start]:
        now = self.rt.now()
        return self.rt.dispatch(tx, self.state, plan.startable(self.state, now), now)

    # -- committing --------------------------------------------------------------------------

    def _commit(
        self, name: str, attempt: int, output: dict[str, Any] | None, error: BaseException | None
    ) -> list[Job]:
        if error is not None and not isinstance(error, Exception):
            # Raised on a pool thread: a task's SystemExit must not stop this process.
            error = TaskInterrupted(f"the task raised {plan.describe(error)}")
        try:
            return self._write(lambda tx: self._record(tx, name, attempt, output, error))
        except StoreError as exc:
            if isinstance(exc, StoreConnectionError) or error is not None:
                raise
            # The database refused the output itself: that fails the task, not this process.
            self._reload()
            refused = StoreError(f"the database refused the output: {exc}")
            return self._write(lambda tx: self._record(tx, name, attempt, None, refused))

    def _record(
        self, tx: Tx, name: str, attempt: int, output: dict[str, Any] | None,
        error: BaseException | None,
    ) -> list[Job]:  # fmt: skip
        task = self.state.tasks[name]
        if (
            task.status != RUNNING
            or task.claimed_by != self.rt.worker_id
            or (task.attempt != attempt)
        ):
            return []  # a reload showed it recorded already, or the claim moved on
        now = self.rt.now()  # one time per transaction: every row it stamps agrees
        unblocked = self.rt.record(tx, self.state, name, attempt, output, error, now)
        if unblocked is None:
            log(
                logger,
                logging.WARNING,
                "lost the claim on task %r attempt %d of execution %s: its output is discarded",
                name,
                attempt,
                self.id,
                action="zombie_discarded",
                execution_id=self.id,
                task=name,
                attempt=attempt,
            )
            return []
        if task.retry_at is not None and self.timed is not None:
            self.timed.add(name)  # it waits for its retry time
        started = []
        if task.parent is not None:
            starts, unblocked = self.rt.close_instance(tx, self.state, name, now, in_process=True)
            started.extend(starts)
        started.extend(self.rt.dispatch(tx, self.state, unblocked, now))
        # The inputs this completion made are built: what nothing reads again can go.
        if task.status == COMPLETED:
            self.state.release_outputs(name)
        if task.parent is not None and self.state.tasks[task.parent].status == COMPLETED:
            self.state.release_outputs(task.parent)  # its last instance completed it
        if not started and self.state.all_done() and not outcomes.compensation_order(self.state):
            self.rt.finish(tx, self.state, now)
            self.finished = True
        return self._take(started)

    def _write(self, work: Callable[[Tx], _T]) -> _T:
        """Run ``work(tx)`` in a transaction; while the database is unreachable, retry for up
        to one lease, reloading the execution after each failure (the failed transaction
        may or may not have committed)."""
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                with self.rt.store.transaction() as tx:
                    done = work(tx)
                if self.state.spawned:
                    self._drive_spawned()
                return done
            except StoreConnectionError as exc:
                if deadline is None:
                    deadline = self.rt.now() + self.rt.lease
                elif self.rt.now() >= deadline:
                    raise StoreConnectionError(
                        f"execution {self.id}: the database stayed unreachable for "
                        f"{self.rt.lease:g}s ({exc}); resume it with engine.resume() or "
                        f"`durably resume {self.id}` once it is back"
                    ) from exc
                log(
                    logger,
                    logging.WARNING,
                    "execution %s: database unreachable, retrying in %.2fs: %s",
                    self.id,
                    delay,
                    exc,
                    action="db_retry",
                    execution_id=self.id,
                )
                self.rt.clock.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    self._reload()
                except StoreError:
                    continue

    def _reload(self) -> None:
        """Replace the in-memory state with the stored one (after a failed transaction, or to
        follow tasks run by others)."""
        with self.rt.store.read() as tx:
            execution = self.rt.repo.execution(tx, self.id)
            assert execution is not None
            fresh = self.rt.load(tx, execution, self.wf)
        self.state.tasks = fresh.tasks
        self.state.reload_outputs(fresh.outputs)
        self.timed = self.state.timed_tasks()
        self.state.remaining, self.state.received = fresh.remaining, fresh.received
        self.state.open = fresh.open

    # -- sub-workflows -------------------------------------------------------------------------

    def _drive_spawned(self) -> None:
        """Run here the children this run just started (their transaction committed)."""
        spawned, self.state.spawned = self.state.spawned, []
        if self.rt.drive_child is not None:
            for child_id in dict.fromkeys(spawned):
                self.rt.drive_child(child_id)

    def _adopt_children(self) -> None:
        """On resume: drive the children its waiting tasks wait for (one whose driver is
        alive elsewhere is left to it), and those its start spawned."""
        for task in self.state.tasks.values():
            child_id = child_of_event(task.wait_event) if task.status == WAITING else None
            if child_id is not None:
                self.state.spawned.append(child_id)
        self._drive_spawned()

    # -- others' claims ----------------------------------------------------------------------

    def _follow_others(self) -> list[Job]:
        """Reload; take over task claims whose owner is gone or stale; return what is now
        ours to run."""
        self._reload()
        stale = [
            t
            for t in self.state.tasks.values()
            if t.status == RUNNING
            and t.instances is None  # a mapped task runs through its instances, unclaimed
            and self.rt.is_stale(t.claimed_by, t.heartbeat_at)
        ]
        if not stale:
            return self._start_ready()

        def take_over(tx: Tx) -> None:
            now = self.rt.now()
            for t in stale:
                records = {r.name: r for r in self.rt.repo.tasks(tx, self.id, [t.name])}
                record = records.get(t.name)
                if record is None or record.status != RUNNING or not record.claimed_by:
                    continue
                self.rt.recover(tx, StaleClaim.of(self.id, record), now)

        self._write(take_over)
        self._reload()
        return self._start_ready()

    def _release(self) -> None:
        """Give back the claims of tasks in flight, so another process can run them now."""
        jobs = [*self.running.values(), *([self.inline] if self.inline else [])]
        if not jobs:
            return
        try:
            with self.rt.store.transaction() as tx:
                now = self.rt.now()
                for name, _ in jobs:
                    records = self.rt.repo.tasks(tx, self.id, [name])
                    if records and records[0].claimed_by == self.rt.worker_id:
                        self.rt.recover(tx, StaleClaim.of(self.id, records[0]), now)
        except Exception as exc:  # the database may be what failed: the lease expires them
            log(
                logger,
                logging.WARNING,
                "execution %s: could not release its task claims (%s); they expire with the lease",
                self.id,
                exc,
                action="release_failed",
                execution_id=self.id,
            )
