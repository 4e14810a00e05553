"""An Engine's threads never keep a process alive (SPEC §3), not even a task stuck for good."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import threading, time
    from durably import Engine, Workflow

    wf = Workflow("stuck_forever")
    started = threading.Event()

    @wf.task(timeout=0.2)
    def stuck(ctx):
        started.set()
        threading.Event().wait()  # never returns

    @wf.task()
    async def other(ctx):
        ctx["ok"] = True

    engine = Engine("sqlite://:memory:")
    result = engine.run(wf, {})
    print(result.status, result.tasks["stuck"].status, result.tasks["other"].status)
    """
)


def test_a_stuck_task_does_not_keep_the_process_alive() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed", "failed", "completed"]
