"""Where a context is being used (:class:`ExecutionScope`): the execution and, inside a task,
the task. ``ctx.scope`` returns it; a saga step's context has the saga execution's uuid and the
step path as its task name.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import UUID

__all__ = ["ExecutionScope"]


class ExecutionScope:
    """Where a context is being used: the execution and, inside a task, the task.

    Immutable. The task's id may be given as text and becomes a UUID when first read: every
    task attempt gets a scope, and few tasks ever look at it."""

    __slots__ = ("_task", "execution_id", "task_name")
    execution_id: UUID
    task_name: str
    _task: UUID | str | None

    def __init__(
        self, execution_id: UUID, task_execution_id: UUID | str | None, task_name: str
    ) -> None:
        object.__setattr__(self, "execution_id", execution_id)
        object.__setattr__(self, "_task", task_execution_id)
        object.__setattr__(self, "task_name", task_name)

    @property
    def task_execution_id(self) -> UUID | None:
        task = self._task
        if isinstance(task, str):
            task = UUID(task)
            object.__setattr__(self, "_task", task)
        return task

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple[UUID, UUID | None, str]:
        return (self.execution_id, self.task_execution_id, self.task_name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExecutionScope):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ExecutionScope(execution_id={self.execution_id!r}, "
            f"task_execution_id={self.task_execution_id!r}, task_name={self.task_name!r})"
        )
