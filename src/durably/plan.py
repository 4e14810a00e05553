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
from collections.abc import Iterable, Mapping
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
    ABANDONED,
    COMPLETED,
    FAILED,
    FAILED_LIKE,
    SKIPPED,
    UNSTARTED,
    UPSTREAM_FAILED,
)
from .triggers import implied, verdict

# Errors no retry can fix: the task fails at once (SPEC §3, "fail it without retry").
PERMANENT = (
    NonRetryable,
    ContextSerializationError,
    ContextTooLargeError,
    ContextConflictError,
    TaskReturnError,
    TaskInterrupted,
)
RERUN = frozenset({FAILED, SKIPPED, UPSTREAM_FAILED, ABANDONED})
# An execution's error lists this many failed tasks, then says how many more there are.
MAX_LISTED_FAILURES = 3
MAX_ERROR_CHARS = 500


# -- context flow (SPEC §3.1) -------------------------------------------------------------------


def input_for(state: ExecutionState, name: str) -> dict[str, Any]:
    """The context a task receives: a fresh copy every time.

    A root gets the initial context; a task with dependencies their outputs merged in
    declaration order by its merge rule. A dependency that did not complete (a task run by
    ``all_done`` or ``one_failed``) passes on the context it received, so a failure handler
    still sees what came before it. A fork's patch goes on top.
    """
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
    return data


def _passed_on(state: ExecutionState, name: str) -> dict[str, Any]:
    saved = state.outputs.get(name)
    return codec.loads(saved) if saved is not None else input_for(state, name)


def needs_whole_execution(state: ExecutionState, name: str) -> bool:
    """Whether building ``name``'s input needs more than its dependencies' outputs (a
    dependency that did not complete passes on its own input)."""
    return any(dep not in state.outputs for dep in state.shape.tasks[name].dependencies)


def final_context(state: ExecutionState) -> dict[str, Any]:
    """The leaves' outputs merged in declaration order (rule 8). When a leaf did not
    complete, the outputs of the completed tasks nearest to it stand in for it."""
    frontier = [
        name
        for name in state.shape.tasks
        if name in state.outputs
        and not any(child in state.outputs for child in state.dependents[name])
    ]
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
class Defer:
    """The task runs, but not before its retry time."""

    name: str
    until: float


Decision = Start | Settle | Defer


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
    task = state.shape.tasks[name]
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
    if retry_at is not None and retry_at > now:
        return Defer(name, retry_at)
    return Start(name, data)


def advance(state: ExecutionState, unblocked: Iterable[str], now: float) -> list[Decision]:
    """Decide every unblocked task, and in turn the tasks that a settled one unblocks.

    Settled tasks are marked in ``state``; the caller records every decision."""
    decisions: list[Decision] = []
    queue = list(unblocked)
    while queue:
        name = queue.pop(0)
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
        for name in state.shape.tasks
        if name in state.tasks
        and (task := state.tasks[name]).status in UNSTARTED
        and state.remaining[name] == 0
        and (task.retry_at is None or task.retry_at <= now)
    ]


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


# -- the execution ------------------------------------------------------------------------------


def execution_outcome(state: ExecutionState) -> tuple[str, str | None]:
    """``(status, error)`` once every task is terminal. The error names the first tasks that
    failed themselves (each message capped), then counts the rest: 60 failed tasks make one
    short line, not 30 KB."""
    failed_like = [t for t in state.tasks.values() if t.status in FAILED_LIKE]
    if not failed_like:
        return COMPLETED, None
    order = {name: i for i, name in enumerate(state.shape.tasks)}
    causes = sorted(
        (t for t in failed_like if t.status != UPSTREAM_FAILED), key=lambda t: order[t.name]
    ) or sorted(failed_like, key=lambda t: order[t.name])
    parts = [
        f"task {t.name!r} {t.status}: {_capped(t.error or '')}"
        for t in causes[:MAX_LISTED_FAILURES]
    ]
    if len(causes) > MAX_LISTED_FAILURES:
        parts.append(f"and {len(causes) - MAX_LISTED_FAILURES} more failed")
    downstream = len(failed_like) - len(causes)
    if downstream:
        parts.append(f"{downstream} task{'s' if downstream > 1 else ''} upstream_failed")
    return FAILED, "; ".join(parts)


def _capped(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[:MAX_ERROR_CHARS] + f"… ({len(text) - MAX_ERROR_CHARS} more characters)"


def compensation_order(state: ExecutionState) -> list[str]:
    """Completed tasks with a compensation not yet run, in reverse topological order; none
    unless the execution failed."""
    if not any(t.status in FAILED_LIKE for t in state.tasks.values()):
        return []
    return [
        name
        for name in reversed(state.shape.topological_order())
        if state.shape.tasks[name].compensate is not None
        and state.tasks[name].status == COMPLETED
        and state.tasks[name].compensation not in (COMPLETED, FAILED)
    ]


def downstream(shape: Shape, start: str) -> set[str]:
    """``start`` and every task that depends on it, directly or not."""
    dependents = shape.dependents()
    seen = {start}
    stack = [start]
    while stack:
        for child in dependents[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def compensated(tasks: Mapping[str, TaskState]) -> list[str]:
    """Tasks whose compensation ran: their effect was undone, so their output is stale."""
    return [name for name, t in tasks.items() if t.compensation == COMPLETED]


def to_rerun(shape: Shape, tasks: Mapping[str, TaskState]) -> set[str]:
    """``retry``: the failed, skipped, upstream_failed and abandoned tasks, the compensated
    ones, and everything downstream of them. Completed, uncompensated work is kept."""
    again: set[str] = set()
    for name, task in tasks.items():
        if task.status in RERUN or task.compensation == COMPLETED:
            again |= downstream(shape, name)
    return again


def reusable(shape: Shape, tasks: Mapping[str, TaskState], from_task: str) -> set[str]:
    """``fork``: the completed tasks whose output the new execution reuses: not
    ``from_task`` or after it, not compensated, and not after a compensated task."""
    stale = downstream(shape, from_task)
    for name in compensated(tasks):
        stale |= downstream(shape, name)
    return {name for name, t in tasks.items() if t.status == COMPLETED and name not in stale}
