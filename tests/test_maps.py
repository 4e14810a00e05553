"""Runtime fan-out: ``map_over`` / ``max_parallel`` / ``collect`` (SPEC §3.4, issue 10 item 3).

Definitions, the in-process path (``engine.run``), the worker path, ``durably show``, a killed
process, the cost per instance, and ``retry`` after a failed map.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from durably import Context, Engine, RetryPolicy, Workflow, WorkflowDefinitionError, delay
from durably.cli import cli as durably_cli

from . import maps_app, workers
from .conftest import unique, wait_until

ROOT = Path(__file__).resolve().parent.parent
FAST_RETRY = RetryPolicy(max_attempts=3, backoff="fixed", initial_delay=0, jitter=False)


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int


class Calls:
    """Thread-safe record of task bodies run: (name, index, item)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, int | None, Any]] = []

    def add(self, name: str, handle: Any) -> None:
        with self.lock:
            self.runs.append((name, handle.index, handle.item))

    def count(self, name: str) -> Counter[int | None]:
        with self.lock:
            return Counter(index for task, index, _ in self.runs if task == name)


class Gauge:
    """How many bodies run at once, at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def fan(
    calls: Calls,
    *,
    items: Any = None,
    body: Callable[[Context, Any], Any] | None = None,
    **options: Any,
) -> Workflow:
    """prepare (sets ``items`` unless None) -> each (mapped) -> after (copies its input)."""
    wf = Workflow(unique("maps"))

    @wf.task()
    def prepare(ctx: Context) -> None:
        ctx["base"] = 1
        if items is not None:
            ctx["items"] = items

    @wf.task(dependencies=[prepare], map_over="items", **options)
    def each(ctx: Context, handle: Any) -> Any:
        calls.add("each", handle)
        if body is not None:
            return body(ctx, handle)
        ctx[f"seen{handle.index}"] = handle.item
        return None

    @wf.task(dependencies=[each])
    def after(ctx: Context) -> None:
        ctx["after_saw"] = dict(ctx)

    return wf


# -- 1. definitions ----------------------------------------------------------------------------


def _define(**options: Any) -> Workflow:
    wf = Workflow(unique("maps_def"))
    wf.task(**options)(lambda ctx: None)
    return wf


@pytest.mark.parametrize("bad", [1, b"items", "", "_items", ["items"]])
def test_a_bad_map_over_is_a_definition_error(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="map_over"):
        _define(map_over=bad)


@pytest.mark.parametrize("bad", [1, "", "_out", ("out",)])
def test_a_bad_collect_is_a_definition_error(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="collect"):
        _define(map_over="items", collect=bad)


@pytest.mark.parametrize("bad", [0, -1, True, False, "3", 2.0, None.__class__])
def test_a_bad_max_parallel_is_a_definition_error(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="max_parallel"):
        _define(map_over="items", max_parallel=bad)


@pytest.mark.parametrize("options", [{"max_parallel": 2}, {"collect": "out"}])
def test_max_parallel_or_collect_needs_map_over(options: dict[str, Any]) -> None:
    with pytest.raises(WorkflowDefinitionError, match="map_over"):
        _define(**options)


def test_a_mapped_task_cannot_wait() -> None:
    with pytest.raises(WorkflowDefinitionError, match="wait"):
        _define(map_over="items", wait=delay(5))


def test_good_map_settings_are_accepted() -> None:
    wf = _define(map_over="items", max_parallel=1, collect="out")
    [task] = wf.tasks.values()
    assert (task.map_over, task.max_parallel, task.collect) == ("items", 1, "out")


def test_map_settings_are_part_of_the_version() -> None:
    name = unique("maps_version")

    def make(**options: Any) -> str:
        wf = Workflow(name)

        def body(ctx: Context) -> None:
            return None

        wf.task(name="only", **options)(body)
        return wf.version

    versions = [
        make(),
        make(map_over="items"),
        make(map_over="lines"),
        make(map_over="items", max_parallel=2),
        make(map_over="items", max_parallel=3),
        make(map_over="items", collect="out"),
    ]
    assert len(set(versions)) == len(versions)
    assert make(map_over="items", max_parallel=2) == versions[3]  # stable


# -- 2. in-process ----------------------------------------------------------------------------


def test_one_instance_per_element_with_item_and_index(engine: Engine) -> None:
    items = [{"sku": "a"}, (1, 2), Line("b", 3), None, "text"]
    calls = Calls()
    wf = fan(calls, items=items)
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert sorted(calls.runs, key=lambda r: r[1] or 0) == [
        ("each", i, item) for i, item in enumerate(items)
    ]
    assert isinstance(calls.runs[0][2], dict)
    for i, item in enumerate(items):
        task = result.tasks[f"each[{i}]"]
        assert (task.status, task.attempts, task.parent, task.index) == ("completed", 1, "each", i)
        assert task.context is not None
        assert task.context[f"seen{i}"] == item
        assert "items" not in task.context  # an instance's input lacks the mapped list
    mapped = result.tasks["each"]
    assert mapped.status == "completed"
    assert (mapped.parent, mapped.index) == (None, None)
    saw = result.context["after_saw"]
    assert saw["items"] == items  # the mapped task's input is kept
    assert {f"seen{i}": item for i, item in enumerate(items)}.items() <= saw.items()
    assert isinstance(saw["seen1"], tuple)
    assert isinstance(saw["seen2"], Line)


def test_an_instance_sees_its_tasks_input_without_the_list(engine: Engine) -> None:
    seen: list[dict[str, Any]] = []
    wf = fan(Calls(), items=[1, 2], body=lambda ctx, h: seen.append(dict(ctx)))
    assert engine.run(wf, {"initial": "x"}).status == "completed"
    assert seen == [{"initial": "x", "base": 1}] * 2


def test_outputs_merge_in_index_order_the_higher_index_wins(engine: Engine) -> None:
    def body(ctx: Context, handle: Any) -> None:
        ctx["winner"] = handle.index
        ctx["base"] = handle.index * 10  # overrides the mapped task's input too

    wf = fan(Calls(), items=list(range(6)), body=body)
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context["winner"] == 5
    assert result.context["after_saw"]["base"] == 50


def test_collect_gives_the_returned_values_in_index_order(engine: Engine) -> None:
    def body(ctx: Context, handle: Any) -> Any:
        ctx["ignored"] = True  # with collect, only the return value counts
        return {"n": handle.item * 2} if handle.index % 2 else handle.item * 2

    wf = fan(Calls(), items=[5, 6, 7, 8], body=body, collect="doubled")
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context["after_saw"]["doubled"] == [10, {"n": 12}, 14, {"n": 16}]
    assert result.context["after_saw"]["items"] == [5, 6, 7, 8]
    assert "ignored" not in result.context["after_saw"]
    instance = result.tasks["each[2]"].context
    assert instance is not None
    assert dict(instance) == {"doubled": 14}


def test_a_collect_instance_returning_none_collects_none(engine: Engine) -> None:
    wf = fan(Calls(), items=[1, 2], body=lambda ctx, h: None, collect="out")
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context["after_saw"]["out"] == [None, None]


@pytest.mark.parametrize("collect", [None, "out"])
def test_an_empty_list_completes_with_the_input(engine: Engine, collect: str | None) -> None:
    calls = Calls()
    options = {"collect": collect} if collect else {}
    wf = fan(calls, items=[], **options)
    result = engine.run(wf, {"initial": 1})
    assert result.status == "completed", result.error
    assert calls.runs == []
    assert result.tasks["each"].status == "completed"
    assert not [name for name in result.tasks if name.startswith("each[")]
    saw = result.context["after_saw"]
    assert saw == {"initial": 1, "base": 1, "items": []}


def test_an_empty_tuple_completes_too(engine: Engine) -> None:
    wf = fan(Calls(), items=())
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.tasks["each"].status == "completed"


def test_a_tuple_is_mapped_like_a_list(engine: Engine) -> None:
    calls = Calls()
    wf = fan(calls, items=("x", "y"))
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert sorted(calls.runs) == [("each", 0, "x"), ("each", 1, "y")]


@pytest.mark.parametrize(
    ("items", "what"),
    [("abc", "a str"), ({"a": 1}, "a dict"), (3, "a int"), (None, "absent")],
)
def test_a_non_list_fails_the_mapped_task_naming_key_and_type(
    engine: Engine, items: Any, what: str
) -> None:
    calls = Calls()
    wf = fan(calls, items=items)
    result = engine.run(wf, {})
    assert result.status == "failed"
    task = result.tasks["each"]
    assert task.status == "failed"
    assert "'items'" in (task.error or ""), task.error
    assert what in (task.error or ""), task.error
    assert result.tasks["after"].status == "upstream_failed"
    assert calls.runs == []
    assert "each" in (result.error or "")


def test_an_explicit_none_value_fails_naming_none_type(engine: Engine) -> None:
    wf = Workflow(unique("maps_none"))
    wf.task(name="each", map_over="items")(lambda ctx: None)
    result = engine.run(wf, {"items": None})
    assert result.status == "failed"
    assert "NoneType" in (result.tasks["each"].error or ""), result.tasks["each"].error


def test_a_failing_instance_fails_the_mapped_task(engine: Engine) -> None:
    def body(ctx: Context, handle: Any) -> None:
        if handle.index in (1, 3):
            raise ValueError(f"bad item {handle.item}")

    calls = Calls()
    wf = fan(calls, items=list(range(5)), body=body)
    result = engine.run(wf, {})
    assert result.status == "failed"
    assert result.tasks["each"].status == "failed"
    assert "2 of its 5 instances failed" in (result.tasks["each"].error or "")
    assert [result.tasks[f"each[{i}]"].status for i in range(5)] == [
        "completed",
        "failed",
        "completed",
        "failed",
        "completed",
    ]
    assert "bad item 1" in (result.tasks["each[1]"].error or "")
    assert result.tasks["after"].status == "upstream_failed"
    assert calls.count("each") == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
    assert "each[1]" in (result.error or "")


def test_a_flaky_instance_is_retried_and_the_map_completes(engine: Engine) -> None:
    failures = Counter[int]()

    def body(ctx: Context, handle: Any) -> int:
        if handle.index == 2 and failures[2] < 2:
            failures[2] += 1
            raise RuntimeError("flaky")
        return int(handle.item)

    calls = Calls()
    wf = fan(calls, items=[0, 1, 2, 3], body=body, collect="out", retry=FAST_RETRY)
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context["after_saw"]["out"] == [0, 1, 2, 3]
    assert result.tasks["each[2]"].attempts == 3
    assert [a.status for a in result.tasks["each[2]"].history] == ["failed", "failed", "completed"]
    assert result.tasks["each[0]"].attempts == 1
    assert calls.count("each") == Counter({0: 1, 1: 1, 2: 3, 3: 1})


def test_an_instance_out_of_retries_fails_the_map(engine: Engine) -> None:
    def body(ctx: Context, handle: Any) -> None:
        if handle.index == 0:
            raise RuntimeError("always")

    calls = Calls()
    wf = fan(calls, items=[0, 1], body=body, retry=FAST_RETRY)
    result = engine.run(wf, {})
    assert result.status == "failed"
    assert result.tasks["each[0]"].attempts == 3
    assert "1 of its 2 instances failed" in (result.tasks["each"].error or "")
    assert calls.count("each") == Counter({0: 3, 1: 1})


def _gauged_flow(gauge: Gauge, calls: Calls, n: int, limit: int, *, threaded: bool) -> Workflow:
    wf = Workflow(unique("maps_parallel"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=list(range(n))))
    if threaded:

        @wf.task(dependencies=["prepare"], map_over="items", max_parallel=limit, timeout=30)
        def each(ctx: Context, handle: Any) -> None:
            gauge.enter()
            try:
                calls.add("each", handle)
                time.sleep(0.02)
            finally:
                gauge.leave()
    else:

        @wf.task(dependencies=["prepare"], map_over="items", max_parallel=limit)
        async def each(ctx: Context, handle: Any) -> None:
            gauge.enter()
            try:
                calls.add("each", handle)
                await asyncio.sleep(0.02)
            finally:
                gauge.leave()

    wf.task(name="after", dependencies=["each"])(lambda ctx: None)
    return wf


@pytest.mark.parametrize("threaded", [True, False], ids=["threads", "async"])
def test_max_parallel_bounds_running_instances(engine: Engine, threaded: bool) -> None:
    gauge, calls = Gauge(), Calls()
    wf = _gauged_flow(gauge, calls, 10, 2, threaded=threaded)
    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert calls.count("each") == Counter(dict.fromkeys(range(10), 1))
    assert gauge.peak == 2


def test_without_max_parallel_instances_run_together(engine: Engine) -> None:
    gauge, calls = Gauge(), Calls()
    wf = Workflow(unique("maps_unbounded"))

    @wf.task(map_over="items")
    async def each(ctx: Context, handle: Any) -> None:
        gauge.enter()
        calls.add("each", handle)
        await asyncio.sleep(0.05)
        gauge.leave()

    assert engine.run(wf, {"items": list(range(6))}).status == "completed"
    assert gauge.peak == 6


def test_max_parallel_with_a_failing_instance_still_runs_the_rest(engine: Engine) -> None:
    def body(ctx: Context, handle: Any) -> None:
        if handle.index == 0:
            raise ValueError("first")

    calls = Calls()
    wf = fan(calls, items=list(range(5)), body=body, max_parallel=1)
    result = engine.run(wf, {})
    assert result.status == "failed"
    assert calls.count("each") == Counter(dict.fromkeys(range(5), 1))
    assert "1 of its 5 instances failed" in (result.tasks["each"].error or "")


def test_compensation_undoes_each_instance_in_reverse_index_order(engine: Engine) -> None:
    undone: list[Any] = []
    wf = Workflow(unique("maps_compensate"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=["a", "b", "c"]))

    @wf.task(
        dependencies=["prepare"],
        map_over="items",
        compensate=lambda ctx: undone.append(ctx.get("reserved")),
    )
    def reserve(ctx: Context, handle: Any) -> None:
        ctx["reserved"] = handle.item

    @wf.task(dependencies=["reserve"])
    def charge(ctx: Context) -> None:
        raise RuntimeError("card declined")

    result = engine.run(wf, {})
    assert result.status == "failed"
    assert undone == ["c", "b", "a"]
    for i in range(3):
        assert result.tasks[f"reserve[{i}]"].compensation == "completed"


def test_only_completed_instances_are_compensated(engine: Engine) -> None:
    undone: list[Any] = []
    wf = Workflow(unique("maps_compensate_some"))

    @wf.task(map_over="items", compensate=lambda ctx: undone.append(ctx["got"]))
    def reserve(ctx: Context, handle: Any) -> None:
        if handle.index == 1:
            raise ValueError("out of stock")
        ctx["got"] = handle.index

    result = engine.run(wf, {"items": [0, 1, 2]})
    assert result.status == "failed"
    assert undone == [2, 0]
    assert result.tasks["reserve[1]"].compensation is None


def test_get_lists_instances_with_parent_and_index(engine: Engine) -> None:
    wf = fan(Calls(), items=["p", "q", "r"])
    result = engine.run(wf, {})
    fetched = engine.get(result.execution_id)
    instances = {n: t for n, t in fetched.tasks.items() if t.parent is not None}
    assert set(instances) == {"each[0]", "each[1]", "each[2]"}
    assert {(t.parent, t.index) for t in instances.values()} == {("each", i) for i in range(3)}
    assert {n for n, t in fetched.tasks.items() if t.parent is None} == {
        "prepare",
        "each",
        "after",
    }


def test_two_mapped_tasks_in_a_row(engine: Engine) -> None:
    wf = Workflow(unique("maps_chain"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=[1, 2, 3]))

    @wf.task(dependencies=["prepare"], map_over="items", collect="squares")
    def square(ctx: Context, handle: Any) -> int:
        return int(handle.item) ** 2

    @wf.task(dependencies=["square"], map_over="squares", collect="plus")
    def plus(ctx: Context, handle: Any) -> int:
        return int(handle.item) + 1

    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context["plus"] == [2, 5, 10]
    assert result.context["squares"] == [1, 4, 9]


def test_a_root_mapped_task_maps_over_the_initial_context(engine: Engine) -> None:
    wf = Workflow(unique("maps_root"))

    @wf.task(map_over="items", collect="out")
    def each(ctx: Context, handle: Any) -> Any:
        return [ctx["tag"], handle.item]

    result = engine.run(wf, {"items": [1, 2], "tag": "t"})
    assert result.status == "completed", result.error
    assert result.context["out"] == [["t", 1], ["t", 2]]


# -- 3. workers --------------------------------------------------------------------------------


def running_worker(engine: Engine, **options: Any) -> Any:
    return workers.running_worker(engine, **{"concurrency": 3, **options})


def test_a_worker_completes_a_map_with_max_parallel_and_collect(engine: Engine) -> None:
    gauge, calls = Gauge(), Calls()
    wf = Workflow(unique("maps_worker"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=list(range(8))))

    @wf.task(dependencies=["prepare"], map_over="items", max_parallel=2, collect="out")
    def each(ctx: Context, handle: Any) -> int:
        gauge.enter()
        try:
            calls.add("each", handle)
            time.sleep(0.02)
            return int(handle.item) * 3
        finally:
            gauge.leave()

    @wf.task(dependencies=["each"])
    def after(ctx: Context) -> None:
        ctx["sum"] = sum(ctx["out"])

    engine.register(wf)
    execution_id = engine.start(wf, {})
    with running_worker(engine, concurrency=3):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "completed", result.error
    assert result.context["out"] == [i * 3 for i in range(8)]
    assert result.context["sum"] == 84
    assert calls.count("each") == Counter(dict.fromkeys(range(8), 1))
    assert gauge.peak <= 2
    assert result.tasks["each[7]"].parent == "each"


def test_a_worker_fails_a_map_with_a_failed_instance(engine: Engine) -> None:
    def body(ctx: Context, handle: Any) -> None:
        if handle.index == 2:
            raise ValueError("nope")

    wf = fan(Calls(), items=list(range(4)), body=body)
    engine.register(wf)
    execution_id = engine.start(wf, {})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "failed"
    assert "1 of its 4 instances failed" in (result.tasks["each"].error or "")
    assert result.tasks["after"].status == "upstream_failed"


def test_a_worker_completes_an_empty_map(engine: Engine) -> None:
    wf = fan(Calls(), items=[])
    engine.register(wf)
    execution_id = engine.start(wf, {})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=3)
    assert result.status == "completed", result.error
    assert result.context["after_saw"]["items"] == []


def test_a_worker_fails_a_map_over_a_non_list(engine: Engine) -> None:
    wf = fan(Calls(), items="abc")
    engine.register(wf)
    execution_id = engine.start(wf, {})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=10)
    assert result.status == "failed"
    assert "'items'" in (result.tasks["each"].error or "")
    assert "a str" in (result.tasks["each"].error or "")
    assert result.tasks["after"].status == "upstream_failed"


def test_a_worker_retries_a_flaky_instance(engine: Engine) -> None:
    failures = Counter[int]()
    lock = threading.Lock()

    def body(ctx: Context, handle: Any) -> int:
        with lock:
            if handle.index == 1 and failures[1] < 1:
                failures[1] += 1
                raise RuntimeError("flaky")
        return int(handle.index)

    wf = fan(Calls(), items=[0, 0, 0], body=body, collect="out", retry=FAST_RETRY)
    engine.register(wf)
    execution_id = engine.start(wf, {})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "completed", result.error
    assert result.context["after_saw"]["out"] == [0, 1, 2]
    assert result.tasks["each[1]"].attempts == 2


@pytest.mark.postgres
def test_two_postgres_workers_run_each_instance_once(postgres_url: str) -> None:
    calls, gauge = Calls(), Gauge()
    n = 30
    wf = Workflow(unique("maps_two_workers"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=list(range(n))))

    @wf.task(dependencies=["prepare"], map_over="items", max_parallel=4, collect="out")
    def each(ctx: Context, handle: Any) -> int:
        gauge.enter()
        try:
            calls.add("each", handle)
            time.sleep(0.01)
            return int(handle.item)
        finally:
            gauge.leave()

    with (
        Engine(postgres_url, workflows=[wf]) as first,
        Engine(postgres_url, workflows=[wf]) as second,
    ):
        ids = [first.start(wf, {}) for _ in range(2)]
        with running_worker(first, concurrency=3), running_worker(second, concurrency=3):
            results = [first.wait(i, timeout=40) for i in ids]
    for result in results:
        assert result.status == "completed", result.error
        assert result.context["out"] == list(range(n))
    assert calls.count("each") == Counter(dict.fromkeys(range(n), 2))  # once per execution
    assert gauge.peak <= 8  # two executions, 4 slots each


# -- 4. durably show ---------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(durably_cli, list(args), env={"COLUMNS": "200"})


def _shown_flow(engine: Engine) -> str:
    def body(ctx: Context, handle: Any) -> None:
        if handle.index == 3:
            raise ValueError("broken item")

    wf = fan(Calls(), items=list(range(4)), body=body)
    return str(engine.run(wf, {}).execution_id)


def test_show_draws_a_mapped_task_as_one_row_with_counts(store_url: str) -> None:
    with Engine(store_url) as engine:
        execution_id = _shown_flow(engine)
    result = invoke("show", execution_id, "--db", store_url)
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    rows = [line for line in out.splitlines() if re.match(r"^each\S*\s+(failed|completed)", line)]
    assert len(rows) == 1, out  # one table row for the mapped task, none per instance
    assert "3 completed" in rows[0], rows[0]
    assert "1 failed" in rows[0], rows[0]
    for i in range(3):
        assert f"each[{i}]" not in out
    assert "each[3] (failed): ValueError: broken item" in out  # the instance's error is listed


def test_show_expand_lists_every_instance(store_url: str) -> None:
    with Engine(store_url) as engine:
        execution_id = _shown_flow(engine)
    result = invoke("show", execution_id, "--expand", "--db", store_url)
    assert result.exit_code == 0, (result.output, result.exception)
    for i in range(4):
        assert re.search(rf"^each\[{i}\]\s+(completed|failed)", result.output, re.M), result.output


def test_show_json_has_map_parent_and_index(store_url: str) -> None:
    import json

    with Engine(store_url) as engine:
        execution_id = _shown_flow(engine)
    result = invoke("show", execution_id, "--json", "--db", store_url)
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(result.stdout)
    tasks = data["tasks"]
    by_name = (
        {t["name"]: t for t in tasks} if isinstance(tasks, list) else dict(tasks)
    )  # either shape
    for i in range(4):
        assert by_name[f"each[{i}]"]["map_parent"] == "each"
        assert by_name[f"each[{i}]"]["map_index"] == i
    assert by_name["each"]["map_parent"] is None


# -- 5. crash durability -----------------------------------------------------------------------


def spawn(url: str, marks: Path) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "DURABLY_MARKS": str(marks),
        "DURABLY_MAP_DELAY": "0.15",
        "PYTHONPATH": str(ROOT / "src"),
    }
    return subprocess.Popen([sys.executable, "-m", "tests.maps_app", url], cwd=ROOT, env=environ)


def marks_of(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


@pytest.mark.slow
def test_a_killed_map_resumes_without_rerunning_completed_instances(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    monkeypatch.setenv("DURABLY_MAP_DELAY", "0")
    wf = maps_app.crash
    child = spawn(store_url, marks)
    with Engine(store_url, workflows=[wf]) as engine:
        try:
            wait_until(lambda: bool(engine.list(workflow=wf.name)), "the execution")
            [summary] = engine.list(workflow=wf.name)
            execution_id = summary.execution_id

            def completed() -> set[str]:
                tasks = engine.get(execution_id).tasks
                return {n for n, t in tasks.items() if t.parent and t.status == "completed"}

            wait_until(lambda: len(completed()) >= 3, "three completed instances")
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        done_before = completed()
        assert len(done_before) < maps_app.ITEMS, "the child finished before the kill"
        assert engine.get(execution_id).status == "running"
        result = engine.resume(execution_id)
    assert result.status == "completed", result.error
    assert result.context["squares"] == [i * i for i in range(maps_app.ITEMS)]
    assert result.context["total"] == sum(i * i for i in range(maps_app.ITEMS))
    runs = marks_of(marks)
    assert runs["begin"] == 1
    assert runs["total"] == 1
    for name in done_before:
        assert runs[name] == 1, f"completed instance {name} ran again: {runs}"
    for i in range(maps_app.ITEMS):
        assert 1 <= runs[f"square[{i}]"] <= 2, runs


# -- 6. cost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_map_of_2000_costs_about_one_transaction_per_instance(engine: Engine) -> None:
    n = 2000
    wf = Workflow(unique("maps_cost"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=list(range(n))))

    @wf.task(dependencies=["prepare"], map_over="items", collect="out")
    def each(ctx: Context, handle: Any) -> int:
        return int(handle.item)

    @wf.task(dependencies=["each"])
    def after(ctx: Context) -> None:
        ctx["count"] = len(ctx["out"])

    engine.register(wf)
    engine.run(wf, {"items": [0]})  # warm up
    engine.store.stats.reset()
    started = time.perf_counter()
    result = engine.run(wf, {})
    elapsed = time.perf_counter() - started
    stats = engine.store.stats
    assert result.status == "completed", result.error
    assert result.context["count"] == n
    print(
        f"\nmap(2000) in-process, SQLite: {elapsed / n * 1e6:.0f} µs/instance, "
        f"{stats.transactions / n:.3f} transactions/instance, "
        f"{stats.statements / n:.2f} statements/instance"
    )
    assert stats.transactions / n <= 1.1
    assert stats.statements / n <= 6


# -- 7. retry ----------------------------------------------------------------------------------


def _flaky_map(calls: Calls, fail: set[int]) -> Workflow:
    def body(ctx: Context, handle: Any) -> int:
        if handle.index in fail:
            raise ValueError(f"item {handle.index} broke")
        return int(handle.item)

    return fan(calls, items=list(range(4)), body=body, collect="out")


def test_retry_reruns_only_the_failed_instances(engine: Engine) -> None:
    calls = Calls()
    fail = {1}
    wf = _flaky_map(calls, fail)
    first = engine.run(wf, {})
    assert first.status == "failed"
    fail.clear()
    result = engine.retry(first.execution_id)
    assert result.status == "completed", result.error
    assert result.context["after_saw"]["out"] == [0, 1, 2, 3]
    # the completed instances are kept: each ran once; the failed one ran twice
    assert calls.count("each") == Counter({0: 1, 1: 2, 2: 1, 3: 1})
    assert [a.status for a in result.tasks["each[1]"].history] == ["failed", "completed"]


# -- 7. the dependent's merge rule -------------------------------------------------------------


def _nested_map(merge: Any) -> Workflow:
    wf = Workflow(unique("maps_merge"))
    wf.task(name="prepare")(lambda ctx: ctx.update(items=[0, 1, 2], cfg={"base": True}))

    @wf.task(dependencies=["prepare"], map_over="items")
    def each(ctx: Context, handle: Any) -> None:
        ctx["cfg"] = {f"k{handle.index}": handle.item}
        ctx["last"] = handle.index

    wf.task(name="after", dependencies=["each"], merge=merge)(lambda ctx: None)
    return wf


def test_a_deep_merging_dependent_gets_every_instances_nested_keys(engine: Engine) -> None:
    result = engine.run(_nested_map("deep"), {})
    assert result.status == "completed", result.error
    assert result.context["cfg"] == {"k0": 0, "k1": 1, "k2": 2}
    assert result.context["last"] == 2  # index order: the highest index wins on a scalar


def test_a_strict_dependent_refuses_instances_that_disagree(engine: Engine) -> None:
    result = engine.run(_nested_map("strict"), {})
    assert result.status == "failed"
    error = result.tasks["each"].error or ""
    assert "ContextConflictError" in error
    assert "each[0]" in error
    assert "each[1]" in error


def test_a_callable_merge_receives_each_instance_by_name(engine: Engine) -> None:
    seen: list[list[str]] = []

    def names(inputs: list[tuple[str, Context]]) -> dict[str, Any]:
        # Called for the instances when the map completes, then for the mapped task itself
        # when "after" receives its one dependency's output.
        seen.append([name for name, _ in inputs])
        return {"from": [n for name, ctx in inputs for n in ctx.get("from", [name])]}

    result = engine.run(_nested_map(names), {})
    assert result.status == "completed", result.error
    assert seen == [["each[0]", "each[1]", "each[2]"], ["each"]]
    assert result.context["from"] == ["each[0]", "each[1]", "each[2]"]
