"""Workflows run in a child process that the recovery tests kill with SIGKILL.

The same module is imported by the test process, so both sides register identical
definitions (same version). Each task appends a line to $DURABLY_MARKS when it starts, so the
tests can count how many times each task really ran across processes.
"""

from __future__ import annotations

import os
import sys
import time

from durably import Context, Engine, RetryPolicy, Workflow


def mark(name: str) -> None:
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name}\n")


def block_if_asked(name: str) -> None:
    # Only the child process blocks: the resumed run in the test process goes straight on.
    if os.environ.get("DURABLY_BLOCK") == name:
        while True:
            time.sleep(0.05)


crash = Workflow("crash_recovery")


@crash.task()
def prepare(ctx: Context) -> None:
    mark("prepare")
    ctx["prepared"] = True


@crash.task(dependencies=[prepare])
def slow(ctx: Context) -> None:
    mark("slow")
    block_if_asked("slow")
    ctx["slow"] = "done"


@crash.task(
    dependencies=[prepare],
    retry=RetryPolicy(max_attempts=3, backoff="fixed", initial_delay=1.5, jitter=False),
)
def flaky(ctx: Context, handle) -> None:  # type: ignore[no-untyped-def]
    mark(f"flaky-{handle.attempt}")
    if handle.attempt == 1:
        raise RuntimeError("first attempt fails")
    ctx["flaky"] = handle.attempt


@crash.task(dependencies=[slow, flaky])
def finish(ctx: Context) -> None:
    mark("finish")
    ctx["finished"] = True


if __name__ == "__main__":
    url, mode = sys.argv[1], sys.argv[2]
    engine = Engine(url, lease=float(os.environ.get("DURABLY_LEASE", "30")))
    if mode == "run":
        engine.run(crash, Context(order_id=7))
    else:
        engine.register(crash)
        engine.worker(concurrency=2).run()
