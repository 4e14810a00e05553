"""Version 3 (tests/test_deploys.py): a new task ``d``, so a new shape: it never takes over
the executions of versions 1 and 2."""

from __future__ import annotations

from durably import Context, Workflow

deploy = Workflow("deploy_demo")


@deploy.task()
def a(ctx: Context) -> None:
    ctx["a"] = "v3"


@deploy.task(dependencies=["a"])
def b(ctx: Context) -> None:
    ctx["b"] = "v3"


@deploy.task(dependencies=["b"])
def c(ctx: Context) -> None:
    ctx["c"] = "v3"


@deploy.task(dependencies=["c"])
def d(ctx: Context) -> None:
    ctx["d"] = "v3"
