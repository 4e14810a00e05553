"""Waits, events and maps on PostgreSQL worker *processes* (issue 10's "Done means"): each
task runs once across processes, a timer and an event wake a sleeping worker (NOTIFY, no
busy polling: the poll interval is 0.5 s, longer than the latencies asserted), and a worker
killed with SIGKILL mid-map leaves its instances to the other without re-running completed
ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durably import Engine

from . import process_app
from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.slow]
WORKFLOWS = [process_app.timer, process_app.approval, process_app.fan]


def marks_of(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines()]


@contextmanager
def workers(
    url: str, marks: Path, count: int, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    environ = {**os.environ, "DURABLY_MARKS": str(marks), "PYTHONPATH": str(ROOT / "src"), **env}
    started = [
        subprocess.Popen([sys.executable, "-m", "tests.process_app", url], cwd=ROOT, env=environ)
        for _ in range(count)
    ]
    try:
        wait_until(
            lambda: [n for n, _ in marks_of(marks)].count("worker-ready") >= count,
            "the workers",
            timeout=30,
        )
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.terminate()
        for process in started:
            process.wait(timeout=20)


def ran(marks: Path) -> Counter[str]:
    return Counter(name for name, _ in marks_of(marks) if name != "worker-ready")


def test_timers_events_and_maps_run_once_across_two_worker_processes(
    postgres_url: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    with workers(postgres_url, marks, 2), Engine(postgres_url, workflows=WORKFLOWS) as engine:
        timers = [engine.start(process_app.timer, {}) for _ in range(3)]
        approvals = [engine.start(process_app.approval, {}) for _ in range(3)]
        maps = [engine.start(process_app.fan, {}) for _ in range(2)]
        wait_until(
            lambda: all(engine.get(i).tasks["publish"].status == "waiting" for i in approvals),
            "the approvals' waits",
        )
        sent = time.monotonic()
        for i, execution_id in enumerate(approvals):
            assert engine.send(execution_id, "approved", {"by": f"user{i}"}, key="once")
            assert not engine.send(execution_id, "approved", {"by": "again"}, key="once")
        approved = [engine.wait(i, timeout=30) for i in approvals]
        latency = time.monotonic() - sent
        results = [engine.wait(i, timeout=60) for i in timers + maps]
    for i, result in enumerate(approved):
        assert result.status == "completed", result.error
        assert result.context["by"] == f"user{i}"
    assert latency < 0.45, f"events took {latency:.3f}s: the sleeping workers were not woken"
    for result in results:
        assert result.status == "completed", result.error
    for result in results[3:]:
        assert result.context["total"] == sum(i * i for i in range(process_app.ITEMS))
    counts = ran(marks)
    assert counts["arm"] == counts["fire"] == 3
    assert counts["submit"] == counts["publish"] == 3
    assert counts["total"] == 2
    assert all(counts[f"square[{i}]"] == 2 for i in range(process_app.ITEMS)), counts
    assert len({pid for name, pid in marks_of(marks) if name != "worker-ready"}) == 2


def test_a_worker_killed_mid_map_leaves_the_rest_to_the_other(
    postgres_url: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    with (
        workers(postgres_url, marks, 2, DURABLY_LEASE="1", DURABLY_SLOW="0.1") as started,
        Engine(postgres_url, workflows=WORKFLOWS) as engine,
    ):
        execution_id = engine.start(process_app.fan, {})

        def done_instances() -> set[str]:
            tasks = engine.get(execution_id).tasks
            return {n for n, t in tasks.items() if t.parent and t.status == "completed"}

        wait_until(lambda: len(done_instances()) >= 4, "four completed instances")
        victim = started[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        before = done_instances()
        result = engine.wait(execution_id, timeout=60)
    assert result.status == "completed", result.error
    assert result.context["total"] == sum(i * i for i in range(process_app.ITEMS))
    counts = ran(marks)
    for name in before:
        assert counts[name] == 1, f"completed instance {name} ran again: {counts}"
    for i in range(process_app.ITEMS):
        assert 1 <= counts[f"square[{i}]"] <= 2, counts
    assert counts["total"] == 1
