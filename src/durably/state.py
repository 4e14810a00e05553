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
from .statuses import TASK_TERMINAL, UNSTARTED
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
