"""A 1 -> 200 -> 1 workflow served by worker processes in the multi-worker tests."""

from __future__ import annotations

import os
import sys
import time

from durably import Context, Engine, Workflow

WIDTH = 200
fanout = Workflow("fanout_workers")


def mark(name: str, attempt: int) -> None:
    # One short append per line: O_APPEND keeps lines from different processes whole.
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name} {attempt} {os.getpid()}\n")


@fanout.task()
def split(ctx: Context, handle) -> None:  # type: ignore[no-untyped-def]
    mark("split", handle.attempt)
    ctx["width"] = WIDTH


def _branch(i: int):  # type: ignore[no-untyped-def]
    def branch(ctx: Context, handle) -> None:  # type: ignore[no-untyped-def]
        mark(f"b{i}", handle.attempt)
        time.sleep(0.02)
        ctx[f"b{i}"] = i

    return branch


for _i in range(WIDTH):
    fanout.task(name=f"b{_i}", dependencies=[split])(_branch(_i))


@fanout.task(dependencies=[f"b{i}" for i in range(WIDTH)])
def join(ctx: Context, handle) -> None:  # type: ignore[no-untyped-def]
    mark("join", handle.attempt)
    ctx["total"] = sum(ctx[f"b{i}"] for i in range(WIDTH))


if __name__ == "__main__":
    engine = Engine(sys.argv[1], lease=float(os.environ.get("DURABLY_LEASE", "30")))
    engine.register(fanout)
    mark("worker-ready", 0)
    engine.worker(concurrency=4).run()
