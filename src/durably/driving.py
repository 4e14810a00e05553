"""The executions an engine drives in this process: their runners by id (so that ``send``
and ``cancel`` can wake them and ``close`` can stop them), the claim a run gives back when it
stops before its end, and a sub-workflow's child driven on a thread of its own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .exceptions import ExecutionNotFound, ExecutionStateError, StoreError
from .logs import log
from .runtime import Runtime

if TYPE_CHECKING:  # an engine that only reads executions (durably list) never runs one
    from .results import ExecutionResult
    from .runner import Job, Runner

logger = logging.getLogger("durably.engine")


class InProcessRuns:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._runs: dict[str, Runner] = {}
        self._lock = threading.Lock()

    def running(self, execution_id: str) -> bool:
        with self._lock:
            return execution_id in self._runs

    def poke(self, execution_id: str) -> None:
        """Wake the run of ``execution_id`` (an event arrived, a child ended), if it is here."""
        with self._lock:
            runner = self._runs.get(execution_id)
        if runner is not None:
            runner.poke()

    def cancel(self, execution_ids: list[str]) -> None:
        """Tell the runs of these executions to stop starting tasks (they were cancelled)."""
        with self._lock:
            runners = [self._runs.get(each) for each in execution_ids]
        for runner in runners:
            if runner is not None:
                runner.cancelled = True

    def cancel_all(self) -> None:
        with self._lock:
            runners = list(self._runs.values())
        for runner in runners:
            runner.cancelled = True

    def drive(self, runner: Runner, first: list[Job]) -> None:
        """Run an execution here until it ends or cannot go on; a store error names it."""
        self.rt.heartbeat.hold(execution=runner.id)
        with self._lock:
            self._runs[runner.id] = runner
        try:
            runner.drive(first)
        except StoreError as exc:
            if runner.id in str(exc):
                raise
            raise type(exc)(f"execution {runner.id}: {exc}") from exc
        finally:
            with self._lock:
                self._runs.pop(runner.id, None)
            self.rt.heartbeat.drop(execution=runner.id)
            if not runner.finished:
                self.release(runner.id)

    def release(self, execution_id: str) -> None:
        """Give back this engine's claim on an execution it stops driving (or never drove)."""
        try:
            with self.rt.store.transaction() as tx:
                self.rt.repo.release_execution(tx, execution_id, self.rt.worker_id, self.rt.now())
        except StoreError:  # the database is what failed: the claim expires with the lease
            pass

    def drive_child(self, child_id: str, resume: Callable[[str], ExecutionResult]) -> None:
        """Run a sub-workflow's execution that an in-process run started, on a thread of its
        own (its parent's run waits for it like for an event), then wake the parent's run."""

        def drive() -> None:
            try:
                result = resume(child_id)
            except (ExecutionStateError, ExecutionNotFound):
                return  # driven elsewhere already (or its start was rolled back)
            except Exception as exc:  # the child's own run reports its errors
                log(
                    logger,
                    logging.WARNING,
                    "sub-workflow execution %s stopped: %s",
                    child_id,
                    exc,
                    action="child_stopped",
                    execution_id=child_id,
                )
                return
            self.poke(str(result.parent_id))

        threading.Thread(target=drive, name=f"durably-child-{child_id[:8]}", daemon=True).start()
