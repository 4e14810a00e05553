"""Prometheus metrics (SPEC §8): the names and values a scrape over HTTP shows after a known
run, on both backends; off, nothing counts."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from durably import Context, Engine, RetryPolicy, TaskHandle, Workflow, metrics
from durably.broker import InMemoryBroker, Message
from durably.cli import cli as durably_cli
from durably.clock import ManualClock
from durably.exceptions import BrokerError
from durably.saga import Saga
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest
from durably.saga_repository import SagaExecutionRepository

from .conftest import unique


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[Engine, metrics.Metrics]]:
    engine = Engine(store_url, lease=5.0, max_recovery_attempts=3)
    on = metrics.start(engine.store, engine.runtime.repo, 0, "127.0.0.1")
    try:
        yield engine, on
    finally:
        metrics.stop()
        engine.close()


def scrape(port: int | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def run_worker(engine: Engine, until: Any) -> Any:
    worker = engine.worker(concurrency=2, poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        return until()
    finally:
        worker.stop()
        if engine.store.dialect == "postgres":
            with engine.store.transaction() as tx:
                engine.runtime.repo.notify_work(tx)
        thread.join(timeout=15)


def test_a_scrape_after_a_worker_ran_tasks(served: tuple[Engine, metrics.Metrics]) -> None:
    engine, on = served
    wf = Workflow(unique("metered"))

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False))
    def flaky(ctx: Context, handle: TaskHandle) -> None:
        if handle.attempt == 1:
            raise RuntimeError("once")

    @wf.task(dependencies=["flaky"])
    def broken(ctx: Context) -> None:
        if ctx.get("fail"):
            raise ValueError("always")

    engine.register(wf)
    ok, bad = engine.start(wf, {}), engine.start(wf, {"fail": True})
    before = scrape(on.port)
    assert before[("durably_queue_depth", ())] == 2  # each execution's root task is ready
    assert before[("durably_executions", (("status", "running"),))] == 2
    assert before[("durably_tasks", (("status", "ready"),))] == 2
    assert before[("durably_tasks", (("status", "not_started"),))] == 2

    results = run_worker(engine, lambda: [engine.wait(i, timeout=30) for i in (ok, bad)])
    assert [r.status for r in results] == ["completed", "failed"]
    after = scrape(on.port)
    labels = (("outcome", "completed"), ("task", "flaky"), ("workflow", wf.name))
    assert after[("durably_task_duration_seconds_count", labels)] == 2
    retried = (("outcome", "retry"), ("task", "flaky"), ("workflow", wf.name))
    assert after[("durably_task_duration_seconds_count", retried)] == 2
    failed = (("outcome", "failed"), ("task", "broken"), ("workflow", wf.name))
    assert after[("durably_task_duration_seconds_count", failed)] == 1
    done = (("outcome", "completed"), ("task", "broken"), ("workflow", wf.name))
    assert after[("durably_task_duration_seconds_count", done)] == 1
    assert after[("durably_task_duration_seconds_sum", labels)] >= 0
    assert after[("durably_tasks_claimed_total", ())] == 6
    assert after[("durably_claim_duration_seconds_count", ())] >= 1
    assert after[("durably_executions", (("status", "completed"),))] == 1
    assert after[("durably_executions", (("status", "failed"),))] == 1
    assert after[("durably_queue_depth", ())] == 0
    assert after[("durably_outbox_backlog", ())] == 0
    assert not any(name == "durably_tasks" for name, _ in after)  # nothing unfinished


def test_recoveries_are_counted(store_url: str) -> None:
    clock = ManualClock()
    first = Engine(store_url, lease=5.0, clock=clock)
    second = Engine(store_url, lease=5.0, clock=clock)
    on = metrics.start(second.store, second.runtime.repo, 0, "127.0.0.1")
    try:
        wf = Workflow(unique("recovered"))

        @wf.task()
        def work(ctx: Context) -> None:
            pass

        for engine in (first, second):
            engine.register(wf)
        first.start(wf)
        [_job] = first.worker(concurrency=1).claim(1)
        first.runtime.heartbeat.stop()
        first.runtime.heartbeat = type(first.runtime.heartbeat)(
            first.store, first.runtime.repo, first.worker_id, clock, 3600
        )
        clock.advance(6)
        second.worker(concurrency=1).sweep()
        found = scrape(on.port)
        assert found[("durably_recoveries_total", (("action", "claim_recovered"),))] == 1
    finally:
        metrics.stop()
        first.close()
        second.close()


def reserve(ctx: Any) -> SagaRequest:
    return SagaRequest("stock", {})


def note(ctx: Any) -> None:
    ctx.noted = True


class Down(InMemoryBroker):
    async def publish(self, message: Message) -> None:
        raise BrokerError("the broker is down")


def test_saga_steps_and_the_outbox_backlog(served: tuple[Engine, metrics.Metrics]) -> None:
    engine, on = served
    saga = Saga(unique("saga")).local_step(note).remote_step(reserve).commit()

    async def main() -> None:
        repo = SagaExecutionRepository(store=engine.store)
        manager = SagaManager(storage=repo, broker_pool=Down())
        await manager.run(definition=saga, context={}, pause_on_disk=True)
        await manager.close()

    asyncio.run(main())
    found = scrape(on.port)
    assert found[("durably_saga_steps_total", (("outcome", "finished"), ("saga", saga.name)))] == 1
    assert found[("durably_saga_steps_total", (("outcome", "paused"), ("saga", saga.name)))] == 1
    assert found[("durably_outbox_backlog", ())] == 1
    assert found[("durably_saga_executions", (("status", "paused"),))] == 1


def test_off_nothing_counts(engine: Engine) -> None:
    assert metrics.active is None
    wf = Workflow(unique("plain"))

    @wf.task()
    def step(ctx: Context) -> None:
        pass

    assert engine.run(wf).status == "completed"
    assert metrics.active is None


def test_the_worker_flag_refuses_a_port_in_use(store_url: str) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        result = CliRunner().invoke(
            durably_cli,
            ["worker", "tests.cli_app", "--db", store_url, "--metrics-port", port,
             "--metrics-host", "127.0.0.1"],
        )  # fmt: skip
    finally:
        taken.close()
    assert result.exit_code == 1, result.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output
    assert metrics.active is None


def test_a_worker_process_serves_metrics_and_logs_json_lines(store_url: str) -> None:
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from . import cli_app

    root = Path(__file__).resolve().parent.parent
    with socket.socket() as probe:  # a free port for the worker to bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "DURABLY_DATABASE_URL": store_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durably", "worker", "tests.cli_app", "--json",
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Engine(store_url) as engine:
            result = engine.wait(engine.start(cli_app.pipeline, {}), timeout=30)
        assert result.status == "completed", result.error
        deadline = time.monotonic() + 20
        while True:
            try:
                found = scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        done = (("outcome", "completed"), ("task", "right"), ("workflow", "cli_pipeline"))
        assert found[("durably_task_duration_seconds_count", done)] == 1
        assert found[("durably_tasks_claimed_total", ())] == len(cli_app.pipeline.tasks)
        assert found[("durably_executions", (("status", "completed"),))] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    announced = [json.loads(line) for line in out.splitlines()]
    assert {"action": "metrics_serving", "execution_id": None}.items() <= announced[0].items()
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    claimed = [r for r in records if r["action"] == "task_claimed"]
    assert len(claimed) == len(cli_app.pipeline.tasks)
    assert all(r["execution_id"] == str(result.execution_id) for r in claimed)
    assert {r["task"] for r in claimed} == set(cli_app.pipeline.tasks)
