"""Wide fan-ins on the worker path: a dependency's completion counts the fan-in's other
dependencies instead of reading them, and only the last one unblocks it (worker_steps.FAN_IN).
The outcome is what reading them all gave: the merge in declaration order, the trigger rule
applied once every dependency is done."""

from __future__ import annotations

from typing import Any

import pytest

from durably import Context, Engine, Workflow
from durably.repository import tasks as task_queries
from durably.worker_steps import FAN_IN

from .conftest import unique
from .workers import running_worker

WIDTH = 3 * FAN_IN


def fan(width: int = WIDTH, *, fail: int | None = None, trigger: str | None = None) -> Workflow:
    wf = Workflow(unique("fan_in"))
    wf.task(name="start")(lambda ctx: ctx.update(order=[]))
    middles = [f"m{i:02d}" for i in range(width)]
    for i, name in enumerate(middles):

        def middle(ctx: Context, i: int = i, name: str = name) -> None:
            if i == fail:
                raise ValueError(f"{name} fails")
            ctx[name] = i
            ctx["last"] = name  # every middle sets it: the last declared wins the merge

        wf.task(name=name, dependencies=["start"])(middle)

    def end(ctx: Context) -> None:
        ctx["seen"] = sorted(key for key in ctx if key.startswith("m"))

    wf.task(name="end", dependencies=middles, trigger=trigger)(end)
    return wf


def test_a_wide_fan_in_runs_once_with_every_output_merged_in_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = fan()
    engine.register(wf)
    read: list[int] = []
    real = task_queries.tasks_of

    def counting(rows: Any) -> Any:
        found = real(rows)
        read.append(len(found))
        return found

    monkeypatch.setattr(task_queries, "tasks_of", counting)
    with running_worker(engine, concurrency=4):
        execution_id = engine.start(wf, {})
        result = engine.wait(execution_id, timeout=60)
    assert result.status == "completed", result.error
    assert result.context["seen"] == [f"m{i:02d}" for i in range(WIDTH)]
    assert result.context["last"] == f"m{WIDTH - 1:02d}"  # declaration order, later wins
    assert result.tasks["end"].attempts == 1
    # Each middle's completion read its own row and the fan-in's, not the other middles'
    # (reading them all was WIDTH + 2 rows a completion).
    assert max(read) <= WIDTH + 2  # the end's claim reads its dependencies, once
    assert sum(read) < 6 * (WIDTH + 2), read


@pytest.mark.parametrize("trigger", [None, "all_done"])
def test_a_failed_dependency_of_a_wide_fan_in_is_seen_by_its_rule(
    engine: Engine, trigger: str | None
) -> None:
    """As an in-process run decides it, which reads every task."""
    wf = fan(fail=FAN_IN, trigger=trigger)
    engine.register(wf)
    here = engine.run(wf, {})
    with running_worker(engine, concurrency=4):
        result = engine.wait(engine.start(wf, {}), timeout=60)
    assert (result.status, result.error) == (here.status, here.error)
    statuses = {name: task.status for name, task in result.tasks.items()}
    assert statuses == {name: task.status for name, task in here.tasks.items()}
    assert statuses["end"] == ("upstream_failed" if trigger is None else "completed")
    if trigger is not None:
        assert result.context == here.context
        assert len(result.context["seen"]) == WIDTH - 1


def test_a_task_after_a_wide_fan_in_waits_for_it(engine: Engine) -> None:
    """``after`` depends on ``start`` and on the fan-in ``wide``: a middle's completion, which
    does not read the other middles, must not take ``wide`` for done."""
    wf = Workflow(unique("fan_in_after"))
    wf.task(name="start")(lambda ctx: ctx.update(started=True))
    middles = [f"m{i:02d}" for i in range(WIDTH)]
    for name in middles:
        wf.task(name=name, dependencies=["start"])(lambda ctx, name=name: ctx.update({name: 1}))
    wf.task(name="wide", dependencies=["start", *middles])(lambda ctx: ctx.update(wide=len(ctx)))
    wf.task(name="after", dependencies=["start", "wide"])(
        lambda ctx: ctx.update(after_saw_wide="wide" in ctx)
    )
    engine.register(wf)
    with running_worker(engine, concurrency=4):
        execution_id = engine.start(wf, {})
        result = engine.wait(execution_id, timeout=60)
    assert result.status == "completed", result.error
    assert result.context["after_saw_wide"] is True
    assert result.tasks["after"].started_at >= result.tasks["wide"].completed_at
