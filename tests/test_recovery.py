"""Crash recovery with real processes killed by SIGKILL (SPEC §3.3, issue 3 item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from durably import Engine

from . import crash_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def spawn(url: str, mode: str, marks: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "DURABLY_MARKS": str(marks), "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_app", url, mode], cwd=ROOT, env=environ
    )


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def runs(marks: Path) -> Counter[str]:
    return Counter(marks.read_text().split()) if marks.exists() else Counter()


def kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


def test_killed_in_process_run_resumes_elsewhere(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    child = spawn(store_url, "run", marks, DURABLY_BLOCK="slow")
    try:
        # The child is inside `slow` and `flaky` failed once: its retry is scheduled.
        wait_for(lambda: runs(marks)["slow"] == 1 and runs(marks)["flaky-1"] == 1)
        time.sleep(0.2)  # let the retry schedule commit
    finally:
        kill(child)
    with Engine(store_url, workflows=[crash_app.crash]) as engine:
        [execution] = engine.list()
        assert execution.status == "running"
        before = engine.get(execution.execution_id).tasks
        assert before["prepare"].status == "completed"
        assert before["slow"].status == "running"
        assert before["flaky"].status == "ready"  # waiting for its retry time
        assert before["flaky"].attempts == 1

        result = engine.resume(execution.execution_id)

    assert result.status == "completed", result.error
    assert result.context["finished"] is True
    assert result.context["flaky"] == 2
    counts = runs(marks)
    assert counts["prepare"] == 1  # a completed task never runs again
    assert counts["slow"] == 2  # lost with the process, run again
    assert counts["flaky-1"] == 1  # the retry schedule survived:
    assert counts["flaky-2"] == 1  # one more attempt, after its stored time
    assert counts["finish"] == 1
    assert result.tasks["flaky"].attempts == 2


def test_resume_refuses_a_live_owner(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    child = spawn(store_url, "run", marks, DURABLY_BLOCK="slow")
    try:
        wait_for(lambda: runs(marks)["slow"] == 1)
        with Engine(store_url, workflows=[crash_app.crash]) as engine:
            [execution] = engine.list()
            from durably import ExecutionStateError

            with pytest.raises(ExecutionStateError, match="live process"):
                engine.resume(execution.execution_id)
    finally:
        kill(child)


def test_killed_worker_task_is_taken_over_after_the_lease(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    with Engine(store_url, lease=1.0, workflows=[crash_app.crash]) as engine:
        execution_id = engine.start(crash_app.crash, {"order_id": 9})
        child = spawn(store_url, "worker", marks, DURABLY_BLOCK="slow", DURABLY_LEASE="1.0")
        try:
            wait_for(lambda: runs(marks)["slow"] == 1)
        finally:
            kill(child)
        worker = engine.worker(concurrency=2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            result = engine.wait(execution_id, timeout=30)
        finally:
            worker.stop()
            thread.join(timeout=10)
    assert result.status == "completed", result.error
    counts = runs(marks)
    assert counts["prepare"] == 1
    assert counts["slow"] == 2
    assert counts["finish"] == 1
