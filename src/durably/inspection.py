"""Reading executions back: what ``get``, ``list``, ``wait``, ``task_context``, ``durably
show`` and the dashboard see. A mixin of :class:`~durably.Engine`, apart so each module stays
one concept: nothing here writes."""

from __future__ import annotations

import builtins
import math
import time
from uuid import UUID

from . import codec
from .arguments import as_id
from .context import Context
from .exceptions import ExecutionNotFound
from .records import ChildRecord, ExecutionRecord, Snapshot
from .registry import Registry
from .results import ExecutionResult, result_of, summary_of
from .runtime import Runtime
from .shape import StoredShape
from .state import Shape
from .statuses import EXECUTION_TERMINAL
from .store import Store, Tx


class Inspection:
    store: Store
    runtime: Runtime
    registry: Registry

    def _record(self, tx: Tx, execution_id: str) -> ExecutionRecord:
        record = self.runtime.repo.execution(tx, execution_id)
        if record is None:
            raise ExecutionNotFound(f"no execution with id {execution_id}")
        return record

    def snapshot(self, execution_id: UUID | str, *, initial: bool = True) -> Snapshot:
        """Everything stored about an execution (what ``show`` and the dashboard read)."""
        key = as_id(execution_id)
        with self.store.read() as tx:
            snapshot = self.runtime.repo.snapshot(tx, key, initial=initial)
        if snapshot is None:
            raise ExecutionNotFound(f"no execution with id {key}")
        return snapshot

    def shape(self, snapshot: Snapshot) -> Shape | None:
        """The definition an execution ran: the registered workflow, else the shape stored
        with its tasks."""
        record = snapshot.execution
        found = self.registry.find(record.workflow, record.version, record.shape)
        return found or StoredShape.of(snapshot.tasks)

    def get(self, execution_id: UUID | str) -> ExecutionResult:
        """The execution as stored now, with every task's outcome, saved output and attempts."""
        snapshot = self.snapshot(execution_id, initial=False)
        return self.result(snapshot, self.shape(snapshot))

    def result(self, snapshot: Snapshot, shape: Shape | None) -> ExecutionResult:
        """A snapshot as a result, with the links to its sub-workflows' executions."""
        return result_of(snapshot, shape, self.children(snapshot, shape))

    def children(
        self, snapshot: Snapshot, shape: Shape | None = None
    ) -> builtins.list[ChildRecord]:
        """The sub-workflow executions an execution's tasks started, oldest first (read only
        when its definition has sub-workflow tasks)."""
        shape = shape or self.shape(snapshot)
        if shape is None or not any(t.child for t in shape.tasks.values()):
            return []
        with self.store.read() as tx:
            return self.runtime.repo.children(tx, snapshot.execution.id)

    def list(
        self, status: str | None = None, workflow: str | None = None, limit: int = 50
    ) -> builtins.list[ExecutionResult]:
        """Executions, newest first (without per-task detail: use ``get`` for that)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be an int >= 1")
        with self.store.read() as tx:
            records = self.runtime.repo.list_executions(tx, status, workflow, limit)
        return [summary_of(record) for record in records]

    def task_context(self, execution_id: UUID | str, task_name: str) -> Context:
        """The output context ``task_name`` saved in that execution."""
        key = as_id(execution_id)
        with self.store.read() as tx:
            self._record(tx, key)
            value = self.runtime.repo.task_output(tx, key, task_name)
        if value is None:
            raise ExecutionNotFound(
                f"task {task_name!r} of execution {key} has no saved context "
                "(unknown task, or it did not complete)"
            )
        return Context(codec.loads(value))

    def wait(self, execution_id: UUID | str, timeout: float | None = None) -> ExecutionResult:
        """Block until the execution is terminal; TimeoutError after ``timeout`` seconds."""
        key = as_id(execution_id)
        if timeout is not None and (not isinstance(timeout, int | float) or math.isnan(timeout)):
            raise ValueError("timeout must be a number of seconds or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            with self.store.read() as tx:
                status = self._record(tx, key).status
            if status in EXECUTION_TERMINAL:
                return self.get(key)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"execution {key} is still {status} after {timeout}s")
            pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            self.store.wait_for_work(pause)
            delay = min(delay * 2, 0.5)
