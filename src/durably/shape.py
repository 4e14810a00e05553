"""An execution's shape as stored with its tasks: enough for :mod:`durably.plan` to rebuild
each task's input (``durably show``, the dashboard) when the workflow is not imported."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import waits
from .records import TaskRecord
from .retry import NO_RETRY, RetryPolicy
from .triggers import TriggerRule, all_success
from .waits import Wait


@dataclass(frozen=True)
class StoredTask:
    name: str
    dependencies: tuple[str, ...]
    merge: str  # "callable" when the workflow used one: such an input cannot be rebuilt
    compensate: Any = None
    trigger: TriggerRule = all_success
    retry: RetryPolicy = NO_RETRY
    wait: Wait | None = None
    map_over: str | None = None
    max_parallel: int | None = None
    collect: str | None = None
    child: str | None = None  # a sub-workflow task's workflow name


class StoredShape:
    """Task names, dependencies and merge rules, in declaration order."""

    def __init__(self, tasks: Sequence[StoredTask]) -> None:
        self.tasks: dict[str, StoredTask] = {task.name: task for task in tasks}
        children: dict[str, list[str]] = {name: [] for name in self.tasks}
        for task in tasks:
            for dep in task.dependencies:
                if dep in children:
                    children[dep].append(task.name)
        self._dependents = {name: tuple(c) for name, c in children.items()}

    @classmethod
    def of(cls, records: Sequence[TaskRecord]) -> StoredShape | None:
        """The shape stored with these tasks; None for rows that predate stored dependencies."""
        tasks = []
        for record in records:
            if record.map_parent is not None:
                continue  # an instance of a mapped task, not a declared task
            deps = record.configuration.get("dependencies")
            if not isinstance(deps, list):
                return None
            tasks.append(
                StoredTask(
                    name=record.name,
                    dependencies=tuple(str(dep) for dep in deps),
                    merge=str(record.configuration.get("merge") or "latest_wins"),
                    compensate=True if record.configuration.get("compensate") else None,
                    wait=waits.from_json(record.configuration.get("wait")),
                    child=record.configuration.get("child"),
                    **_mapping(record.configuration.get("map")),
                )
            )
        return cls(tasks) if tasks else None

    def dependents(self) -> Mapping[str, Sequence[str]]:
        return self._dependents

    def topological_order(self) -> list[str]:
        remaining = {name: len(task.dependencies) for name, task in self.tasks.items()}
        order: list[str] = []
        level = [name for name, count in remaining.items() if count == 0]
        while level:
            order.extend(level)
            following = []
            for name in level:
                for child in self._dependents[name]:
                    remaining[child] -= 1
                    if remaining[child] == 0:
                        following.append(child)
            level = following
        return order


def _mapping(stored: object) -> dict[str, Any]:
    if not isinstance(stored, dict):
        return {}
    return {
        "map_over": stored.get("over"),
        "max_parallel": stored.get("max_parallel"),
        "collect": stored.get("collect"),
    }
