"""An in-process execution's cost per task does not grow with its size (issue 14), checked
without a clock: the Python calls per task of a 1,000-task chain against a 100-task one (a
scan of every task per task, or per task row inserted, shows as thousands of calls per task),
and the outputs a run holds in memory (only those a later task or the final context reads).
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import pytest

from durably import Context, Engine, RetryPolicy, Workflow, plan
from durably.flow import is_limited
from durably.runtime import Runtime
from durably.state import ExecutionState

from .conftest import unique


def setter(key: str, value: int) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx[key] = value

    return task


def chain(length: int, *, same_key: bool = False) -> Workflow:
    wf = Workflow(unique("chain"))
    for i in range(length):
        key = "k" if same_key else f"k{i}"
        wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else [])(setter(key, i))
    return wf


def calls_per_task(engine: Engine, wf: Workflow) -> float:
    """Python calls on this thread (the runner's: a chain's tasks run inline) per task of one
    ``engine.run``, its start and its result included; a deterministic count, unlike time."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        result = engine.run(wf, {})
    finally:
        profile.disable()
    assert result.status == "completed", result.error
    return float(pstats.Stats(profile).total_calls) / len(wf.tasks)  # type: ignore[attr-defined]


def test_python_calls_per_task_do_not_grow_with_the_chain(store_url: str) -> None:
    with Engine(store_url, lease=3600) as engine:
        engine.run(chain(20, same_key=True), {})  # imports and the store's first statements
        small = calls_per_task(engine, chain(100, same_key=True))
        large = calls_per_task(engine, chain(1000, same_key=True))
    # Each execution's fixed part spreads over more tasks at 1,000: linear work comes out
    # a little lower there. Before issue 14, a new definition's task rows each scanned every
    # task for flow limits: 1,000 more calls per task at 1,000 tasks (about 250 otherwise).
    assert large <= small * 1.05, (small, large)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many outputs the run's state holds after each attempt is recorded."""
    sizes: list[int] = []
    record = Runtime.record

    def counting(self: Runtime, tx: Any, state: ExecutionState, *args: Any) -> Any:
        unblocked = record(self, tx, state, *args)
        sizes.append(len(state.outputs))
        return unblocked

    monkeypatch.setattr(Runtime, "record", counting)
    return sizes


def test_a_chain_holds_only_the_outputs_still_read(engine: Engine, held: list[int]) -> None:
    """Each output goes once its dependent completed (the last is the final context's), and
    the result still carries every task's output, read from the database."""
    result = engine.run(chain(60), {"seed": 0})
    assert result.status == "completed", result.error
    assert max(held) <= 2, held  # the one just recorded, and the one its dependent read
    assert result.context == {"seed": 0, **{f"k{i}": i for i in range(60)}}
    for i in (0, 30, 59):
        context = result.tasks[f"t{i}"].context
        assert context == {"seed": 0, **{f"k{j}": j for j in range(i + 1)}}


def test_a_map_lets_go_of_each_instances_output(engine: Engine, held: list[int]) -> None:
    wf = Workflow(unique("map"))
    wf.task(name="start")(lambda ctx: ctx.update(items=list(range(200))))
    wf.task(name="each", dependencies=["start"], map_over="items", collect="out")(
        lambda ctx, handle: handle.item * 2
    )

    @wf.task(dependencies=["each"])
    def end(ctx: Context) -> None:
        ctx["sum"] = sum(ctx["out"])

    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context["sum"] == 200 * 199
    assert max(held) <= 3, held  # start's (its mapped task's input), each's, and end's
    assert result.tasks["each[7]"].context is not None


def test_a_fan_out_holds_what_its_join_and_its_compensation_read(engine: Engine) -> None:
    """A failed branch passes its input on to an ``all_done`` join: the start's output stays
    until every dependent of it completed; a compensated task's stays for its compensation."""
    undone: list[Any] = []
    wf = Workflow(unique("fan"))
    wf.task(name="start", compensate=lambda ctx: undone.append(dict(ctx)))(setter("s", 1))
    for i in range(5):
        wf.task(name=f"m{i}", dependencies=["start"])(setter(f"m{i}", i))

    @wf.task(dependencies=["start"])
    def broken(ctx: Context) -> None:
        raise ValueError("boom")

    @wf.task(dependencies=[*(f"m{i}" for i in range(5)), "broken"], trigger="all_done")
    def join(ctx: Context) -> None:
        ctx["join"] = sorted(ctx)

    result = engine.run(wf, {})
    assert result.status == "failed"
    assert result.tasks["join"].context is not None
    assert result.tasks["join"].context["join"] == ["m0", "m1", "m2", "m3", "m4", "s"]
    assert undone == [{"s": 1}]  # the compensation got its task's output


def test_waiting_for_completions_looks_only_at_retries(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While tasks run, the run waits for the next completion or the next retry time: it
    asks about the tasks that wait for a retry, not every task (a fan-out of 10,000 slow tasks
    waited 10,000 times, each a scan of 10,000 tasks)."""
    asked: list[list[str] | None] = []
    next_wake = plan.next_wake

    def counting(state: ExecutionState, names: Any = None) -> float | None:
        asked.append(None if names is None else list(names))
        return next_wake(state, names)

    monkeypatch.setattr(plan, "next_wake", counting)
    attempts: list[int] = []
    wf = Workflow(unique("slow"))
    for i in range(12):
        wf.task(name=f"m{i}")(lambda ctx: time.sleep(0.02))

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=False))
    def flaky(ctx: Context, handle: Any) -> None:
        attempts.append(handle.attempt)
        time.sleep(0.02)
        if handle.attempt == 1:
            raise ValueError("once")

    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert attempts == [1, 2]
    assert asked, "the run waited for completions"
    assert all(names is not None and set(names) <= {"flaky"} for names in asked), asked


def test_flow_limits_declared_later_are_seen() -> None:
    """``Workflow.has_task_limits`` is computed once, and again after a task is declared."""
    wf = Workflow(unique("limits"))
    wf.task(name="a")(setter("a", 1))
    assert not is_limited(wf)
    wf.task(name="b", concurrency=2)(setter("b", 1))
    assert is_limited(wf)
