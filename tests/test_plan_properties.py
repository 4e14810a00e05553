"""Properties of the pure execution core over random DAGs and random completion orders
(SPEC §3.1 rules 4 and 8, §3.2): no database, no Engine, no threads."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from durably import codec
from durably.outcomes import (
    execution_outcome,
)
from durably.plan import (
    ExecutionState,
    Settle,
    Start,
    TaskState,
    advance,
    final_context,
    input_for,
    startable,
)
from durably.statuses import (
    COMPLETED,
    FAILED,
    FAILED_LIKE,
    NOT_STARTED,
    RUNNING,
    TASK_TERMINAL,
    UNSTARTED,
)
from durably.workflow import Workflow

NOW = 1_000_000.0
STATUS_RULES = (
    "all_success",
    "all_done",
    "one_failed",
    "one_success",
    "none_failed",
    "none_failed_min_one_success",
)
EXAMPLES = settings(max_examples=200, deadline=None)


@st.composite
def dags(draw: st.DrawFn, with_triggers: bool = False) -> tuple[Workflow, dict[str, list[str]]]:
    """A random DAG: task i depends on a random subset of tasks 0..i-1, listed in a random
    order; the tasks are declared in a random order too (a dependency may be declared after
    its dependent)."""
    n = draw(st.integers(min_value=1, max_value=9))
    names = [f"t{i}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        chosen = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        deps[name] = draw(st.permutations(chosen))
    declared = draw(st.permutations(names))
    wf = Workflow(f"wf_{uuid.uuid4().hex[:10]}")
    for name in declared:
        trigger = draw(st.sampled_from(STATUS_RULES)) if with_triggers else None

        def fn(ctx: Any) -> None:
            return None

        wf.task(name=name, dependencies=deps[name], trigger=trigger)(fn)
    return wf, deps


def new_state(wf: Workflow, initial: dict[str, Any]) -> ExecutionState:
    tasks = [TaskState(id=str(uuid.uuid4()), name=name, status=NOT_STARTED) for name in wf.tasks]
    return ExecutionState(wf, "exec-id", tasks, initial=codec.dumps(initial))


def ancestors(deps: dict[str, list[str]], name: str) -> set[str]:
    seen: set[str] = set()
    stack = list(deps[name])
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.add(dep)
            stack.extend(deps[dep])
    return seen


class Run:
    """Drives a state like the runner does, checking the invariants at every step; with
    ``release``, letting go of the outputs nothing reads again as the runner does."""

    def __init__(self, wf: Workflow, initial: dict[str, Any], release: bool = False) -> None:
        self.wf = wf
        self.state = new_state(wf, initial)
        self.release = release
        if release:
            self.state.track_readers()
        self.running: list[str] = []
        self.inputs: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.completion_order: list[str] = []
        self.record(advance(self.state, startable(self.state, NOW), NOW))

    def record(self, decisions: list[Any]) -> None:
        for decision in decisions:
            name = decision.name
            if isinstance(decision, Start):
                for dep in self.wf.tasks[name].dependencies:
                    status = self.state.tasks[dep].status
                    assert status in TASK_TERMINAL, f"{name} started before {dep} ({status})"
                assert name not in self.inputs, f"{name} started twice"
                self.inputs[name] = decision.input
                self.state.tasks[name].status = RUNNING
                self.running.append(name)
            else:
                assert isinstance(decision, Settle), decision
                assert self.state.tasks[name].status == decision.status

    def finish(self, index: int, fail: bool) -> None:
        name = self.running.pop(index)
        if fail:
            unblocked = self.state.mark(name, FAILED, "ValueError: boom")
        else:
            output = {**self.inputs[name], "last": name, f"own_{name}": len(self.outputs)}
            self.outputs[name] = output
            self.state.outputs[name] = codec.dumps(output)
            self.completion_order.append(name)
            unblocked = self.state.mark(name, COMPLETED)
        self.record(advance(self.state, unblocked, NOW))
        if not fail:
            self.state.release_outputs(name)


def _latest_wins(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


@EXAMPLES
@given(dag=dags(), data=st.data())
def test_inputs_merge_in_declaration_order_never_completion_order(
    dag: tuple[Workflow, dict[str, list[str]]], data: st.DataObject
) -> None:
    wf, deps = dag
    run = Run(wf, {"seed": 1, "last": "initial"})
    while run.running:
        run.finish(data.draw(st.integers(0, len(run.running) - 1), label="finish"), fail=False)
    assert set(run.outputs) == set(wf.tasks)
    for name, task in wf.tasks.items():
        got = run.inputs[name]
        if not task.dependencies:
            assert got == {"seed": 1, "last": "initial"}
            continue
        expected = _latest_wins([run.outputs[dep] for dep in task.dependencies])
        assert got == expected
        assert input_for(run.state, name) == expected
        # Independent of how the outputs were built: the last declared dependency wins...
        assert got["last"] == task.dependencies[-1]
        # ...and every ancestor's key flows through (rule 5).
        assert {f"own_{a}" for a in ancestors(deps, name)} <= set(got)
        assert got["seed"] == 1


@EXAMPLES
@given(dag=dags(), data=st.data())
def test_final_context_merges_the_leaves_in_declaration_order(
    dag: tuple[Workflow, dict[str, list[str]]], data: st.DataObject
) -> None:
    wf, _ = dag
    run = Run(wf, {"seed": 1})
    while run.running:
        run.finish(data.draw(st.integers(0, len(run.running) - 1), label="finish"), fail=False)
    leaves = wf.leaves()  # in workflow declaration order
    assert final_context(run.state) == _latest_wins([run.outputs[leaf] for leaf in leaves])
    assert final_context(run.state)["last"] == leaves[-1]


@EXAMPLES
@given(dag=dags(with_triggers=True), data=st.data())
def test_every_task_ends_terminal_and_none_starts_early(
    dag: tuple[Workflow, dict[str, list[str]]], data: st.DataObject
) -> None:
    wf, _ = dag
    run = Run(wf, {"seed": 1}, release=data.draw(st.booleans(), label="release"))
    while run.running:
        index = data.draw(st.integers(0, len(run.running) - 1), label="finish")
        run.finish(index, fail=data.draw(st.booleans(), label="fail"))
    assert run.state.all_done(), {n: t.status for n, t in run.state.tasks.items()}
    assert not any(t.status in UNSTARTED for t in run.state.tasks.values())
    status, error = execution_outcome(run.state)
    failed_like = any(t.status in FAILED_LIKE for t in run.state.tasks.values())
    assert (status == FAILED) == failed_like
    assert (error is not None) == failed_like
    # The final context: the frontier of completed tasks, merged in declaration order.
    frontier = [
        name
        for name in wf.tasks
        if name in run.outputs and not any(child in run.outputs for child in wf.dependents()[name])
    ]
    expected = _latest_wins([run.outputs[n] for n in frontier]) if frontier else {"seed": 1}
    assert final_context(run.state) == expected
    # Released or held, every output is saved; one is released exactly when nothing reads it
    # again: it has dependents and they all completed (a run holds its frontier's outputs).
    held, released = set(run.state.outputs), run.state.released
    assert held | released == set(run.outputs)
    assert not held & released
    for name in run.outputs:
        dependents = wf.dependents()[name]
        unread = bool(dependents) and all(
            run.state.tasks[c].status == COMPLETED for c in dependents
        )
        assert (name in released) == (unread and run.release), name


@EXAMPLES
@given(dag=dags(with_triggers=True), data=st.data())
def test_a_started_task_sees_a_failed_dependencys_input(
    dag: tuple[Workflow, dict[str, list[str]]], data: st.DataObject
) -> None:
    """Whatever rules let a task run past failures, its input is its dependencies' outputs
    (or, for one that did not complete, what that one received) in declaration order."""
    wf, _ = dag
    run = Run(wf, {"seed": 1}, release=data.draw(st.booleans(), label="release"))
    while run.running:
        index = data.draw(st.integers(0, len(run.running) - 1), label="finish")
        run.finish(index, fail=data.draw(st.booleans(), label="fail"))

    def passed_on(name: str) -> dict[str, Any]:
        if name in run.outputs:
            return run.outputs[name]
        return received(name)

    def received(name: str) -> dict[str, Any]:
        task = wf.tasks[name]
        if not task.dependencies:
            return {"seed": 1}
        return _latest_wins([passed_on(dep) for dep in task.dependencies])

    for name, got in run.inputs.items():
        assert got == received(name), name
