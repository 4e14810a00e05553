"""A saga whose process is killed mid-run resumes elsewhere from its last finished step."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from durably.saga_execution import SagaExecution, SagaStatus, SagaStepStatus
from durably.saga_manager import SagaManager
from durably.saga_repository import SagaExecutionRepository

from . import saga_crash_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def runs(marks: Path) -> Counter[str]:
    return Counter(marks.read_text().split()) if marks.exists() else Counter()


def test_killed_process_resumes_from_the_last_finished_step(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "DURABLY_BLOCK": "ship",
    }
    script = [sys.executable, str(ROOT / "tests" / "saga_crash_app.py"), store_url]
    child = subprocess.Popen(script, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 20
        while runs(marks)["ship"] == 0:  # the child is inside the last step
            assert child.poll() is None, "the child process exited early"
            assert time.monotonic() < deadline, "the child never reached the last step"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)

    repo = SagaExecutionRepository(store_url)
    [summary] = repo.list_executions()
    assert summary.status is SagaStatus.Running
    assert summary.context == {"order_id": 21, "reserved": True, "payment": "P-21"}
    assert [s.status for s in summary.steps] == [SagaStepStatus.Finished] * 2

    manager = SagaManager(
        storage=repo, broker_pool=saga_crash_app.broker, sagas=[saga_crash_app.crash_saga]
    )
    execution = asyncio.run(manager.resume(summary.id))
    assert isinstance(execution, SagaExecution)
    assert execution.status is SagaStatus.Finished
    assert execution.context == {
        "order_id": 21,
        "reserved": True,
        "payment": "P-21",
        "shipped": True,
    }
    # Only the step that was running when the process died ran again.
    assert runs(marks) == Counter({"reserve": 1, "payments": 1, "ship": 2})
    repo.close()
