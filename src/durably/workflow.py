"""Workflows: tasks and the dependencies between them (a DAG), checked and introspected."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any

from . import subworkflows
from .declaration import check_map, code_digest, wants_handle
from .exceptions import WorkflowDefinitionError
from .flow import Concurrency, RateLimit, check_task_limits, check_workflow_limit
from .merge import STRATEGIES, MergeFn
from .retry import MAX_SECONDS, NO_RETRY, RetryPolicy, is_seconds, shown
from .schedules import Schedule
from .triggers import TriggerRule, as_rule
from .versions import check_declared, shape_version
from .waits import Wait

TaskFn = Callable[..., Any]

_registry: dict[str, Workflow] = {}
_registry_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class Task:
    """A task as declared: its function, dependencies (in declaration order) and options."""

    name: str
    fn: TaskFn
    dependencies: tuple[str, ...]
    retry: RetryPolicy
    timeout: float | None
    trigger: TriggerRule
    merge: str | MergeFn
    compensate: Callable[..., Any] | None
    position: int
    is_async: bool
    wants_handle: bool
    wait: Wait | None = None
    map_over: str | None = None  # one instance per element of this input key (a list)
    max_parallel: int | None = None
    collect: str | None = None  # instances return values, gathered in a list at this key
    child: Workflow | None = None  # a sub-workflow task runs this workflow (SPEC §3.4)
    concurrency: int | None = None  # at most this many running at once, everywhere (flow.py)
    rate_limit: RateLimit | None = None


class Workflow:
    """A named DAG of tasks. Declaring a workflow of an existing name replaces the old one."""

    def __init__(
        self, name: str, *, version: str | None = None, concurrency: Concurrency | None = None
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise WorkflowDefinitionError("a workflow needs a non-empty str name")
        self.name = name
        # A declared version replaces the code hash, and bounds which executions it resumes.
        self.declared_version = check_declared(version)
        self.concurrency = check_workflow_limit(concurrency)
        self._shape: str | None = None
        self.tasks: dict[str, Task] = {}
        self._by_fn: dict[Any, str | None] = {}
        self._checked: tuple[str, ...] | None = None
        self._version: str | None = None
        self._dependents: dict[str, tuple[str, ...]] | None = None
        self._task_limits: bool | None = None
        # Schedule name -> its definition (:meth:`schedule`); workers fire them.
        self.schedules: dict[str, Schedule] = {}
        with _registry_lock:
            _registry[name] = self

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, tasks={list(self.tasks)})"

    # -- declaration ---------------------------------------------------------------------------

    def task(
        self,
        name: str | None = None,
        dependencies: Sequence[str | TaskFn] = (),
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        trigger: TriggerRule | str | None = None,
        merge: str | MergeFn | None = None,
        compensate: Callable[..., Any] | None = None,
        wait: Wait | None = None,
        map_over: str | None = None,
        max_parallel: int | None = None,
        collect: str | None = None,
        concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
    ) -> Callable[[TaskFn], TaskFn]:
        """Declare the decorated function as a task; it is returned unchanged."""
        if callable(name):
            raise WorkflowDefinitionError(
                f"write @{self.name}.task() with parentheses (got the function "
                f"{getattr(name, '__name__', name)!r} as the task name)"
            )
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise WorkflowDefinitionError("task name must be a non-empty str")
        if isinstance(dependencies, str) or not isinstance(dependencies, Sequence):
            raise WorkflowDefinitionError(
                "dependencies must be a list of task names or task functions"
            )
        deps = tuple(self._dependency_name(dep) for dep in dependencies)
        if len(set(deps)) != len(deps):
            raise WorkflowDefinitionError(f"dependencies list a task twice: {list(deps)}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise WorkflowDefinitionError("retry must be a RetryPolicy")
        if timeout is not None and not is_seconds(timeout, zero_ok=False):
            raise WorkflowDefinitionError(
                f"timeout must be a finite number of seconds > 0 and at most 365 days "
                f"({MAX_SECONDS} s), not {shown(timeout)}"
            )
        rule = as_rule(trigger)
        strategy = "latest_wins" if merge is None else merge
        if not callable(strategy) and strategy not in STRATEGIES:
            raise WorkflowDefinitionError(
                f"merge must be one of {', '.join(STRATEGIES)} or a callable, not {merge!r}"
            )
        if compensate is not None and not callable(compensate):
            raise WorkflowDefinitionError("compensate must be a callable taking (ctx)")
        check_map(map_over, max_parallel, collect, wait)
        check_task_limits(concurrency, rate_limit)
        if wait is not None and not isinstance(wait, Wait):
            raise WorkflowDefinitionError(
                f"wait must be delay(...), until(...) or event(...), not {wait!r}"
            )

        def decorate(fn: TaskFn) -> TaskFn:
            if not callable(fn):
                raise WorkflowDefinitionError("@task decorates a function")
            task_name = name or getattr(fn, "__name__", None)
            if not task_name:
                raise WorkflowDefinitionError("cannot derive a task name: pass name=")
            if task_name in self.tasks:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r} already has a task named {task_name!r}"
                )
            if task_name in deps:
                raise WorkflowDefinitionError(
                    f"task {task_name!r} depends on itself (cycle: {task_name} -> {task_name})"
                )
            self.tasks[task_name] = Task(
                name=task_name,
                fn=fn,
                dependencies=deps,
                retry=retry or NO_RETRY,
                timeout=float(timeout) if timeout is not None else None,
                trigger=rule,
                merge=strategy,
                compensate=compensate,
                position=len(self.tasks),
                is_async=inspect.iscoroutinefunction(fn),
                wants_handle=wants_handle(fn, f"task {task_name!r}"),
                wait=wait,
                map_over=map_over,
                max_parallel=max_parallel,
                collect=collect,
                concurrency=concurrency,
                rate_limit=rate_limit,
            )
            # A function declared under two names cannot stand for either as a dependency.
            self._by_fn[fn] = None if fn in self._by_fn else task_name
            self._checked = self._version = self._dependents = self._shape = None
            self._task_limits = None
            return fn

        return decorate

    def subworkflow(
        self,
        name: str,
        child: Workflow,
        dependencies: Sequence[str | TaskFn] = (),
        retry: RetryPolicy | None = None,
        trigger: TriggerRule | str | None = None,
        merge: str | MergeFn | None = None,
    ) -> Task:
        """Add a task that runs ``child`` as its own execution with the task's input, and
        completes with the child's final context. The child's failure fails the task (a
        ``retry`` policy runs a new child); cancelling this execution cancels the child; when
        this execution fails, a completed child's compensations run too."""
        if not isinstance(child, Workflow):
            raise WorkflowDefinitionError(
                f"subworkflow {name!r}: child must be a Workflow, not {type(child).__name__}"
            )
        if child is self or child.name == self.name:
            raise WorkflowDefinitionError(
                f"subworkflow {name!r}: workflow {self.name!r} cannot run itself as a child"
            )
        if not isinstance(name, str) or not name.strip():
            raise WorkflowDefinitionError("a subworkflow needs a non-empty str task name")
        declare = self.task(
            name=name, dependencies=dependencies, retry=retry, trigger=trigger, merge=merge
        )
        declare(subworkflows.adopt_outcome)
        task = dataclasses.replace(
            self.tasks[name], child=child, compensate=subworkflows.compensate_child
        )
        self.tasks[name] = task
        return task

    def schedule(
        self,
        cron: str,
        context: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        catch_up: str = "latest",
    ) -> Schedule:
        """Start an execution of this workflow at every slot of ``cron`` (5 fields, wall-clock
        time in ``timezone``), with ``context``. Workers fire the slots, once each across all
        of them; ``catch_up`` ("none", "latest" or "all") says what an outage's missed slots
        get (see :mod:`durably.schedules`). ``name`` defaults to the cron text."""
        schedule = Schedule.define(
            self.name, cron, context, name=name, timezone=timezone, catch_up=catch_up
        )
        if schedule.name in self.schedules:
            raise WorkflowDefinitionError(
                f"workflow {self.name!r} already has a schedule named {schedule.name!r}: "
                "pass name= to tell them apart"
            )
        self.schedules[schedule.name] = schedule
        return schedule

    def _dependency_name(self, dep: str | TaskFn) -> str:
        if isinstance(dep, str):
            return dep
        if callable(dep):
            try:
                found = self._by_fn[dep]
            except (KeyError, TypeError):
                pass
            else:
                if found is None:
                    raise WorkflowDefinitionError(
                        f"{getattr(dep, '__name__', dep)!r} is declared as several tasks: "
                        "name the dependency with a string"
                    )
                return found
            raise WorkflowDefinitionError(
                f"dependency {getattr(dep, '__name__', dep)!r} is not a task of workflow "
                f"{self.name!r}: declare it first, or name it with a string"
            )
        raise WorkflowDefinitionError(
            f"a dependency must be a task name or a task function, not {type(dep).__name__}"
        )

    # -- checks and introspection --------------------------------------------------------------

    def validate(self) -> None:
        """Raise WorkflowDefinitionError for an empty workflow, an unknown dependency or a
        cycle (of tasks, or of workflows running each other as sub-workflows)."""
        self.topological_order()
        self._check_children((self.name,))

    def _check_children(self, path: tuple[str, ...]) -> None:
        for task in self.tasks.values():
            if task.child is None:
                continue
            if task.child.name in path:
                cycle = " -> ".join((*path[path.index(task.child.name) :], task.child.name))
                raise WorkflowDefinitionError(f"sub-workflows run each other in a cycle: {cycle}")
            task.child.topological_order()
            task.child._check_children((*path, task.child.name))

    def children(self) -> list[Workflow]:
        """The workflows this one's sub-workflow tasks run, each once, depth first."""
        found: dict[str, Workflow] = {}
        for task in self.tasks.values():
            if task.child is not None and task.child.name not in found:
                found[task.child.name] = task.child
                for grandchild in task.child.children():
                    found.setdefault(grandchild.name, grandchild)
        return list(found.values())

    def topological_order(self) -> list[str]:
        """Every task, dependencies first; ties keep declaration order."""
        if self._checked is not None:
            return list(self._checked)
        if not self.tasks:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no tasks")
        for task in self.tasks.values():
            for dep in task.dependencies:
                if dep not in self.tasks:
                    close = difflib.get_close_matches(dep, self.tasks, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise WorkflowDefinitionError(
                        f"task {task.name!r} depends on unknown task {dep!r}{hint}"
                    )
        order: list[str] = []
        for level in self._levels():
            order.extend(level)
        self._checked = tuple(order)
        return order

    def _levels(self) -> list[list[str]]:
        remaining = {name: len(task.dependencies) for name, task in self.tasks.items()}
        dependents = self.dependents()
        level = [name for name, count in remaining.items() if count == 0]
        levels: list[list[str]] = []
        seen = 0
        while level:
            levels.append(level)
            seen += len(level)
            following: list[str] = []
            for name in level:
                for child in dependents[name]:
                    remaining[child] -= 1
                    if remaining[child] == 0:
                        following.append(child)
            level = sorted(following, key=lambda n: self.tasks[n].position)
        if seen != len(self.tasks):
            raise WorkflowDefinitionError(f"workflow {self.name!r} has a cycle: {self._cycle()}")
        return levels

    def _cycle(self) -> str:
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(name: str) -> list[str] | None:
            state[name] = 1
            stack.append(name)
            for dep in self.tasks[name].dependencies:
                if state.get(dep) == 1:
                    return [*stack[stack.index(dep) :], dep]
                if dep not in state and (found := visit(dep)):
                    return found
            stack.pop()
            state[name] = 2
            return None

        for name in self.tasks:
            if name not in state and (cycle := visit(name)):
                # Reverse: show the path in the direction work flows (dependency -> dependent).
                return " -> ".join(reversed(cycle))
        return "?"

    def levels(self) -> list[list[str]]:
        """Tasks grouped by depth: every task's dependencies are in earlier levels."""
        self.topological_order()
        return self._levels()

    def dependents(self) -> Mapping[str, Sequence[str]]:
        """Task name -> the tasks that depend on it, in declaration order (computed once per
        definition: the engine asks on every completion)."""
        if self._dependents is None:
            result: dict[str, list[str]] = {name: [] for name in self.tasks}
            for task in self.tasks.values():
                for dep in task.dependencies:
                    if dep in result:
                        result[dep].append(task.name)
            self._dependents = {name: tuple(children) for name, children in result.items()}
        return self._dependents

    def has_task_limits(self) -> bool:
        """Whether any task has a ``concurrency`` or a ``rate_limit`` (computed once per
        definition: every task row an execution inserts asks, so a scan per ask would make
        starting a 10,000-task execution quadratic)."""
        if self._task_limits is None:
            self._task_limits = any(
                task.concurrency is not None or task.rate_limit is not None
                for task in self.tasks.values()
            )
        return self._task_limits

    def roots(self) -> list[str]:
        return [name for name, task in self.tasks.items() if not task.dependencies]

    def leaves(self) -> list[str]:
        dependents = self.dependents()
        return [name for name in self.tasks if not dependents[name]]

    @property
    def version(self) -> str:
        """The declared version, else a hash of the task names, their dependencies and
        their code."""
        if self.declared_version is not None:
            return self.declared_version
        if self._version is None:
            self._version = self._hash()
        return self._version

    @property
    def shape_version(self) -> str:
        """What an execution needs of a definition to resume on it (:mod:`durably.versions`):
        the same task names and dependencies, and the same declared version if any."""
        if self._shape is None:
            self._shape = shape_version(self.name, self.tasks.values(), self.declared_version)
        return self._shape

    def _hash(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for task in self.tasks.values():
            h.update(f"\0{task.name}\0{','.join(task.dependencies)}\0".encode())
            if task.wait is not None:
                h.update(repr(sorted(task.wait.to_json().items())).encode())
            if task.map_over is not None:
                h.update(f"\0map:{task.map_over}:{task.max_parallel}:{task.collect}".encode())
            if task.child is not None:
                h.update(f"\0child:{task.child.name}@{task.child.version}".encode())
            code = getattr(task.fn, "__code__", None)
            if isinstance(code, CodeType):
                code_digest(code, h)
            else:
                h.update(getattr(task.fn, "__qualname__", repr(task.fn)).encode())
        return h.hexdigest()[:16]


def registered(name: str) -> Workflow | None:
    """The workflow of that name declared last in this process, if any."""
    return _registry.get(name)


def workflows_in(values: Iterable[Any]) -> list[Workflow]:
    return [value for value in values if isinstance(value, Workflow)]
