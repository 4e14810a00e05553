"""A mapped workflow run in a child process that test_maps kills with SIGKILL.

The test process imports this module too, so both sides register identical definitions (same
version). Each task body appends a line to $DURABLY_MARKS when it ends, so the tests can count
how many times each instance really ran across processes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from durably import Context, Engine, Workflow


def mark(name: str) -> None:
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name}\n")


crash = Workflow("maps_crash")
ITEMS = 12


@crash.task()
def begin(ctx: Context) -> None:
    mark("begin")
    ctx["items"] = list(range(ITEMS))


@crash.task(dependencies=[begin], map_over="items", max_parallel=2, collect="squares")
def square(ctx: Context, handle: Any) -> int:
    # Slow in the child (killed mid-way), fast when the test process resumes it.
    time.sleep(float(os.environ.get("DURABLY_MAP_DELAY", "0")))
    mark(f"square[{handle.index}]")
    return int(handle.item) ** 2


@crash.task(dependencies=[square])
def total(ctx: Context) -> None:
    mark("total")
    ctx["total"] = sum(ctx["squares"])


if __name__ == "__main__":
    url = sys.argv[1]
    engine = Engine(url, lease=float(os.environ.get("DURABLY_LEASE", "30")))
    engine.run(crash, Context(order_id=7))
