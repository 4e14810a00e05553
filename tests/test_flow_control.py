"""Flow control (SPEC §3.5): task concurrency, workflow concurrency per context key, shared
rate limits and priorities, on both backends; enforced by the claim query for workers and by
the same rules for in-process runs; checked from the times the tasks record."""

from __future__ import annotations

import itertools
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import Concurrency, Context, Engine, RateLimit, Workflow
from durably.exceptions import WorkflowDefinitionError
from durably.flow import capacity

from . import flow_app
from .test_engine_cost import Recorder

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
_names = iter(range(10**6))


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_names)}_{os.getpid()}"


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """How many of the spans ever ran at once (an end at the same instant as a start first)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def claimed_at(result: Any) -> list[float]:
    """When each instance of a mapped task was claimed (its attempt's stored start): the
    token is taken then, before a thread runs it."""
    return sorted(
        t.started_at.timestamp() for t in result.tasks.values() if t.parent and t.started_at
    )


def assert_paced(starts: list[float], per_second: float, burst: int) -> None:
    """Claims never outrun the limit (within 10% over the whole run, past the bucket's
    ``burst``), and the limiter does not hold them back: the median gap between claims is at
    most twice a token's interval. The median, because on a loaded machine a worker may be
    descheduled for a while, which stretches a few gaps and the run, not the limiter's pace."""
    rate = (len(starts) - burst) / (starts[-1] - starts[0])
    assert rate <= per_second * 1.1, rate
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert statistics.median(gaps) <= 2 / per_second, (statistics.median(gaps), rate)


class Spans:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []
        self.starts: list[float] = []

    def hold(self, seconds: float) -> Any:
        def task(ctx: Context) -> None:
            started = time.monotonic()
            with self.lock:
                self.starts.append(started)
            time.sleep(seconds)
            with self.lock:
                self.spans.append((started, time.monotonic()))

        return task


@pytest.fixture
def running_worker(engine: Engine) -> Iterator[Any]:
    threads: list[tuple[Any, threading.Thread]] = []

    def start(**options: Any) -> Any:
        worker = engine.worker(**options)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        threads.append((worker, thread))
        return worker

    yield start
    for worker, thread in threads:
        worker.stop()
        thread.join(timeout=30)


# -- definitions -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None.__class__, 10**7, math.nan])
def test_bad_task_concurrency(bad: object) -> None:
    wf = Workflow(unique("bad_concurrency"))
    with pytest.raises(WorkflowDefinitionError, match="concurrency"):
        wf.task(concurrency=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "rate"),
    [
        ("", 1), ("  ", 1), (3, 1), (None, 1), ("api", 0), ("api", -1), ("api", math.nan),
        ("api", math.inf), ("api", "5"), ("api", True), ("api", None), ("api", 1e9),
    ],
)  # fmt: skip
def test_bad_rate_limit(name: object, rate: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="RateLimit"):
        RateLimit(name, rate)  # type: ignore[arg-type]


def test_rate_limit_must_be_a_rate_limit() -> None:
    wf = Workflow(unique("bad_rate"))
    with pytest.raises(WorkflowDefinitionError, match="rate_limit must be a RateLimit"):
        wf.task(rate_limit=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limit", "key"), [(0, None), (-2, None), (2.0, None), (True, None), (2, ""), (2, 5)]
)
def test_bad_workflow_concurrency(limit: object, key: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="Concurrency"):
        Concurrency(limit, key)  # type: ignore[arg-type]


def test_workflow_concurrency_must_be_a_concurrency() -> None:
    with pytest.raises(WorkflowDefinitionError, match="Concurrency"):
        Workflow(unique("bad_flow"), concurrency=3)  # type: ignore[arg-type]


def test_rate_is_stored_as_float() -> None:
    assert RateLimit("api", 5).per_second == 5.0
    assert Concurrency(3).key is None


