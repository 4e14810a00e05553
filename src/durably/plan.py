"""The execution state machine, pure: from an execution's state to its next transitions.

Nothing here touches the database, a thread or the wall clock. The runner, the worker,
``durably show`` and the dashboard all ask these functions the same questions, so a rule
lives once:

- what a task receives (:func:`input_for`, SPEC §3.1), and the final context;
- what happens to a task whose dependencies are all done (:func:`decide`: start it, settle it
  as ``skipped`` / ``upstream_failed`` / ``failed`` without running, or wait for its retry
  time), and the cascade of such decisions (:func:`advance`);
- what an attempt's outcome means (:func:`attempt_outcome`: completed, retry at, failed);
- the execution's outcome, the compensation order, and what ``retry`` and ``fork`` re-run.

An :class:`ExecutionState` may hold every task of an execution (the runner) or only the tasks
one transition touches (a worker); the functions need only those.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import codec
from .exceptions import (
    ContextConflictError,
    ContextError,
    ContextSerializationError,
    ContextTooLargeError,
    NonRetryable,
    TaskInterrupted,
    TaskReturnError,
)
from .merge import latest_wins, merge
from .retry import RetryPolicy

# The state types are the plan's vocabulary: importable from here too.
from .state import ExecutionState, IncompleteState, Shape, TaskShape, TaskState  # noqa: F401
from .statuses import (
    FAILED,
    NOT_STARTED,
    UNSTARTED,
    WAITING,
)
from .subworkflows import CHILD_OUTCOME
from .triggers import implied, verdict
from .waits import Event

# Errors no retry can fix: the task fails at once (SPEC §3, "fail it without retry").
PERMANENT = (
    NonRetryable,
    ContextSerializationError,
    ContextTooLargeError,
    ContextConflictError,
    TaskReturnError,
    TaskInterrupted,
)
# Stored times are whole microseconds, rounded: one read back may be up to half a microsecond
# after the clock reading it came from. A time within this of now is due now, not never.
TIME_RESOLUTION = 1e-6


# -- context flow (SPEC §3.1) -------------------------------------------------------------------


def input_for(state: ExecutionState, name: str) -> dict[str, Any]:
    """The context a task receives: a fresh copy every time.

    A root gets the initial context; a task with dependencies their outputs merged in
    declaration order by its merge rule. A dependency that did not complete (a task run by
    ``all_done`` or ``one_failed``) passes on the context it received, so a failure handler
    still sees what came before it. A fork's patch goes on top. An instance of a mapped task
    gets its task's input without the list mapped over (its element is ``handle.item``), so
    that 10,000 instances do not each store the whole list.
    """
    loaded = state.tasks.get(name)
    if loaded is not None and loaded.parent is not None:
        return codec.loads(_instance_input(state, loaded.parent))
    task = state.shape.tasks[name]
    if not task.dependencies:
        if state.initial is None:
            raise IncompleteState(f"the initial context of execution {state.id} is not loaded")
        data = codec.loads(state.initial)
    else:
        data = merge(task.merge, [(dep, _passed_on(state, dep)) for dep in task.dependencies])
    patch = state.patches.get(name)
    if patch:
        data.update(copy.deepcopy(patch))  # a fresh copy: an attempt may change it
    received = state.received.get(name)
    if received and task.child is None:  # a sub-workflow task's are its child's outcome
        data.update(copy.deepcopy(received))  # an event's payload, at its wait's key
    return data


def child_outcome(state: ExecutionState, name: str) -> dict[str, Any] | None:
    """A sub-workflow task's child execution's outcome, once it arrived (and until the
    attempt that takes it is recorded): ``{"execution_id", "status", "context", "error"}``."""
    outcome = state.received.get(name, {}).get(CHILD_OUTCOME)
    return outcome if isinstance(outcome, dict) else None


def _instance_input(state: ExecutionState, parent: str) -> str:
    """The input every instance of ``parent`` shares, encoded once per execution in memory
    (each instance decodes its own copy: 10,000 instances do not decode the list 10,000
    times)."""
    key = ("instance_input", parent)
    encoded = state.cache.get(key)
    if encoded is None:
        data = input_for(state, parent)
        items = data.pop(state.shape.tasks[parent].map_over or "", None)
        state.cache[("items", parent)] = items
        encoded = state.cache[key] = codec.dumps(data)
    return str(encoded)


def item_of(state: ExecutionState, name: str) -> Any:
    """An instance's element of the list its mapped task maps over (a fresh copy)."""
    task = state.tasks[name]
    if task.parent is None or task.index is None:
        return None
    _instance_input(state, task.parent)
    items = state.cache[("items", task.parent)]
    return copy.deepcopy(items[task.index])


