"""A parent workflow with a sub-workflow, run in child processes that test_subworkflows
kills with SIGKILL or runs as workers.

The test process imports this module too, so both sides register identical definitions (same
versions). Each task body appends "name pid" to $DURABLY_MARKS when it ends, so the tests can
count how many times each task really ran, and where.
"""

from __future__ import annotations

import os
import sys
import time

from durably import Context, Engine, Workflow


def mark(name: str) -> None:
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name} {os.getpid()}\n")


child = Workflow("subworkflow_app_child")


@child.task()
def reserve(ctx: Context) -> None:
    mark("reserve")
    ctx["reserved"] = ctx["sku"]


@child.task(dependencies=[reserve])
def pack(ctx: Context) -> None:
    # Slow in the killed process, fast when the test resumes it.
    time.sleep(float(os.environ.get("DURABLY_SLOW", "0")))
    mark("pack")
    ctx["packed"] = True


parent = Workflow("subworkflow_app_parent")


@parent.task()
def order(ctx: Context) -> None:
    mark("order")
    ctx["sku"] = "A-1"


parent.subworkflow("fulfil", child, dependencies=[order])


@parent.task(dependencies=["fulfil"])
def notify(ctx: Context) -> None:
    mark("notify")
    ctx["notified"] = ctx["packed"]


if __name__ == "__main__":
    url, mode = sys.argv[1], sys.argv[2]
    engine = Engine(url, workflows=[parent], lease=float(os.environ.get("DURABLY_LEASE", "30")))
    if mode == "run":
        engine.run(parent, {})
    else:
        worker = engine.worker(concurrency=2, poll_interval=0.1)
        mark("worker-ready")
        import signal

        signal.signal(signal.SIGTERM, lambda *_: worker.stop())
        worker.run()
