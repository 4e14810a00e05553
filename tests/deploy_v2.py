"""Version 2 (tests/test_deploys.py): the same shape as version 1, with ``b`` fixed and ``c``
changed: a code-only deploy, which takes over version 1's executions."""

from __future__ import annotations

from durably import Context, RetryPolicy, Workflow

deploy = Workflow("deploy_demo")


@deploy.task()
def a(ctx: Context) -> None:
    ctx["a"] = "v2"


@deploy.task(
    dependencies=["a"],
    retry=RetryPolicy(max_attempts=20, backoff="fixed", initial_delay=0.3, jitter=False),
)
def b(ctx: Context) -> None:
    ctx["b"] = "v2"


@deploy.task(dependencies=["b"])
def c(ctx: Context) -> None:
    ctx["c"] = "v2"
