"""The dashboard's actions, through the Engine's public methods (and the saga service for a
saga's cancel), each checked first so that a refusal writes nothing.

``cancel`` and ``send`` are one transaction each and answer at once. ``retry``, ``resume`` and
``fork`` run the execution to its end, as ``durably retry`` / ``resume`` / ``fork`` do: here
they run on a daemon thread of the dashboard process (its engine imported the workflows with
``-m``), and the page follows them live. Should the dashboard stop meanwhile, the execution
is left as any interrupted run is: its claim goes stale and a worker (or ``durably resume``)
takes it over after the lease. An error raised within the first moments (a live process
owns the execution, the definition changed) is reported on the page instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

from ..engine import Engine
from ..exceptions import ExecutionStateError
from ..results import ExecutionResult
from ..statuses import EXECUTION_TERMINAL
from ..workflow import registered

log = logging.getLogger("durably.dashboard")
GRACE = 0.5  # seconds a background action is watched for an early error


class Background:
    """Runs the long actions on daemon threads, one at a time per execution."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    def run(self, key: str, what: str, work: Callable[[], object], grace: float = GRACE) -> None:
        """Start ``work``; raise what it raised within ``grace`` seconds."""
        with self._lock:
            if key in self._busy:
                raise ExecutionStateError(f"execution {key} is already being {what} here")
            self._busy.add(key)
        failure: list[BaseException] = []
        done = threading.Event()

        def main() -> None:
            try:
                work()
            except BaseException as exc:
                failure.append(exc)
                log.warning(
                    "dashboard %s of %s failed: %s", what, key, exc,
                    extra={"execution_id": key, "action": f"dashboard_{what}"},
                )  # fmt: skip
            finally:
                with self._lock:
                    self._busy.discard(key)
                done.set()

        threading.Thread(target=main, name=f"durably-dashboard-{what}", daemon=True).start()
        done.wait(grace)
        if failure:
            raise failure[0]


def definition_for(engine: Engine, result: ExecutionResult) -> None:
    """Refuse (``ExecutionStateError``) when this process cannot run the execution's tasks."""
    wf = registered(result.workflow)
    if wf is None:
        raise ExecutionStateError(
            f"workflow {result.workflow!r} is not imported by this dashboard: start it with "
            "-m MODULE (the module that defines it) so that its tasks can run"
        )
    if wf.version != result.version:
        raise ExecutionStateError(
            f"workflow {result.workflow!r} changed since execution {result.execution_id} "
            f"started (version {result.version}, imported {wf.version}): only the same "
            "definition can continue it"
        )


def retry(engine: Engine, jobs: Background, execution_id: UUID) -> None:
    result = engine.get(execution_id)
    if result.status not in ("failed", "cancelled"):
        raise ExecutionStateError(
            f"execution {execution_id} is {result.status}: only failed or cancelled "
            "executions can be retried"
        )
    definition_for(engine, result)
    jobs.run(str(execution_id), "retried", lambda: engine.retry(execution_id))


def resume(engine: Engine, jobs: Background, execution_id: UUID) -> None:
    result = engine.get(execution_id)
    if result.status in EXECUTION_TERMINAL:
        raise ExecutionStateError(f"execution {execution_id} is {result.status}: it is finished")
    definition_for(engine, result)
    jobs.run(str(execution_id), "resumed", lambda: engine.resume(execution_id))


def fork(
    engine: Engine,
    jobs: Background,
    execution_id: UUID,
    task: str,
    patch: dict[str, Any],
    wait: float = 10.0,
) -> UUID:
    """Fork on a background thread and return the new execution's id once it is created
    (``Engine.fork`` names it through ``on_start``, then runs it to its end)."""
    result = engine.get(execution_id)
    if task not in result.tasks or result.tasks[task].parent is not None:
        raise ExecutionStateError(f"execution {execution_id} has no task {task!r}")
    definition_for(engine, result)
    started: queue.SimpleQueue[UUID] = queue.SimpleQueue()
    work = lambda: engine.fork(execution_id, task, patch or None, on_start=started.put)  # noqa: E731
    jobs.run(f"fork:{uuid4()}", "forked", work)  # forks of one execution may overlap
    try:
        return started.get(timeout=wait)
    except queue.Empty:
        raise ExecutionStateError(
            f"the fork of {execution_id} did not start within {wait:g}s"
        ) from None


def cancel(engine: Engine, db: str | None, execution_id: UUID, saga: bool) -> None:
    """A workflow execution is cancelled; a saga rolled back (its definition imported)."""
    if not saga:
        result = engine.get(execution_id)
        if result.status in EXECUTION_TERMINAL:
            raise ExecutionStateError(
                f"execution {execution_id} is already {result.status}: nothing to cancel"
            )
        engine.cancel(execution_id)
        return
    from ..saga_service import rollback_saga

    rollback_saga(db, execution_id)


def send(engine: Engine, execution_id: UUID, name: str, payload: Any, key: str | None) -> bool:
    if not name.strip():
        raise ValueError("the event needs a name")
    return engine.send(execution_id, name.strip(), payload, key=key or None)
