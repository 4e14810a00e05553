"""An execution in memory, as the state machine (:mod:`durably.plan`) sees it: what it
needs of a definition (:class:`Shape`), each task's state, the saved outputs, the initial
context and a fork's patches. Pure data; the plan's rules read and mark it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from .merge import MergeFn
from .retry import RetryPolicy
from .statuses import COMPLETED, TASK_TERMINAL, UNSTARTED
from .triggers import TriggerRule
from .waits import Wait


class IncompleteState(Exception):
    """A partial state lacks what a question needs (the caller's bug, never a task's)."""


class TaskShape(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dependencies(self) -> tuple[str, ...]: ...
    @property
    def merge(self) -> str | MergeFn: ...
    @property
    def trigger(self) -> TriggerRule: ...
    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def compensate(self) -> Any: ...
    @property
    def wait(self) -> Wait | None: ...
    @property
    def map_over(self) -> str | None: ...
    @property
    def max_parallel(self) -> int | None: ...
    @property
    def collect(self) -> str | None: ...
    @property
    def child(self) -> Any: ...  # a sub-workflow task's workflow (or its name); else None


class Shape(Protocol):
    """What the plan needs of a definition: a :class:`~durably.Workflow` is one, and so is
    the shape stored with an execution's tasks (``show`` without the module imported)."""

    @property
    def tasks(self) -> Mapping[str, TaskShape]: ...

    def dependents(self) -> Mapping[str, Sequence[str]]: ...

    def topological_order(self) -> list[str]: ...


@dataclass(slots=True)
class TaskState:
    """A task as the state machine sees it (times are epoch seconds)."""

    id: str
    name: str
    status: str
    attempt: int = 0
    retry_at: float | None = None
    claimed_by: str | None = None
    heartbeat_at: float | None = None
    error: str | None = None
    compensation: str | None = None
    started_at: float | None = None
    wake_at: float | None = None  # waiting: when it wakes, or when its event wait times out
    wait_event: str | None = None  # waiting for this event
    waited: bool = False  # its wait was satisfied: it does not wait again
    parent: str | None = None  # an instance of a mapped task: that task's name
    index: int | None = None  # ...and its index
    instances: int | None = None  # a mapped task that expanded: how many instances


