"""Workflows with durable waits run in a child process that test_waits kills with SIGKILL.

The test process imports this module too, so both sides register identical definitions (same
version). Each task appends a line to $DURABLY_MARKS when its body runs, so the tests can count
how many times each task really ran across processes.
"""

from __future__ import annotations

import os
import sys

from durably import Context, Engine, Workflow, delay, event


def mark(name: str) -> None:
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name}\n")


approval = Workflow("waits_crash_approval")


@approval.task()
def request(ctx: Context) -> None:
    mark("request")
    ctx["requested"] = True


@approval.task(dependencies=[request], wait=event("approved", key="approval"))
def approve(ctx: Context) -> None:
    mark("approve")
    ctx["approved_by"] = ctx["approval"]["by"]


@approval.task(dependencies=[approve])
def ship(ctx: Context) -> None:
    mark("ship")
    ctx["shipped"] = True


timer = Workflow("waits_crash_timer")


@timer.task()
def begin(ctx: Context) -> None:
    mark("begin")
    ctx["began"] = True


@timer.task(dependencies=[begin], wait=delay(1.0))
def later(ctx: Context) -> None:
    mark("later")
    ctx["later"] = True


WORKFLOWS = {"approval": approval, "timer": timer}


if __name__ == "__main__":
    url, which = sys.argv[1], sys.argv[2]
    engine = Engine(url, lease=float(os.environ.get("DURABLY_LEASE", "30")))
    engine.run(WORKFLOWS[which], Context(order_id=7))
