"""The worker's sweeper: it takes back the stale claims of other processes and the claims of
this worker that nothing runs any more, takes over executions whose in-process driver stopped
beating, and finishes executions whose last task was completed by a process that then died.
A mixin of :class:`~durably.worker.Worker`."""

from __future__ import annotations

import logging
import time

from . import metrics, plan
from .logs import log
from .runtime import Runtime
from .state import ExecutionState
from .statuses import NOT_STARTED, RUNNING, TASK_TERMINAL
from .worker_steps import after, mark_ready
from .workflow import Workflow

logger = logging.getLogger("durably.worker")


class Sweeping:
    rt: Runtime
    _active: set[str]
    _last_sweep: float

    def _finish_if_done(self, wf: Workflow, state: ExecutionState) -> None:
        raise NotImplementedError  # the Worker's

    def sweep(self) -> None:
        """Recover other processes' stale task claims, our own claims we no longer run, and
        executions nobody drives any more."""
        self._last_sweep = time.monotonic()
        rt = self.rt
        now = rt.now()
        cutoff = now - rt.lease
        handed = []
        with rt.store.transaction() as tx:
            for execution_id, owner in rt.repo.stale_executions(tx, cutoff, rt.worker_id):
                if rt.repo.hand_to_workers(tx, execution_id, owner, now):
                    handed.append(execution_id)
                    if metrics.active is not None:
                        metrics.active.recovered("execution_taken_over")
                    log(
                        logger,
                        logging.WARNING,
                        "took over execution %s from %s (no heartbeat within the lease)",
                        execution_id,
                        owner,
                        action="execution_taken_over",
                        execution_id=execution_id,
                    )
            mine = [
                claim
                for claim in rt.repo.worker_claims(tx, rt.worker_id)
                if claim.task_id not in self._active
            ]
            for claim in [*rt.repo.stale_claims(tx, cutoff, rt.worker_id), *mine]:
                if rt.recover(tx, claim, now):
                    handed.append(claim.execution_id)
            orphans = rt.repo.orphaned_executions(tx, cutoff)
        for execution_id in dict.fromkeys([*handed, *orphans]):
            self._reconcile(execution_id)

    def _reconcile(self, execution_id: str) -> None:
        """Mark ready the unblocked tasks of an execution handed over by an in-process driver
        (which claims tasks instead of marking them ready), and finish it if it is done."""
        try:
            with self.rt.store.transaction() as tx:
                self.rt.repo.lock_execution(tx, execution_id)
                execution = self.rt.repo.execution(tx, execution_id)
                if execution is None or execution.status != RUNNING or execution.claimed_by:
                    return
                wf = self.rt.workflow(execution.workflow, execution.version, execution.shape)
                state = self.rt.load(tx, execution, wf)
                ready = [
                    name
                    for name, task in state.tasks.items()
                    if task.status == NOT_STARTED
                    and task.parent is None  # instances wait for a slot, not for dependencies
                    and all(
                        state.tasks[dep].status in TASK_TERMINAL
                        for dep in wf.tasks[name].dependencies
                    )
                ]
                mark_ready(self.rt, tx, state, ready, self.rt.now())
                done = after(self.rt, tx, wf, state, execution)
        except Exception as exc:  # one broken execution must not stop the sweeper
            log(
                logger,
                logging.ERROR,
                "cannot reconcile execution %s: %s",
                execution_id,
                plan.describe(exc),
                action="reconcile_failed",
                execution_id=execution_id,
            )
            return
        if done is not None:
            self._finish_if_done(*done)