class ExecutionState:
    """One execution in memory: tasks, saved outputs (codec text), the initial context, a
    fork's context patches, and the event payloads tasks received (``received``: task name ->
    {context key: payload}). ``remaining[name]`` counts a task's unfinished dependencies among
    the loaded tasks."""

    def __init__(
        self,
        shape: Shape,
        execution_id: str,
        tasks: Iterable[TaskState],
        outputs: Mapping[str, str] | None = None,
        initial: str | None = None,
        patches: Mapping[str, dict[str, Any]] | None = None,
        received: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.shape = shape
        self.id = execution_id
        self.tasks = {task.name: task for task in tasks}
        self.outputs = dict(outputs or {})
        # Saved outputs an in-process run let go of (release_outputs): in the database, no
        # longer in ``outputs``, and never read again by this run.
        self.released: set[str] = set()
        self._readers: dict[str, int] | None = None  # see release_outputs
        self.initial = initial
        self.patches = dict(patches or {})
        self.received = dict(received or {})
        self.parent: str | None = None  # a sub-workflow's parent execution
        # Children this process started in-process, for its driver to run once committed.
        self.spawned: list[str] = []
        self.cache: dict[tuple[str, str], Any] = {}  # the plan's memo (a mapped task's input)
        self.trace: str | None = None  # the trace its attempt spans join (tracing.py)
        # Tasks not terminal yet, kept up to date by mark() and add(): all_done() stays O(1)
        # with 10,000 instances.
        self.open = sum(task.status not in TASK_TERMINAL for task in self.tasks.values())
        self.dependents = shape.dependents()
        self.remaining = {
            name: sum(
                self.tasks[dep].status not in TASK_TERMINAL
                for dep in self.definition(name).dependencies
                if dep in self.tasks
            )
            for name in self.tasks
        }

    def definition(self, name: str) -> TaskShape:
        """The declared task a loaded task runs (an instance runs its mapped task's)."""
        task = self.tasks.get(name)
        return self.shape.tasks[task.parent if task is not None and task.parent else name]

    def add(self, task: TaskState) -> None:
        """A task row created while the execution runs (an instance of a mapped task)."""
        known = self.tasks.get(task.name)
        if known is None or known.status in TASK_TERMINAL:
            self.open += task.status not in TASK_TERMINAL
        elif task.status in TASK_TERMINAL:
            self.open -= 1
        self.tasks[task.name] = task
        self.remaining[task.name] = 0  # its mapped task started: its dependencies are done

    @property
    def uuid(self) -> UUID:
        """The execution id as a UUID (what handles and scopes carry), parsed once."""
        parsed = self.__dict__.get("_uuid")
        if parsed is None:
            parsed = self.__dict__["_uuid"] = UUID(self.id)
        return parsed

    def mark(self, name: str, status: str, error: str | None = None) -> list[str]:
        """Set a task's status; when it just became terminal, return the loaded dependents
        that have no unfinished dependency left and have not started."""
        task = self.tasks[name]
        was_terminal = task.status in TASK_TERMINAL
        task.status, task.error, task.claimed_by = status, error, None
        if was_terminal or status not in TASK_TERMINAL:
            return []
        self.open -= 1
        unblocked = []
        for child in self.dependents.get(name, ()):
            if child in self.remaining:
                self.remaining[child] -= 1
                if self.remaining[child] == 0 and self.tasks[child].status in UNSTARTED:
                    unblocked.append(child)
        return unblocked

    def all_done(self) -> bool:
        return self.open == 0

    def timed_tasks(self) -> set[str] | None:
        """The tasks with a retry time ahead; None when its definition has tasks that wait
        (a wait, a sub-workflow): they start waiting inside a dispatch, where only a scan of
        every task finds them. An in-process run adds each retry it records, so waiting for
        completions does not scan every task each time (a fan-out of 10,000 slow tasks waits
        about 10,000 times)."""
        if any(t.wait is not None or t.child is not None for t in self.shape.tasks.values()):
            return None
        return {name for name, task in self.tasks.items() if task.retry_at is not None}

    def track_readers(self) -> None:
        """Start letting go of the outputs nothing will read again (:meth:`release_outputs`):
        an in-process run, which holds every task, does; a worker's partial state cannot
        know, and keeps what it loaded. Outputs that the loaded statuses already make
        unread (a resumed run's) go now."""
        if any(name not in self.tasks for name in self.shape.tasks):
            return
        self._readers = {
            name: sum(self.tasks[r].status != COMPLETED for r in self.dependents[name])
            for name in self.shape.tasks
        }
        for name, task in self.shape.tasks.items():
            if not self._readers[name] and self.dependents[name] and task.compensate is None:
                self._drop(name)

    def release_outputs(self, completed: str) -> None:
        """``completed`` just completed (once tracked): let go of the outputs nothing can
        read any more, so that a run holds the outputs of its frontier, not every one (a
        10,000-task chain whose context grows held 10,000 contexts of up to 10,000 keys).

        An output is read for a dependent's input (while the dependent may still start or
        retry, and through a dependent that did not complete and passes its own input on),
        for the final context (the leaves', or the nearest completed tasks'), and for a
        compensation. So a task's output goes once every dependent of it has completed, and
        never a leaf's or one whose task has a compensation; an instance's goes as soon as
        it completed (its mapped task reads its instances' outputs from the database).
        ``_readers`` counts each task's dependents that have not completed."""
        readers = self._readers
        if readers is None:
            return
        parent = self.tasks[completed].parent
        if parent is not None:
            if self.shape.tasks[parent].compensate is None:
                self._drop(completed)
            return
        tasks = self.shape.tasks
        for dep in tasks[completed].dependencies:
            readers[dep] -= 1
            # Not a leaf (``completed`` depends on it), so its last reader just completed.
            if readers[dep] == 0 and tasks[dep].compensate is None:
                self._drop(dep)

    def _drop(self, name: str) -> None:
        if self.outputs.pop(name, None) is not None:
            self.released.add(name)

    def reload_outputs(self, outputs: dict[str, str]) -> None:
        """Every saved output, read again (after a reload); what nothing reads is let go
        again."""
        tracked = self._readers is not None
        self.outputs, self.released, self._readers = outputs, set(), None
        if tracked:
            self.track_readers()
