"""The runtime's transitions for sub-workflows (SPEC §3.4): a task starting its child
execution, a child's end reaching its parent, a cancel reaching the children, and a failed
parent undoing a completed child. A mixin of :class:`~durably.runtime.Runtime`.

Parent and child meet only through the database: the child is an execution of its own
(``parent_id``, ``parent_task``), and its end posts its outcome to the parent's mailbox in
the transaction that finishes it, so no crash can separate the two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import codec, events, plan
from .logs import log
from .records import ExecutionRecord
from .state import ExecutionState
from .statuses import COMPLETED, EXECUTION_TERMINAL
from .store import Store, Tx
from .subworkflows import CHILD_OUTCOME, child_event, outcome
from .workflow import Workflow

if TYPE_CHECKING:
    from .registry import Registry
    from .repository import Repository

logger = logging.getLogger("durably.runtime")


class Children:
    repo: Repository
    store: Store
    registry: Registry
    worker_id: str
    # Set by an Engine: drive a child this process started (in-process runs), after the
    # transaction that created it committed.
    drive_child: Callable[[str], None] | None = None

    def wait(
        self, tx: Tx, state: ExecutionState, decision: plan.WaitFor, now: float, *, claimed: bool
    ) -> bool:
        raise NotImplementedError  # WaitsAndMaps'

    def load(self, tx: Tx, execution: ExecutionRecord, wf: Workflow) -> ExecutionState:
        raise NotImplementedError  # the Runtime's

    def compensate(self, state: ExecutionState, *, undo: bool = False) -> None:
        raise NotImplementedError  # the Runtime's

    def spawn(
        self, tx: Tx, state: ExecutionState, decision: plan.Spawn, now: float, *, claimed: bool
    ) -> str:
        """Start the task's child execution with the task's input, and put the task into the
        wait for the child's outcome. A child started by an in-process run is claimed by
        this process (its driver starts once this commits); a worker's is left to workers."""
        child = state.definition(decision.name).child
        assert isinstance(child, Workflow), "a sub-workflow task runs a registered workflow"
        created = self.repo.create_execution(
            tx,
            child,
            now,
            initial=codec.dumps(decision.input),
            claimed_by=None if claimed else self.worker_id,
            parent_id=state.id,
            parent_task=decision.name,
        )
        assert created is not None, "a child has no idempotency key to collide on"
        child_id = created[0]
        if state.trace is not None:  # its attempts join the parent's trace
            self.repo.set_trace(tx, child_id, state.trace)
        if not claimed:
            state.spawned.append(child_id)
        wait = plan.WaitFor(decision.name, None, child_event(child_id), CHILD_OUTCOME)
        self.wait(tx, state, wait, now, claimed=claimed)
        if claimed:
            self.repo.notify_work(tx)
        log(
            logger,
            logging.INFO,
            "task %r of execution %s started sub-workflow %r as execution %s",
            decision.name,
            state.id,
            child.name,
            child_id,
            action="child_started",
            execution_id=state.id,
            workflow=getattr(state.shape, "name", None),
            task=decision.name,
        )
        return child_id

    def report(
        self, tx: Tx, state: ExecutionState, status: str, final: str, error: str | None,
        now: float,
    ) -> None:  # fmt: skip
        """A child execution ended: post its outcome to its parent's task."""
        if state.parent is None:
            return
        self._post_outcome(tx, state.parent, state.id, status, codec.loads(final), error, now)

    def _post_outcome(
        self, tx: Tx, parent: str, child_id: str, status: str, context: object,
        error: str | None, now: float,
    ) -> None:  # fmt: skip
        payload = outcome(child_id, status, context, error)
        self.repo.lock_execution(tx, parent)
        events.post(
            self.repo, tx, parent, child_event(child_id), payload, codec.dumps_value(payload),
            None, now,
        )  # fmt: skip

    def cancel_children(self, tx: Tx, execution_id: str, now: float) -> list[str]:
        """Cancel the unfinished children of an execution being cancelled, and theirs; return
        their ids. Call it before cancelling the execution itself: rows are locked child
        first, then parent, the order in which a child's end reaches its parent (the other
        order deadlocks with a worker finishing a child)."""
        cancelled = []
        for child in self.repo.children(tx, execution_id):
            if child.status in EXECUTION_TERMINAL:
                continue
            cancelled.extend(self.cancel_children(tx, child.id, now))
            self.repo.cancel_execution(tx, child.id, now)
            cancelled.append(child.id)
        return cancelled

    def report_cancel(self, tx: Tx, execution_id: str, parent: str | None, now: float) -> None:
        """An execution was cancelled: if it is a child, its parent's task hears of it."""
        if parent is not None:
            error = "cancelled"
            self._post_outcome(tx, parent, execution_id, "cancelled", {}, error, now)

    def compensate_child(self, state: ExecutionState, name: str) -> None:
        """Undo the completed child execution of the parent's task ``name``: run the
        compensations of its completed tasks (and of their children), newest first."""
        with self.store.read() as tx:
            done = [
                c
                for c in self.repo.children(tx, state.id)
                if c.task == name and c.status == COMPLETED
            ]
            if not done:
                return
            record = self.repo.execution(tx, done[-1].id)
            assert record is not None
            wf = self.registry.get(record.workflow, record.version)
            child = self.load(tx, record, wf)
        self.compensate(child, undo=True)
