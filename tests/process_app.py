"""Waits, events and a map served by `durably worker`-style processes (test_worker_processes).

The test process imports this module too, so both sides register identical definitions. Each
task body appends "name pid" to $DURABLY_MARKS when it ends.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from durably import Context, Engine, Workflow, delay, event


def mark(name: str) -> None:
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name} {os.getpid()}\n")


timer = Workflow("process_app_timer")


@timer.task()
def arm(ctx: Context) -> None:
    mark("arm")


@timer.task(dependencies=[arm], wait=delay(0.4))
def fire(ctx: Context) -> None:
    mark("fire")
    ctx["fired_at"] = time.time()


approval = Workflow("process_app_approval")


@approval.task()
def submit(ctx: Context) -> None:
    mark("submit")


@approval.task(dependencies=[submit], wait=event("approved", key="approval"))
def publish(ctx: Context) -> None:
    mark("publish")
    ctx["by"] = ctx["approval"]["by"]


ITEMS = 24
fan = Workflow("process_app_map")


@fan.task()
def lines(ctx: Context) -> None:
    ctx["items"] = list(range(ITEMS))


@fan.task(dependencies=[lines], map_over="items", max_parallel=4, collect="squares")
def square(ctx: Context, handle: Any) -> int:
    time.sleep(float(os.environ.get("DURABLY_SLOW", "0.02")))
    mark(f"square[{handle.index}]")
    return int(handle.item) ** 2


@fan.task(dependencies=[square])
def total(ctx: Context) -> None:
    mark("total")
    ctx["total"] = sum(ctx["squares"])


if __name__ == "__main__":
    engine = Engine(
        sys.argv[1],
        workflows=[timer, approval, fan],
        lease=float(os.environ.get("DURABLY_LEASE", "30")),
    )
    worker = engine.worker(concurrency=3, poll_interval=0.5)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    mark("worker-ready")
    worker.run()
