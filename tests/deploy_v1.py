"""Version 1 of a deployed workflow (tests/test_deploys.py): task ``b`` is broken."""

from __future__ import annotations

from durably import Context, RetryPolicy, Workflow

deploy = Workflow("deploy_demo")


@deploy.task()
def a(ctx: Context) -> None:
    ctx["a"] = "v1"


@deploy.task(
    dependencies=["a"],
    retry=RetryPolicy(max_attempts=20, backoff="fixed", initial_delay=0.3, jitter=False),
)
def b(ctx: Context) -> None:
    raise RuntimeError("b is broken in v1")


@deploy.task(dependencies=["b"])
def c(ctx: Context) -> None:
    ctx["c"] = "v1"