def _passed_on(state: ExecutionState, name: str) -> dict[str, Any]:
    saved = state.outputs.get(name)
    if saved is not None:
        return codec.loads(saved)
    if name in state.released:  # its dependents all completed: no input is built from it
        raise IncompleteState(f"the output of task {name!r} was released from memory")
    return input_for(state, name)


def needs_whole_execution(state: ExecutionState, name: str) -> bool:
    """Whether building ``name``'s input needs more than its dependencies' outputs (a
    dependency that did not complete passes on its own input)."""
    return any(dep not in state.outputs for dep in state.definition(name).dependencies)


def final_sources(state: ExecutionState) -> list[str]:
    """The tasks whose outputs make the final context: the leaves, or when a leaf did not
    complete the completed tasks nearest to it; none: the initial context is the final."""
    saved = state.released.union(state.outputs)  # released: saved, no longer held
    return [
        name
        for name in state.shape.tasks
        if name in saved and not any(child in saved for child in state.dependents[name])
    ]


def final_context(state: ExecutionState) -> dict[str, Any]:
    """The leaves' outputs merged in declaration order (rule 8), see :func:`final_sources`."""
    frontier = final_sources(state)
    if not frontier:
        return codec.loads(state.initial or "{}")
    return latest_wins([(name, codec.loads(state.outputs[name])) for name in frontier])


# -- deciding tasks -----------------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    """Run the task's next attempt with this input."""

    name: str
    input: dict[str, Any]


@dataclass(slots=True)
class Settle:
    """Finish the task without running it (skipped, upstream_failed, or failed)."""

    name: str
    status: str
    reason: str | None


@dataclass(slots=True)
class WaitFor:
    """The task runs after its wait: until ``wake_at`` (a timer), or until ``event`` arrives
    (``wake_at``: its timeout, or None). The payload lands in its input at ``key``."""

    name: str
    wake_at: float | None
    event: str | None = None
    key: str | None = None


@dataclass(slots=True)
class Expand:
    """The mapped task fans out into ``count`` instances (none: it completes with ``input``)."""

    name: str
    input: dict[str, Any]
    count: int


@dataclass(slots=True)
class Spawn:
    """The sub-workflow task starts its child execution with this input, and waits for it."""

    name: str
    input: dict[str, Any]


@dataclass(slots=True)
class Defer:
    """The task runs, but not before its retry time."""

    name: str
    until: float


Decision = Start | Settle | Defer | WaitFor | Expand | Spawn


def describe(error: BaseException) -> str:
    """An error as stored and shown: ``Type: message``, always valid text (a message holding
    a lone surrogate, e.g. a filename decoded with surrogateescape, is escaped)."""
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not hide the failure itself
        message = object.__repr__(error)
    text = f"{type(error).__name__}: {message}"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def decide(state: ExecutionState, name: str, now: float) -> Decision:
    """What happens to a task whose dependencies are all done."""
    task = state.definition(name)
    deps = [(dep, state.tasks[dep].status) for dep in task.dependencies]
    rule = task.trigger
    try:
        # Decide on statuses alone when the rule allows: a task not run needs no input.
        check = verdict(rule, deps, {}) if not rule.uses_context else implied(rule, deps)
        if not check.held:
            return Settle(name, check.status, f"trigger {check.reason}")
        data = input_for(state, name)
        if rule.uses_context:
            check = verdict(rule, deps, data)
            if not check.held:
                return Settle(name, check.status, f"trigger {check.reason}")
    except IncompleteState:
        raise  # a partial state missing what it needs: the caller's bug, not the task's
    except Exception as exc:  # a conflict, a bad condition, a user merge callable
        return Settle(name, FAILED, describe(exc))
    retry_at = state.tasks[name].retry_at
    if retry_at is not None and retry_at > now + TIME_RESOLUTION:
        return Defer(name, retry_at)
    wait = task.wait
    if wait is not None and not state.tasks[name].waited:
        if isinstance(wait, Event):
            return WaitFor(name, wait.wake_at(now), wait.name, wait.context_key)
        return WaitFor(name, wait.wake_at(now))
    if task.map_over is not None and state.tasks[name].parent is None:
        return expand(name, task.map_over, data)
    if task.child is not None and child_outcome(state, name) is None:
        return Spawn(name, data)
    return Start(name, data)


