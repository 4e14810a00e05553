"""How each task changed the context: the input it received, rebuilt from its dependencies'
saved outputs (SPEC §3.1), and what its output added, changed and removed.

``durably show`` and the demo present these; :mod:`durably.views` and
:mod:`durably.json_views` render them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .engine import Engine
from .plan import input_for
from .results import ExecutionResult
from .runtime import patches_of, received_of
from .state import ExecutionState, Shape


@dataclass
class Diff:
    """How a task's output differs from the input it received."""

    added: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def between(cls, before: Mapping[str, Any], after: Mapping[str, Any]) -> Diff:
        diff = cls()
        for key, value in after.items():
            if key not in before:
                diff.added[key] = value
            elif not _same(before[key], value):
                diff.changed[key] = (before[key], value)
        diff.removed = {key: value for key, value in before.items() if key not in after}
        return diff

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


@dataclass
class TaskInput:
    """What a task received, and where it came from (``basis`` is for people)."""

    data: dict[str, Any]
    basis: str


def task_inputs(engine: Engine, result: ExecutionResult) -> tuple[dict[str, TaskInput], bool]:
    """Each task's input, rebuilt by the plan's §3.1 rule from the definition the execution
    ran (exact), else approximated by the previous task's output in declaration order."""
    snapshot = engine.snapshot(result.execution_id)
    shape = engine.shape(snapshot)
    initial = codec.loads(snapshot.initial or "{}")
    if shape is None:
        return _approximate(result, initial), False
    state = ExecutionState(
        shape,
        snapshot.execution.id,
        [task.state() for task in snapshot.tasks],
        snapshot.outputs,
        snapshot.initial,
        patches_of(snapshot.tasks),
        received_of(snapshot.tasks),
    )
    inputs: dict[str, TaskInput] = {}
    for name in result.tasks:
        try:
            data = input_for(state, name)
        except Exception:  # a merge callable not imported, or one that fails: no input shown
            continue
        inputs[name] = TaskInput(data, _basis(shape, state, name))
    return inputs, True


def _basis(shape: Shape, state: ExecutionState, name: str) -> str:
    loaded = state.tasks.get(name)
    if loaded is not None and loaded.parent is not None:
        return f"{loaded.parent}'s input, without its list (item {loaded.index})"
    task = shape.tasks[name]
    deps = task.dependencies
    if not deps:
        basis = "the initial context"
    else:
        parts = [dep if dep in state.outputs else f"{dep}'s input" for dep in deps]
        basis = " + ".join(parts)
        if len(deps) > 1:
            how = task.merge if isinstance(task.merge, str) else "by callable"
            basis += f", merged {how}"
    patch = state.patches.get(name)
    if patch:
        basis += f", with --set {', '.join(patch)}"
    received = state.received.get(name)
    if received:
        basis += f", with the event payload at {', '.join(received)}"
    return basis


def _approximate(result: ExecutionResult, initial: dict[str, Any]) -> dict[str, TaskInput]:
    inputs: dict[str, TaskInput] = {}
    previous: tuple[str, dict[str, Any]] | None = None
    for name, task in result.tasks.items():
        if previous is None:
            inputs[name] = TaskInput(initial, "the initial context")
        else:
            inputs[name] = TaskInput(previous[1], f"{previous[0]} (the previous task)")
        if task.context is not None:
            previous = (name, dict(task.context))
    return inputs


def task_diffs(
    engine: Engine, result: ExecutionResult
) -> tuple[dict[str, Diff], dict[str, TaskInput], bool]:
    """The diff of each task that saved an output, the tasks' inputs, and whether those were
    rebuilt from the dependencies (exact) or not."""
    inputs, exact = task_inputs(engine, result)
    diffs = {
        name: Diff.between(inputs[name].data, dict(task.context))
        for name, task in result.tasks.items()
        if task.context is not None and name in inputs
    }
    return diffs, inputs, exact
