"""How an execution ends, pure: its outcome (status and a short error), the order its
compensations run in, what ``retry`` and ``fork`` run again, and a mapped task's output.

Like :mod:`durably.plan`, nothing here touches the database, a thread or the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import codec
from .merge import MergeFn, latest_wins, merge
from .state import ExecutionState, Shape, TaskState
from .statuses import (
    ABANDONED,
    COMPLETED,
    FAILED,
    FAILED_LIKE,
    SKIPPED,
    UPSTREAM_FAILED,
)

RERUN = frozenset({FAILED, SKIPPED, UPSTREAM_FAILED, ABANDONED})
# An execution's error lists this many failed tasks, then says how many more there are.
MAX_LISTED_FAILURES = 3
MAX_ERROR_CHARS = 500


def execution_outcome(state: ExecutionState) -> tuple[str, str | None]:
    """``(status, error)`` once every task is terminal. The error names the first tasks that
    failed themselves (each message capped), then counts the rest: 60 failed tasks make one
    short line, not 30 KB."""
    failed_like = [t for t in state.tasks.values() if t.status in FAILED_LIKE]
    if not failed_like:
        return COMPLETED, None
    order = {name: i for i, name in enumerate(state.shape.tasks)}

    def place(task: TaskState) -> tuple[int, int]:  # an instance sorts within its task
        return order.get(
            task.parent or task.name, len(order)
        ), -1 if task.index is None else task.index

    causes = sorted((t for t in failed_like if t.status != UPSTREAM_FAILED), key=place) or sorted(
        failed_like, key=place
    )
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


def compensation_order(state: ExecutionState, *, undo: bool = False) -> list[str]:
    """Completed tasks with a compensation not yet run, in reverse topological order; none
    unless the execution failed (or, ``undo``, its parent did: a completed child is undone
    whole)."""
    if not undo and not any(t.status in FAILED_LIKE for t in state.tasks.values()):
        return []
    instances: dict[str, list[str]] = {}
    for task in state.tasks.values():
        if task.parent is not None:
            instances.setdefault(task.parent, []).append(task.name)
    order = []
    for name in reversed(state.shape.topological_order()):
        if state.shape.tasks[name].compensate is None or name not in state.tasks:
            continue
        # A mapped task is undone instance by instance, the last one first.
        names = sorted(instances.get(name, []), key=_index_of(state), reverse=True)
        for each in names or [name]:
            task = state.tasks[each]
            if task.status == COMPLETED and task.compensation not in (COMPLETED, FAILED):
                order.append(each)
    return order


def _index_of(state: ExecutionState) -> Any:
    return lambda name: state.tasks[name].index or 0


def mapped_output(
    shape_task: Any, parent_input: dict[str, Any], outputs: list[str],
    rule: str | MergeFn = "latest_wins",
) -> dict[str, Any]:  # fmt: skip
    """A mapped task's output from its instances' (codec text, in index order): their
    outputs merged in index order by ``rule`` (its dependents', :func:`dependents_merge`),
    as if each instance were a dependency, over its input; or with ``collect`` the list of
    their values at that key."""
    data = dict(parent_input)
    if shape_task.collect is not None:
        key = shape_task.collect
        data[key] = [codec.loads(value).get(key) for value in outputs]
        return data
    instances = [(f"{shape_task.name}[{i}]", codec.loads(v)) for i, v in enumerate(outputs)]
    if rule == "latest_wins":
        return latest_wins([("", data), *instances])
    return {**data, **merge(rule, instances)}


def dependents_merge(shape: Shape, name: str) -> str | MergeFn:
    """The merge rule a mapped task's instances are merged by: its dependents' rule when
    they agree on one (each dependent receives one stored output), else latest_wins."""
    merges = [shape.tasks[d].merge for d in shape.dependents()[name]]
    rules = {r if isinstance(r, str) else id(r): r for r in merges}
    return next(iter(rules.values())) if len(rules) == 1 else "latest_wins"


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
            if task.parent is not None:
                # A failed instance runs again alone; its completed siblings are kept, and
                # its mapped task and what follows it run (finish) again.
                again.add(name)
                again |= downstream(shape, task.parent)
            else:
                again |= downstream(shape, name)
    return again


def reusable(shape: Shape, tasks: Mapping[str, TaskState], from_task: str) -> set[str]:
    """``fork``: the completed tasks whose output the new execution reuses: not
    ``from_task`` or after it, not compensated, and not after a compensated task."""
    stale = downstream(shape, from_task)
    for name in compensated(tasks):
        stale |= downstream(shape, name)
    return {name for name, t in tasks.items() if t.status == COMPLETED and name not in stale}
