"""Workflows under flow control, served by worker processes (tests/test_flow_control.py).
Each task records when it ran (time.time(), one clock on one machine) in its output."""

from __future__ import annotations

import time

from durably import Concurrency, Context, RateLimit, Workflow

limited = Workflow("flow_limited")


@limited.task(concurrency=2)
def hold(ctx: Context) -> None:
    ctx["start"] = time.time()
    time.sleep(0.15)
    ctx["end"] = time.time()


rated = Workflow("flow_rated")


@rated.task(rate_limit=RateLimit("flow_rated_api", 10))
def call(ctx: Context) -> None:
    ctx["start"] = time.time()


per_customer = Workflow("flow_per_customer", concurrency=Concurrency(1, key="customer"))


@per_customer.task()
def first(ctx: Context) -> None:
    ctx["start"] = time.time()
    time.sleep(0.1)


@per_customer.task(dependencies=["first"])
def second(ctx: Context) -> None:
    time.sleep(0.1)
    ctx["end"] = time.time()