@pytest.mark.parametrize(
    ("priority", "error"),
    [("1", TypeError), (True, TypeError), (1.5, TypeError), (2**31, ValueError)],
)
def test_bad_priority(engine: Engine, priority: object, error: type[Exception]) -> None:
    wf = Workflow(unique("bad_priority"))
    wf.task()(lambda ctx: None)
    with pytest.raises(error, match="priority"):
        engine.start(wf, {}, priority=priority)  # type: ignore[arg-type]
    assert engine.list(workflow=wf.name) == []


# -- in-process runs -------------------------------------------------------------------------


def test_task_concurrency_holds_in_process_across_runs(engine: Engine) -> None:
    spans = Spans()
    wf = Workflow(unique("inproc_limited"))
    wf.task()(lambda ctx: {"items": list(range(6))})
    wf.task(name="work", dependencies=["<lambda>"], map_over="items", concurrency=2)(
        spans.hold(0.05)
    )
    results: list[Any] = []
    runs = [threading.Thread(target=lambda: results.append(engine.run(wf, {}))) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert [r.status for r in results] == ["completed", "completed"]
    assert len(spans.spans) == 12
    assert max_overlap(spans.spans) == 2


def test_workflow_concurrency_holds_in_process(engine: Engine) -> None:
    spans = Spans()
    wf = Workflow(unique("inproc_flow"), concurrency=Concurrency(1))
    wf.task()(spans.hold(0.2))
    results: list[Any] = []
    runs = [threading.Thread(target=lambda: results.append(engine.run(wf, {}))) for _ in range(3)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=60)
    assert [r.status for r in results] == ["completed"] * 3
    assert max_overlap(spans.spans) == 1


def test_rate_limit_holds_in_process(engine: Engine) -> None:
    spans = Spans()
    wf = Workflow(unique("inproc_rate"))
    wf.task(name="items")(lambda ctx: {"items": list(range(11))})
    wf.task(dependencies=["items"], map_over="items", rate_limit=RateLimit(unique("r"), 20))(
        spans.hold(0)
    )
    result = engine.run(wf, {})
    assert result.status == "completed"
    starts = claimed_at(result)
    # A full bucket (2 tokens at 20/s) at first, then one token per 1/20 s: never faster.
    assert capacity(20) == 2
    assert starts[-1] - starts[0] >= (11 - 2) / 20 * 0.95


# -- workers -----------------------------------------------------------------------------------


def test_task_concurrency_across_executions_with_a_worker(
    engine: Engine, running_worker: Any
) -> None:
    spans = Spans()
    wf = Workflow(unique("worker_limited"))
    wf.task(concurrency=3)(spans.hold(0.05))
    engine.register(wf)
    ids = [engine.start(wf, {}) for _ in range(12)]
    running_worker(concurrency=8)
    assert {engine.wait(i, timeout=60).status for i in ids} == {"completed"}
    assert max_overlap(spans.spans) == 3


def test_workflow_concurrency_per_key_with_a_worker(engine: Engine, running_worker: Any) -> None:
    lock = threading.Lock()
    runs: dict[str, list[tuple[float, float]]] = {}
    wf = Workflow(unique("worker_per_key"), concurrency=Concurrency(1, key="customer"))

    @wf.task()
    def first(ctx: Context) -> None:
        ctx["start"] = time.monotonic()
        time.sleep(0.05)

    @wf.task(dependencies=["first"])
    def second(ctx: Context) -> None:
        time.sleep(0.05)
        with lock:
            runs.setdefault(ctx["customer"], []).append((ctx["start"], time.monotonic()))

    engine.register(wf)
    ids = [engine.start(wf, {"customer": c}) for c in "ABAB" * 2]
    running_worker(concurrency=8)
    assert {engine.wait(i, timeout=60).status for i in ids} == {"completed"}
    assert {c: max_overlap(spans) for c, spans in runs.items()} == {"A": 1, "B": 1}
    assert max_overlap(runs["A"] + runs["B"]) == 2  # customers do not wait for each other


def test_rate_limit_with_a_worker(engine: Engine, running_worker: Any) -> None:
    spans = Spans()
    limit = RateLimit(unique("api"), 20)
    wf = Workflow(unique("worker_rate"))
    wf.task(name="items")(lambda ctx: {"items": list(range(21))})
    wf.task(dependencies=["items"], map_over="items", rate_limit=limit)(spans.hold(0))
    engine.register(wf)
    execution_id = engine.start(wf, {})
    running_worker(concurrency=8)
    result = engine.wait(execution_id, timeout=60)
    assert result.status == "completed"
    starts = claimed_at(result)
    # The bucket starts full (2 tokens), then gives one per 1/20 s.
    assert_paced(starts, 20, capacity(20))


def test_priority_orders_the_claim(engine: Engine, running_worker: Any) -> None:
    order: list[int] = []
    wf = Workflow(unique("priorities"))

    @wf.task()
    def note(ctx: Context) -> None:
        order.append(ctx["n"])

    engine.register(wf)
    priorities = [0, 5, 0, 5, 1, -3, 0]
    for n, priority in enumerate(priorities):
        engine.start(wf, {"n": n}, priority=priority)
    running_worker(concurrency=1)
    deadline = time.monotonic() + 30
    while len(order) < len(priorities) and time.monotonic() < deadline:
        time.sleep(0.02)
    # Higher first, FIFO within a priority.
    assert order == [1, 3, 4, 0, 2, 6, 5]


def test_a_claim_without_limits_costs_what_it_did(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Workflow(unique("plain"))
    plain.task()(lambda ctx: None)
    limited = Workflow(unique("limited"))
    limited.task(concurrency=2)(lambda ctx: None)
    engine.register(plain)
    engine.start(plain, {})
    recorder = Recorder(engine.store, monkeypatch)
    worker = engine.worker()
    assert len(worker.claim(4)) == 1
    assert recorder.writes()[0][0] == "claim_tasks"
    assert "lock_flow" not in [name for names in recorder.writes() for name in names]
    engine.register(limited)
    engine.start(limited, {})
    recorder.clear()
    assert len(worker.claim(4)) == 1
    claimed = recorder.writes()[0]
    # Limited workflows first: one more statement (the lock), then the plain claim.
    assert claimed[:2] == ["lock_flow", "claim_limited_tasks"]
    assert "claim_tasks" in claimed


# -- several worker processes ------------------------------------------------------------------


def test_limits_hold_across_worker_processes(store_url: str) -> None:
    with Engine(
        store_url, workflows=[flow_app.limited, flow_app.rated, flow_app.per_customer]
    ) as engine:
        limited = [engine.start(flow_app.limited, {}) for _ in range(16)]
        rated = [engine.start(flow_app.rated, {}) for _ in range(51)]
        customers = [engine.start(flow_app.per_customer, {"customer": c}) for c in "ABC" * 3]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "durably",
                    "worker",
                    "tests.flow_app",
                    "--db",
                    store_url,
                    "--concurrency",
                    "4",
                ],
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        try:
            results = {i: engine.wait(i, timeout=120) for i in [*limited, *rated, *customers]}
        finally:
            for worker in workers:
                worker.terminate()
            errors = [worker.communicate(timeout=30)[1] for worker in workers]
    assert {r.status for r in results.values()} == {"completed"}, errors
    holds = [(results[i].context["start"], results[i].context["end"]) for i in limited]
    assert max_overlap(holds) == 2
    # When each call was claimed (the token is taken then), by the workers' clocks.
    starts = sorted(results[i].tasks["call"].started_at.timestamp() for i in rated)
    assert_paced(starts, 10, 0)  # 10 per second, over 5 s
    # No second of the run saw more than the limit and the bucket's slack (2 tokens).
    assert capacity(10) == 2
    assert max(sum(1 for s in starts if t <= s < t + 1) for t in starts) <= 12
    per: dict[str, list[tuple[float, float]]] = {}
    for i in customers:
        ctx = results[i].context
        per.setdefault(ctx["customer"], []).append((ctx["start"], ctx["end"]))
    assert {c: max_overlap(spans) for c, spans in per.items()} == {"A": 1, "B": 1, "C": 1}


# -- waking up ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_worker_held_back_by_a_limit_wakes_when_the_slot_frees(postgres_url: str) -> None:
    """No lost wake-up: the worker polls every 30 s, yet starts the next task as soon as the
    one holding the slot completes (its completion sends a NOTIFY)."""
    wf = Workflow(unique("wake_on_slot"))

    @wf.task(concurrency=1)
    def hold(ctx: Context) -> None:
        time.sleep(0.5)
        ctx["done"] = time.time()

    with Engine(postgres_url, workflows=[wf]) as runner, Engine(postgres_url) as other:
        other.register(wf)
        results: list[Any] = []
        first = threading.Thread(target=lambda: results.append(runner.run(wf, {})))
        first.start()
        until_running = time.monotonic() + 10
        while not any(
            t.status == "running" for r in runner.list(workflow=wf.name)
            for t in runner.get(r.execution_id).tasks.values()
        ):  # fmt: skip
            assert time.monotonic() < until_running
            time.sleep(0.01)
        queued = other.start(wf, {})
        worker = other.worker(poll_interval=30)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            second = other.wait(queued, timeout=10)
        finally:
            worker.stop()
        first.join(timeout=10)
    thread.join(timeout=10)  # closing the engine ends its wait for a NOTIFY
    assert not thread.is_alive()
    assert second.status == "completed", second.error
    assert results[0].status == "completed"
    # It started at once after the first ended (the slot was never shared).
    assert second.context["done"] - results[0].context["done"] < 2.0
    assert second.context["done"] - results[0].context["done"] >= 0.5


def test_a_worker_held_back_by_a_rate_sleeps_until_the_next_token(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No busy polling: between tokens the worker claims about once per token, and it wakes
    for each token although it polls only every 3 s."""
    wf = Workflow(unique("token_sleep"))
    wf.task(name="items")(lambda ctx: {"items": list(range(6))})
    wf.task(dependencies=["items"], map_over="items", rate_limit=RateLimit(unique("slow"), 4))(
        lambda ctx: None
    )
    engine.register(wf)
    execution_id = engine.start(wf, {})
    recorder = Recorder(engine.store, monkeypatch)
    worker = engine.worker(poll_interval=3)
    thread = threading.Thread(target=worker.run, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        result = engine.wait(execution_id, timeout=20)
        took = time.monotonic() - started
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert result.status == "completed"
    assert took < 2.5  # 2 tokens at once, then one per 0.25 s: about 1 s
    claims = [names for names in recorder.writes() if names[:1] == ["lock_flow"]]
    assert len(claims) <= 20, len(claims)


@pytest.mark.parametrize("limit_first", [False, True])
def test_a_deploy_that_adds_or_drops_a_limit_still_runs_old_executions(
    store_url: str, limit_first: bool
) -> None:
    """A code-only deploy may add or drop a limit: executions started before it still run
    (their rows carry no key to count, or keys no definition limits any more)."""
    name = unique("limit_deploy")

    def make(limited: bool) -> Workflow:
        wf = Workflow(name)
        wf.task(name="only", concurrency=1 if limited else None)(lambda ctx: {"ran": limited})
        return wf

    old, new = make(limit_first), make(not limit_first)
    assert old.shape_version == new.shape_version
    with Engine(store_url, workflows=[old]) as engine:
        ids = [engine.start(old, {}) for _ in range(3)]
    with Engine(store_url, workflows=[new]) as engine:
        worker = engine.worker()
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            results = [engine.wait(i, timeout=30) for i in ids]
        finally:
            worker.stop()
            thread.join(timeout=30)
    assert [r.context["ran"] for r in results] == [not limit_first] * 3
