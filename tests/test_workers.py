"""Several worker processes sharing one database (SPEC §3.3)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from durably import Engine

from . import fanout_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def marks_of(marks: Path) -> list[str]:
    return [line.split()[0] for line in marks.read_text().splitlines()] if marks.exists() else []


def test_three_workers_run_every_task_exactly_once(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with Engine(store_url, workflows=[fanout_app.fanout]) as engine:
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.fanout_app", store_url], cwd=ROOT, env=env
            )
            for _ in range(3)
        ]
        try:
            deadline = time.monotonic() + 30
            while marks_of(marks).count("worker-ready") < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            execution_id = engine.start(fanout_app.fanout, {"run": 1})
            result = engine.wait(execution_id, timeout=120)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=20)
    assert result.status == "completed", result.error
    assert result.context["total"] == sum(range(fanout_app.WIDTH))
    lines = [line.split() for line in marks.read_text().splitlines()]
    lines = [line for line in lines if line[0] != "worker-ready"]
    per_task = Counter(name for name, _attempt, _pid in lines)
    assert set(per_task.values()) == {1}  # every task ran exactly once...
    assert len(per_task) == fanout_app.WIDTH + 2  # ...and every task ran
    assert all(attempt == "1" for _name, attempt, _pid in lines)
    assert len({pid for _name, _attempt, pid in lines}) >= 2  # the work was shared
