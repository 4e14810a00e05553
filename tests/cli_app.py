"""Workflows for the CLI tests (imported by ``durably run cli_app:...``)."""

from __future__ import annotations

import datetime
import time

from durably import Context, NonRetryable, Workflow

pipeline = Workflow("cli_pipeline")


@pipeline.task()
def start(ctx: Context) -> None:
    ctx["started"] = True
    ctx["stage"] = "start"


@pipeline.task(dependencies=[start])
def left(ctx: Context) -> None:
    time.sleep(0.05)  # finishes after `right`, yet `right` is the last declared dependency
    ctx["stage"] = "left"
    ctx["left"] = 1


@pipeline.task(dependencies=[start])
def right(ctx: Context) -> None:
    ctx["stage"] = "right"
    ctx["right"] = 2
    ctx["when"] = datetime.date(2024, 5, 1)


@pipeline.task(dependencies=[left, right])
def join(ctx: Context) -> None:
    ctx["seen"] = ctx["stage"]
    del ctx["started"]


# Flipped by the tests: while True, `fragile` fails for good; `durably retry` re-runs it.
FAIL_FRAGILE = True

flaky = Workflow("cli_flaky")


@flaky.task()
def prepare(ctx: Context) -> None:
    ctx["prepared"] = ctx.get("amount", 0)


@flaky.task(dependencies=[prepare])
def fragile(ctx: Context) -> None:
    if FAIL_FRAGILE:
        raise NonRetryable("fragile is broken")
    ctx["fragile"] = "ok"


@flaky.task(dependencies=[fragile])
def last(ctx: Context) -> None:
    ctx["done"] = ctx["prepared"] + 1


not_a_workflow = 42
