"""Workers: processes that claim ready tasks of queued executions and run them.

Per task a worker commits two transactions: the claim (which also loads what the task needs:
its dependencies' statuses and outputs) and the completion (output context, status, and the
dependents it made ready). A
sweeper returns stale claims to ``ready``, takes over executions whose in-process driver
died, and finishes executions whose last task was completed by a worker that then died.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .exceptions import StoreError
from .results import NOT_STARTED, READY, RUNNING, TASK_TERMINAL
from .scheduler import Run, TaskState, context_patch, describe, load_run
from .store import Row, Tx, timestamp
from .workflow import Workflow

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("durably.worker")


class Worker:
    """Claims and runs tasks until ``stop()``; ``run()`` blocks."""

    def __init__(self, engine: Engine, *, concurrency: int, poll_interval: float = 0.5) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("concurrency must be an int >= 1")
        self.engine = engine
        self.store = engine.store
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self._last_sweep = 0.0
        self.completed = 0
        # Outcomes whose completion transaction failed: retried until the database is back
        # (the completion is conditional on the claim, so a retry never applies twice).
        self._unsaved: list[tuple[Run, str, int, dict[str, Any] | None, BaseException | None]] = []
        self._active: set[str] = set()

    def stop(self) -> None:
        """Finish the running tasks, claim nothing more, and make ``run()`` return."""
        self._stopping.set()

    def run(self) -> None:
        self.engine._ensure_heartbeat()
        running: dict[concurrent.futures.Future[dict[str, Any]], tuple[Run, str, int]] = {}
        failures = 0
        # After stop(): finish the running tasks and try a few times to save their outcomes;
        # an outcome still unsaved then is redone elsewhere once its claim's lease expires.
        while not self._stopping.is_set() or running or (self._unsaved and failures < 3):
            try:
                self._step(running)
                failures = 0
            except StoreError as exc:
                # The database went away (restart, failover, a killed connection): back off
                # and go on; outcomes not yet saved are kept and saved when it is back.
                failures += 1
                delay = min(0.1 * 2**failures, 5.0)
                log.warning(
                    "database error, retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"action": "worker_db_error"},
                )
                time.sleep(delay)

    def _step(
        self, running: dict[concurrent.futures.Future[dict[str, Any]], tuple[Run, str, int]]
    ) -> None:
        """One turn of the loop: sweep when due, claim up to the free slots, record what
        finished, or wait for work."""
        engine = self.engine
        self._save_outcomes()
        if time.monotonic() - self._last_sweep > engine.lease / 2:
            self.sweep()
        claimed = False
        if not self._stopping.is_set() and len(running) < self.concurrency:
            jobs = self._claim(self.concurrency - len(running))
            claimed = bool(jobs)
            for job in jobs:
                run, name, attempt = job
                ctx = run.context_for(name)
                task = run.wf.tasks[name]
                running[engine.executor.submit(task, ctx, run.handle(name, attempt))] = job
        if running:
            done, _ = concurrent.futures.wait(
                running,
                timeout=self.poll_interval,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            for future in done:
                run, name, attempt = running.pop(future)
                exc = future.exception()
                self._unsaved.append((run, name, attempt, None if exc else future.result(), exc))
            self._save_outcomes()
        elif not claimed:
            self.store.wait_for_work(self.poll_interval)

    def _save_outcomes(self) -> None:
        """Record every finished attempt in ONE transaction (a commit is the expensive part
        on PostgreSQL). If it fails, they all stay for the next turn: each completion is
        conditional on its claim, so none can apply twice."""
        if not self._unsaved:
            return
        for _run, _name, _attempt, _output, error in self._unsaved:
            if error is not None and not isinstance(error, Exception):
                raise error  # KeyboardInterrupt and the like are not task outcomes
        # Executions locked in id order: two workers' batches can never deadlock.
        batch = sorted(self._unsaved, key=lambda outcome: outcome[0].id)
        recorded: list[bool] = []
        finished: list[Run] = []
        with self.store.transaction() as tx:
            locked: set[str] = set()
            for run, name, attempt, output, error in batch:
                if run.id not in locked:
                    # Other workers may have finished siblings since the claim: read the
                    # statuses under the lock so exactly one completion marks a dependent ready.
                    tx.fetch_one("lock_execution", {"id": run.id})
                    locked.add(run.id)
                execution = {"id": run.id, "context_id": None}
                fresh = self._around(tx, run.wf, execution, name, run.patches)
                recorded.append(fresh.record(tx, name, attempt, output, error) is not None)
                if recorded[-1] and (done := self._after(tx, fresh, None)) is not None:
                    finished.append(done)
        self._unsaved.clear()
        for (run, name, attempt, _output, _error), saved in zip(batch, recorded, strict=True):
            self._active.discard(run.tasks[name].id)
            if saved:
                self.completed += 1
            else:
                log.warning(
                    "lost the claim on %s attempt %d: output discarded",
                    name,
                    attempt,
                    extra={"action": "zombie_discarded", "task": name},
                )
        for run in finished:
            self._finish_if_done(run)

    # -- one task ------------------------------------------------------------------------------

    def _claim(self, limit: int) -> list[tuple[Run, str, int]]:
        """Claim up to ``limit`` ready tasks in one transaction, loading just what each needs:
        its dependencies' statuses and outputs (or the initial context). A claimed task that
        its trigger skips is settled in the same transaction, and the claim goes on."""
        names = json.dumps([f"{name}@{version}" for name, version in self.engine._workflows])
        jobs: list[tuple[Run, str, int]] = []
        while not jobs:
            done: list[Run] = []
            with self.store.transaction() as tx:
                rows = tx.fetch_all(
                    "claim_tasks",
                    {
                        "worker": self.engine.worker_id,
                        "now": timestamp(),
                        "names": names,
                        "limit": limit,
                    },
                )
                if not rows:
                    return []
                for row in rows:
                    job, finished = self._prepare(tx, row)
                    if job is not None:
                        jobs.append(job)
                    elif finished is not None:
                        done.append(finished)
            for run, name, _attempt in jobs:
                self._active.add(run.tasks[name].id)  # only once the claim is committed
            for run in done:
                self._finish_if_done(run)
        return jobs

    def _prepare(self, tx: Tx, row: Row) -> tuple[tuple[Run, str, int] | None, Run | None]:
        """A claimed task's inputs, or its settlement without running: ``(job, None)``, or
        ``(None, the whole execution if that finished it)``."""
        execution_id, name = str(row["pipeline_execution_id"]), row["task_name"]
        execution = tx.fetch_one("get_execution", {"id": execution_id})
        assert execution is not None
        wf = self.engine._workflow(execution["pipeline_name"], execution["pipeline_version"])
        deps = wf.tasks[name].dependencies
        run = self._partial(
            tx,
            wf,
            execution,
            [name, *deps],
            outputs=deps,
            patches={name: patch} if (patch := context_patch(row)) else {},
            with_initial=not deps,
        )
        if any(dep not in run.outputs for dep in deps):
            # A dependency that did not complete passes on its own input: that needs the
            # whole execution (rare: only after a failure or a skip).
            run = load_run(self.engine, tx, wf, execution)
            run.claims = False
        verdict, detail = run.evaluate(name)
        if verdict == "run":
            run.inputs[name] = detail
            return (run, name, row["attempt"]), None
        # Settled without running (skipped by its trigger, or its input failed).
        around = self._around(tx, wf, execution, name, run.patches)
        around.settle(tx, name, verdict, detail, timestamp())
        return None, self._after(tx, around, execution)

    def _partial(
        self,
        tx: Tx,
        wf: Workflow,
        execution: Row,
        names: Sequence[str],
        *,
        outputs: Sequence[str] = (),
        patches: dict[str, dict[str, Any]] | None = None,
        with_initial: bool = False,
    ) -> Run:
        """A Run holding only the named tasks (fresh from the database), the named outputs,
        and the initial context when asked."""
        execution_id = str(execution["id"])
        states = tx.fetch_all("get_task_states", {"id": execution_id, "names": json.dumps(names)})
        initial = "{}"
        if with_initial:
            row = tx.fetch_one("get_context", {"id": str(execution["context_id"])})
            assert row is not None
            initial = row["value"]
        values = (
            tx.fetch_all("get_named_outputs", {"id": execution_id, "names": json.dumps(outputs)})
            if outputs
            else []
        )
        run = Run(
            self.engine,
            wf,
            execution_id,
            initial,
            [TaskState.from_row(state) for state in states],
            {value["task_name"]: value["value"] for value in values},
            patches,
        )
        run.claims = False
        return run

    def _around(
        self, tx: Tx, wf: Workflow, execution: Row, name: str, patches: dict[str, dict[str, Any]]
    ) -> Run:
        """The tasks a change of ``name`` can affect: it, its dependents, and theirs."""
        children = wf.dependents()[name]
        touched = dict.fromkeys([name, *children])
        for child in children:
            touched.update(dict.fromkeys(wf.tasks[child].dependencies))
        return self._partial(tx, wf, execution, list(touched), patches=patches)

    def _complete(
        self,
        run: Run,
        name: str,
        attempt: int,
        output: dict[str, Any] | None,
        error: BaseException | None,
    ) -> None:
        """Record one finished attempt now."""
        self._unsaved.append((run, name, attempt, output, error))
        self._save_outcomes()

    def _after(self, tx: Tx, run: Run, execution: Row | None) -> Run | None:
        """Wake other workers for what became ready; when nothing is left to run, load the
        whole execution and finish it (here, unless compensations must run first)."""
        if run.made_ready:
            tx.execute("notify_work", {})
        left = tx.fetch_one("count_unfinished", {"id": run.id})
        if left is None or left["unfinished"]:
            return None
        if execution is None or execution["context_id"] is None:
            execution = tx.fetch_one("get_execution", {"id": run.id})
            assert execution is not None
        whole = load_run(self.engine, tx, run.wf, execution)
        whole.claims = False
        if not whole.needs_compensation():
            whole.finish(tx)
            whole.finished = True
        return whole

    def _finish_if_done(self, run: Run | None) -> None:
        if run is None or run.finished:
            return
        # Compensations run once: only the worker that claims the execution runs them.
        with self.store.transaction() as tx:
            claimed = tx.execute(
                "claim_execution",
                {
                    "id": run.id,
                    "worker": self.engine.worker_id,
                    "previous": "",
                    "recovered": 0,
                    "now": timestamp(),
                },
            )
        if claimed:
            run.compensate_and_finish()

    # -- the sweeper ---------------------------------------------------------------------------

    def sweep(self) -> None:
        """Recover stale task claims and executions nobody drives any more."""
        self._last_sweep = time.monotonic()
        engine = self.engine
        cutoff = timestamp(time.time() - engine.lease)
        now = timestamp()
        handed = []
        with self.store.transaction() as tx:
            for row in tx.fetch_all("stale_executions", {"cutoff": cutoff}):
                params = {"id": str(row["id"]), "previous": row["claimed_by"], "now": now}
                if tx.execute("hand_to_workers", params):
                    handed.append(str(row["id"]))
                    log.warning(
                        "took over execution %s from %s",
                        row["id"],
                        row["claimed_by"],
                        extra={"action": "execution_taken_over"},
                    )
            mine = tx.fetch_all("worker_claims", {"worker": engine.worker_id})
            lost = [task for task in mine if str(task["id"]) not in self._active]
            for task in [*tx.fetch_all("stale_claims", {"cutoff": cutoff}), *lost]:
                if engine._recover_task(tx, task, now):
                    handed.append(str(task["pipeline_execution_id"]))
                log.warning(
                    "recovered stale claim on task %s",
                    task["task_name"],
                    extra={"action": "claim_recovered"},
                )
            orphans = tx.fetch_all("orphaned_executions", {"cutoff": cutoff})
        for execution_id in dict.fromkeys([*handed, *(str(o["id"]) for o in orphans)]):
            self._reconcile(execution_id)

    def _reconcile(self, execution_id: str) -> None:
        """Mark ready the unblocked tasks of an execution handed over by an in-process driver
        (which claims tasks instead of marking them ready), and finish it if it is done."""
        try:
            with self.store.transaction() as tx:
                tx.fetch_one("lock_execution", {"id": execution_id})
                row = tx.fetch_one("get_execution", {"id": execution_id})
                if row is None or row["status"] != RUNNING or row["claimed_by"] is not None:
                    return
                wf = self.engine._workflow(row["pipeline_name"], row["pipeline_version"])
                run = load_run(self.engine, tx, wf, row)
                run.claims = False
                now = timestamp()
                for name, state in run.tasks.items():
                    if state.status in TASK_TERMINAL:
                        continue
                    deps = run.wf.tasks[name].dependencies
                    if state.status == NOT_STARTED and all(
                        run.tasks[d].status in TASK_TERMINAL for d in deps
                    ):
                        tx.execute("mark_ready", {"id": state.id, "now": now})
                        state.status = READY
                        run.made_ready = True
                done = self._after(tx, run, row)
        except Exception as exc:  # one broken execution must not stop the sweeper
            log.error(
                "cannot reconcile execution %s: %s",
                execution_id,
                describe(exc),
                extra={"action": "reconcile_failed"},
            )
            return
        self._finish_if_done(done)
