"""A workflow that waits for an event, for the CLI tests of ``start``, ``send`` and
``resume`` (imported by ``durably resume --module tests.cli_wait_app``)."""

from __future__ import annotations

from durably import Context, Workflow, event

approval = Workflow("cli_approval")


@approval.task()
def request(ctx: Context) -> None:
    ctx["requested"] = True


@approval.task(dependencies=[request], wait=event("approved", key="decision"))
def decide(ctx: Context) -> None:
    ctx["approved_by"] = ctx["decision"]["by"]