def expand(name: str, key: str, data: dict[str, Any]) -> Decision:
    """A mapped task fans out over ``data[key]``: one instance per element; an empty list
    completes it with its input; anything else but a list or tuple fails it."""
    items = data.get(key)
    if not isinstance(items, list | tuple):
        found = "absent" if key not in data else f"a {type(items).__name__}"
        return Settle(name, FAILED, f"map_over {key!r}: the input's {key!r} is {found}, not a list")
    return Expand(name, data, len(items))


def advance(state: ExecutionState, unblocked: Iterable[str], now: float) -> list[Decision]:
    """Decide every unblocked task, and in turn the tasks that a settled one unblocks.

    Settled tasks are marked in ``state``; the caller records every decision."""
    decisions: list[Decision] = []
    queue = list(unblocked)
    # Iterated while it grows (in order, first in first out), never popped from its head:
    # that is O(n) on a list, and a root may unblock 10,000 dependents at once.
    for name in queue:
        if state.tasks[name].status not in UNSTARTED:
            continue
        decision = decide(state, name, now)
        decisions.append(decision)
        if isinstance(decision, Settle):
            queue.extend(state.mark(name, decision.status, decision.reason))
    return decisions


def startable(state: ExecutionState, now: float) -> list[str]:
    """Unstarted tasks with every dependency done and no retry time ahead, in declaration
    order."""
    return [
        name
        for name, task in state.tasks.items()
        if task.status in UNSTARTED
        and state.remaining[name] == 0
        and (task.retry_at is None or task.retry_at <= now + TIME_RESOLUTION)
        # An instance not started yet waits for a slot under its task's max_parallel.
        and not (task.parent is not None and task.status == NOT_STARTED)
    ]


def due(state: ExecutionState, now: float) -> list[str]:
    """Waiting tasks whose time came: a timer that is over (it runs), or an event wait past
    its timeout (that attempt fails with WaitTimeout)."""
    return [
        name
        for name, task in state.tasks.items()
        if task.status == WAITING
        and task.wake_at is not None
        and task.wake_at <= now + TIME_RESOLUTION
    ]


def next_wake(state: ExecutionState, names: Iterable[str] | None = None) -> float | None:
    """The earliest time something is due: a retry, a timer, an event wait's timeout;
    among ``names`` when the caller knows which tasks may have one (else every task)."""
    tasks = state.tasks.values() if names is None else (state.tasks[n] for n in names)
    times = [
        t.retry_at if t.status in UNSTARTED else t.wake_at
        for t in tasks
        if t.status in UNSTARTED or t.status == WAITING
    ]
    found = [moment for moment in times if moment is not None]
    return min(found) if found else None


def waiting(state: ExecutionState) -> bool:
    return any(task.status == WAITING for task in state.tasks.values())


def next_retry(state: ExecutionState) -> float | None:
    """The earliest retry time among tasks waiting for one."""
    times = [
        t.retry_at for t in state.tasks.values() if t.status in UNSTARTED and t.retry_at is not None
    ]
    return min(times) if times else None


# -- attempts -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Completed:
    value: str  # the output context as stored


@dataclass(slots=True)
class RetryAt:
    at: float
    error: str


@dataclass(slots=True)
class Failed:
    error: str


Outcome = Completed | RetryAt | Failed


def attempt_outcome(
    policy: RetryPolicy,
    attempt: int,
    output: dict[str, Any] | None,
    error: BaseException | None,
    now: float,
    max_bytes: int | None,
) -> Outcome:
    """What an attempt's result means: its output encoded, a retry time, or a failure.
    An output that cannot be stored fails the task (never the process saving it)."""
    if error is None:
        try:
            return Completed(codec.dumps(output or {}, max_bytes=max_bytes))
        except Exception as exc:
            if not isinstance(exc, ContextError):
                exc = ContextSerializationError(f"cannot store the output: {describe(exc)}")
            error = exc
    message = describe(error)
    if not isinstance(error, PERMANENT) and policy.should_retry(error, attempt):
        return RetryAt(now + policy.delay(attempt + 1), message)
    return Failed(message)
