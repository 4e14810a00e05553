"""Driving one execution in this process: readiness, context flow, outcomes, compensation.

Database work per task, in-process: ONE write transaction, in which the task's output context
is inserted, its metadata row points at it, the task is marked completed (conditional on this
process still holding its claim for that attempt), and the dependents it made runnable are
claimed for their first attempt, or skipped by their trigger rule. The transaction that
completes the last task also writes the final context and the execution's status. A failed
attempt that will be retried costs a second transaction when the retry starts.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import codec
from .context import Context, ExecutionScope
from .exceptions import (
    ContextConflictError,
    ContextError,
    ContextSerializationError,
    ContextTooLargeError,
    NonRetryable,
    TaskReturnError,
)
from .executor import TaskHandle, run_inline
from .merge import latest_wins, merge
from .results import (
    ABANDONED,
    COMPLETED,
    FAILED,
    NOT_STARTED,
    READY,
    RUNNING,
    SKIPPED,
    TASK_TERMINAL,
)
from .store import Row, Tx, parse_timestamp, timestamp
from .triggers import should_run
from .workflow import Workflow

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("durably")

# Errors that no retry can fix: the task fails at once (SPEC §3, "fail it without retry").
PERMANENT = (
    NonRetryable,
    ContextSerializationError,
    ContextTooLargeError,
    ContextConflictError,
    TaskReturnError,
)


@dataclass(slots=True)
class TaskState:
    id: str
    name: str
    status: str
    attempt: int
    retry_at: float | None
    claimed_by: str | None
    error: str | None
    compensation: str | None

    @classmethod
    def from_row(cls, row: Row) -> TaskState:
        retry_at = row["retry_at"]
        return cls(
            id=str(row["id"]),
            name=row["task_name"],
            status=row["status"],
            attempt=row["attempt"],
            retry_at=_epoch(retry_at) if retry_at is not None else None,
            claimed_by=row["claimed_by"],
            error=row["error_details"],
            compensation=row["compensation_status"],
        )


def _epoch(value: Any) -> float:
    parsed = parse_timestamp(value)
    return parsed.timestamp() if parsed else 0.0


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Run:
    """One execution driven by this process, which holds its claim."""

    def __init__(
        self,
        engine: Engine,
        wf: Workflow,
        execution_id: str,
        initial: str,
        tasks: list[TaskState],
        outputs: dict[str, str],
        patches: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.worker_id = engine.worker_id
        self.wf = wf
        self.id = execution_id
        self.initial = initial
        self.tasks = {state.name: state for state in tasks}
        self.outputs = outputs
        self.patches = patches or {}
        self.dependents = wf.dependents()
        self.remaining = self.count_remaining()
        self.inputs: dict[str, dict[str, Any]] = {}
        self.cancelled = False
        self.finished = False
        # In-process runs claim the tasks they unblock; workers only mark them ready.
        self.claims = True
        self.made_ready = False
        self.max_context_bytes = engine.max_context_bytes

    def count_remaining(self) -> dict[str, int]:
        """Per loaded task, how many of its dependencies are not terminal yet. A worker loads
        only the tasks one completion touches; their dependencies are loaded with them."""
        tasks = self.tasks
        return {
            name: sum(
                tasks[dep].status not in TASK_TERMINAL
                for dep in self.wf.tasks[name].dependencies
                if dep in tasks
            )
            for name in tasks
        }

    # -- pure rules ----------------------------------------------------------------------------

    def input_for(self, name: str) -> dict[str, Any]:
        """The context a task receives (SPEC §3.1 rules 2-6); a fresh copy every time.

        A dependency that did not complete (a task run by ``all_done`` or ``one_failed``)
        passes on the context it received, so a failure handler still sees what came before.
        """
        task = self.wf.tasks[name]
        if not task.dependencies:
            data = codec.loads(self.initial)
        else:
            data = merge(task.merge, [(dep, self._passed_on(dep)) for dep in task.dependencies])
        patch = self.patches.get(name)
        if patch:
            data.update(patch)
        return data

    def _passed_on(self, name: str) -> dict[str, Any]:
        value = self.outputs.get(name)
        return codec.loads(value) if value is not None else self.input_for(name)

    def final_context(self) -> dict[str, Any]:
        """The leaves' outputs merged in declaration order (rule 8). When a leaf did not
        complete, the outputs of the completed tasks nearest to it stand in for it."""
        frontier = [
            name
            for name in self.wf.tasks
            if name in self.outputs
            and not any(child in self.outputs for child in self.dependents[name])
        ]
        if not frontier:
            return codec.loads(self.initial)
        return latest_wins([(name, codec.loads(self.outputs[name])) for name in frontier])

    def all_done(self) -> bool:
        return all(state.status in TASK_TERMINAL for state in self.tasks.values())

    def failed(self) -> bool:
        return any(state.status in (FAILED, ABANDONED) for state in self.tasks.values())

    # -- transitions, inside the caller's transaction -------------------------------------------

    def evaluate(self, name: str) -> tuple[str, Any]:
        """For a task whose dependencies are all done: ``("run", input data)``, or
        ``(SKIPPED | FAILED, reason)`` when it is settled without running."""
        task = self.wf.tasks[name]
        rule = task.trigger
        statuses = [self.tasks[dep].status for dep in task.dependencies]
        skipped = SKIPPED, f"trigger {rule.to_json()} not met by dependencies {statuses}"
        # Decide on statuses alone when the rule allows: a skipped task needs no input.
        if not rule.uses_context and not should_run(rule, statuses, {}):
            return skipped
        try:
            data = self.input_for(name)
            if rule.uses_context and not should_run(rule, statuses, data):
                return skipped
        except Exception as exc:  # a conflict, a bad condition, or a user merge callable
            return FAILED, describe(exc)
        return "run", data

    def decide(self, tx: Tx, name: str, now: str) -> list[str]:
        """A task whose dependencies are all done either starts (claimed here) or is settled
        without running; return the tasks to dispatch."""
        state = self.tasks[name]
        verdict, detail = self.evaluate(name)
        if verdict != "run":
            return self.settle(tx, name, verdict, detail, now)
        if state.retry_at is not None and state.retry_at > time.time():
            return []
        if not tx.execute("start_task", {"id": state.id, "worker": self.worker_id, "now": now}):
            return []  # settled elsewhere meanwhile (cancelled, or taken by another driver)
        state.status, state.attempt, state.retry_at = RUNNING, state.attempt + 1, None
        state.claimed_by = self.worker_id
        self.inputs[name] = detail
        return [name]

    def settle(self, tx: Tx, name: str, status: str, error: str | None, now: str) -> list[str]:
        state = self.tasks[name]
        tx.execute(
            "settle_unstarted_task",
            {"id": state.id, "status": status, "error": error, "now": now},
        )
        state.status, state.error, state.claimed_by = status, error, None
        return self.propagate(tx, name, now)

    def propagate(self, tx: Tx, name: str, now: str) -> list[str]:
        """``name`` reached a terminal status: decide the dependents it unblocked."""
        dispatch: list[str] = []
        for child in self.dependents[name]:
            self.remaining[child] -= 1
            state = self.tasks[child]
            if self.remaining[child] != 0 or state.status not in (NOT_STARTED, READY):
                continue
            if self.claims:
                dispatch.extend(self.decide(tx, child, now))
            elif state.status == NOT_STARTED:
                # Worker mode: leave it for whichever worker claims it first.
                tx.execute("mark_ready", {"id": state.id, "now": now})
                state.status = READY
                self.made_ready = True
        return dispatch

    def record(
        self,
        tx: Tx,
        name: str,
        attempt: int,
        output: dict[str, Any] | None,
        error: BaseException | None,
    ) -> list[str] | None:
        """Write an attempt's outcome; return the tasks to dispatch next, or None when this
        process no longer held the claim (a zombie: nothing is written)."""
        state = self.tasks[name]
        task = self.wf.tasks[name]
        now = timestamp()
        key = {"id": state.id, "worker": self.worker_id, "attempt": attempt, "now": now}
        if error is None:
            assert output is not None
            try:
                value = codec.dumps(output, max_bytes=self.max_context_bytes)
            except ContextError as exc:
                error = exc
        if error is None:
            if not tx.execute("complete_task", key):
                return None
            context_id = str(uuid.uuid4())
            tx.execute("insert_context", {"id": context_id, "value": value, "now": now})
            tx.execute(
                "save_output",
                {
                    "id": str(uuid.uuid4()),
                    "task_id": state.id,
                    "execution_id": self.id,
                    "name": name,
                    "context_id": context_id,
                    "now": now,
                },
            )
            self.outputs[name] = value
            state.status, state.error, state.claimed_by = COMPLETED, None, None
            return self.propagate(tx, name, now)
        message = describe(error)
        if not isinstance(error, PERMANENT) and task.retry.should_retry(error, attempt):
            retry_at = time.time() + task.retry.delay(attempt + 1)
            if not tx.execute(
                "retry_task_later", {**key, "error": message, "retry_at": timestamp(retry_at)}
            ):
                return None
            state.status, state.retry_at, state.error, state.claimed_by = (
                READY,
                retry_at,
                message,
                None,
            )
            return []
        if not tx.execute("fail_task", {**key, "error": message}):
            return None
        state.status, state.error, state.claimed_by = FAILED, message, None
        return self.propagate(tx, name, now)

    def finish(self, tx: Tx) -> None:
        """Write the final context and status, once every task is terminal."""
        now = timestamp()
        context_id = str(uuid.uuid4())
        tx.execute(
            "insert_context",
            {"id": context_id, "value": codec.dumps(self.final_context()), "now": now},
        )
        failed = [s for s in self.tasks.values() if s.status in (FAILED, ABANDONED)]
        error = "; ".join(f"task {s.name!r} {s.status}: {s.error}" for s in failed) or None
        tx.execute(
            "finish_execution",
            {
                "id": self.id,
                "status": FAILED if failed else COMPLETED,
                "context_id": context_id,
                "error": error,
                "now": now,
            },
        )

    def needs_compensation(self) -> list[str]:
        """Completed tasks with a compensation not yet run, last finished first."""
        if not self.failed():
            return []
        order = self.wf.topological_order()
        return [
            name
            for name in reversed(order)
            if self.wf.tasks[name].compensate is not None
            and self.tasks[name].status == COMPLETED
            and self.tasks[name].compensation not in ("completed", "failed")
        ]

    # -- the loop ------------------------------------------------------------------------------

    def handle(self, name: str, attempt: int) -> TaskHandle:
        state = self.tasks[name]
        return TaskHandle(
            uuid.UUID(self.id), name, attempt, lambda: self.engine.beat_task(state.id)
        )

    def context_for(self, name: str) -> Context:
        data = self.inputs.pop(name, None)
        if data is None:
            data = self.input_for(name)
        state = self.tasks[name]
        scope = ExecutionScope(uuid.UUID(self.id), uuid.UUID(state.id), name)
        return Context._from_data(data, scope)

    def drive(self, first: list[str]) -> None:
        """Run until every task is terminal, compensate if it failed, and finish."""
        executor = self.engine.executor
        running: dict[concurrent.futures.Future[dict[str, Any]], tuple[str, int]] = {}
        queue = list(first)
        while True:
            if self.cancelled:
                queue.clear()
            while queue:
                name = queue.pop(0)
                task = self.wf.tasks[name]
                attempt = self.tasks[name].attempt
                ctx = self.context_for(name)
                if not running and not queue and executor.can_inline(task):
                    # The common chain case: no thread hop for a lone sync task.
                    try:
                        output, error = run_inline(task, ctx, self.handle(name, attempt)), None
                    except Exception as failure:
                        output, error = None, failure
                    queue.extend(self._commit(name, attempt, output, error))
                    continue
                running[executor.submit(task, ctx, self.handle(name, attempt))] = (name, attempt)
            if running:
                done, _ = concurrent.futures.wait(
                    running,
                    timeout=self._next_wakeup(),
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                for future in done:
                    name, attempt = running.pop(future)
                    exc = future.exception()
                    queue.extend(self._commit(name, attempt, None if exc else future.result(), exc))
                if done:
                    continue
            if self.cancelled and not running:
                return
            queue.extend(self._resume_ready())
            if queue or running:
                continue
            if self.all_done() or self.cancelled:
                break
            waiting = self._next_wakeup()
            if not self._retry_pending():
                # Tasks claimed by another live process: poll until they finish.
                self._reload()
                queue.extend(self._resume_ready())
                if self.all_done():
                    break
            time.sleep(min(waiting, 0.5))
        if not self.cancelled:
            self.compensate_and_finish()

    def _commit(
        self, name: str, attempt: int, output: dict[str, Any] | None, error: BaseException | None
    ) -> list[str]:
        if error is not None and not isinstance(error, Exception):
            raise error
        if error is not None:
            log.info(
                "task failed",
                extra={
                    "action": "task_failed",
                    "task": name,
                    "attempt": attempt,
                    "error": str(error),
                },
            )
        with self.store.transaction() as tx:
            dispatch = self.record(tx, name, attempt, output, error)
            if dispatch is None:
                log.warning(
                    "lost the claim on task %s attempt %d: its output is discarded",
                    name,
                    attempt,
                    extra={"action": "zombie_discarded", "task": name},
                )
                return []
            if not dispatch and self.all_done() and not self.needs_compensation():
                self.finish(tx)
                self.finished = True
        return dispatch

    def _retry_pending(self) -> bool:
        return any(s.status == READY and s.retry_at is not None for s in self.tasks.values())

    def _next_wakeup(self) -> float:
        pending = [
            s.retry_at for s in self.tasks.values() if s.status == READY and s.retry_at is not None
        ]
        if not pending:
            return 0.5
        return max(0.0, min(min(pending) - time.time(), 0.5))

    def startable(self) -> list[str]:
        """Tasks whose dependencies are done, not started, and not waiting for a retry; in
        declaration order."""
        now = time.time()
        return [
            name
            for name in self.wf.tasks
            if (state := self.tasks[name]).status in (NOT_STARTED, READY)
            and self.remaining[name] == 0
            and (state.retry_at is None or state.retry_at <= now)
        ]

    def start_ready(self, tx: Tx) -> list[str]:
        """Claim (or settle) every startable task; return those to dispatch."""
        stamp = timestamp()
        dispatch: list[str] = []
        for name in self.startable():
            # An earlier decision in this loop may have settled it already (a skip cascade).
            if self.tasks[name].status in (NOT_STARTED, READY):
                self.tasks[name].retry_at = None
                dispatch.extend(self.decide(tx, name, stamp))
        return dispatch

    def _resume_ready(self) -> list[str]:
        if not self.startable():
            return []
        with self.store.transaction() as tx:
            return self.start_ready(tx)

    def _reload(self) -> None:
        with self.store.read() as tx:
            rows = tx.fetch_all("get_tasks", {"id": self.id})
            outputs = tx.fetch_all("get_outputs", {"id": self.id})
        for row in rows:
            self.tasks[row["task_name"]] = TaskState.from_row(row)
        self.outputs = {row["task_name"]: row["value"] for row in outputs}
        self.remaining = self.count_remaining()

    def compensate_and_finish(self) -> None:
        """Run pending compensations (each recorded durably), then write the outcome."""
        for name in self.needs_compensation():
            task = self.wf.tasks[name]
            state = self.tasks[name]
            assert task.compensate is not None
            ctx = Context._from_data(
                codec.loads(self.outputs[name]),
                ExecutionScope(uuid.UUID(self.id), uuid.UUID(state.id), name),
            )
            status, error = "completed", None
            try:
                self.engine.call_compensation(task.compensate, ctx)
            except Exception as exc:
                status, error = "failed", describe(exc)
                log.warning(
                    "compensation of %s failed: %s",
                    name,
                    error,
                    extra={"action": "compensation_failed", "task": name},
                )
            with self.store.transaction() as tx:
                tx.execute(
                    "set_compensation",
                    {"id": state.id, "status": status, "error": error, "now": timestamp()},
                )
            state.compensation = status
        if self.finished:
            return
        with self.store.transaction() as tx:
            self.finish(tx)
        self.finished = True


def context_patch(task: Row) -> dict[str, Any] | None:
    """A fork's context patch for a task, kept in its stored configuration."""
    patch = json.loads(task["task_configuration"] or "{}").get("context_patch")
    return codec.loads(patch) if patch else None


def load_run(engine: Engine, tx: Tx, wf: Workflow, execution: Row) -> Run:
    """Build a Run from the database (resume, retry, fork, workers)."""
    execution_id = str(execution["id"])
    initial = tx.fetch_one("get_context", {"id": str(execution["context_id"])})
    rows = tx.fetch_all("get_tasks", {"id": execution_id})
    outputs = tx.fetch_all("get_outputs", {"id": execution_id})
    assert initial is not None
    patches = {row["task_name"]: patch for row in rows if (patch := context_patch(row))}
    return Run(
        engine,
        wf,
        execution_id,
        initial["value"],
        [TaskState.from_row(row) for row in rows],
        {row["task_name"]: row["value"] for row in outputs},
        patches,
    )
