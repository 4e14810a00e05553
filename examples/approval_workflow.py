"""An approval workflow: a document is submitted, waits for a person's approval (an event,
with a timeout), then is published (issue 10's example).

    submit ──► approve (wait=event("approved", timeout=..., key="approval")) ──► publish

The approval is sent from anywhere, any process, while the execution waits on disk::

    engine.send(execution_id, "approved", {"by": "alice"}, key="mail-123")
    durably send ID approved --payload '{"by": "alice"}' --key mail-123

A repeated ``key`` is ignored, so a re-delivered approval mail is harmless. Without an
approval before the timeout, the attempt fails with ``WaitTimeout`` and is retried once (the
retry waits again); then the execution fails and ``publish`` is upstream_failed.

    python -m examples.approval_workflow     # starts one, approves it, prints the result
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from durably import Context, Engine, RetryPolicy, Workflow, event

wf = Workflow("document_approval")


@wf.task()
def submit(ctx: Context) -> None:
    ctx["state"] = "submitted"


@wf.task(
    dependencies=[submit],
    wait=event("approved", timeout=7 * 24 * 3600, key="approval"),
    retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=False),
)
def approve(ctx: Context) -> None:
    ctx["approved_by"] = ctx["approval"]["by"]


@wf.task(dependencies=[approve])
def publish(ctx: Context) -> None:
    ctx["state"] = f"published, approved by {ctx['approved_by']}"


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as folder,
        Engine(f"sqlite:///{Path(folder) / 'approval.db'}") as engine,
    ):
        execution_id = engine.start(wf, {"document": "Q4 report"})
        worker = engine.worker(concurrency=2, poll_interval=0.05)
        serving = threading.Thread(target=worker.run, daemon=True)
        serving.start()
        while engine.get(execution_id).tasks["approve"].status != "waiting":
            time.sleep(0.02)
        print(f"{execution_id}: approve is waiting for its event")
        engine.send(execution_id, "approved", {"by": "alice"}, key="mail-123")
        engine.send(execution_id, "approved", {"by": "mallory"}, key="mail-123")  # ignored
        result = engine.wait(execution_id, timeout=30)
        worker.stop()
        serving.join(timeout=10)
    print(f"{execution_id}: {result.status}: {result.context['state']}")
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
