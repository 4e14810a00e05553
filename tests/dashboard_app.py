"""Workflows the dashboard tests act on: a diamond with a retry, a mapped task, one that
fails until told not to, one that waits for an event, and one that runs until released."""

from __future__ import annotations

import threading

from durably import Context, RetryPolicy, Workflow, event

# -- a diamond: prepare -> (double, note) -> total; note fails its first attempt -----------------
diamond = Workflow("dash_diamond")
_note_attempts: dict[str, int] = {}


@diamond.task()
def prepare(ctx: Context) -> None:
    ctx["base"] = ctx.get("amount", 1)


@diamond.task(dependencies=[prepare])
def double(ctx: Context) -> None:
    ctx["doubled"] = ctx["base"] * 2


@diamond.task(dependencies=[prepare], retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
def note(ctx: Context) -> None:
    key = str(ctx.scope.execution_id) if ctx.scope else ""
    _note_attempts[key] = _note_attempts.get(key, 0) + 1
    if _note_attempts[key] == 1:
        raise ConnectionError("flaky note service")
    ctx["note"] = f"base is {ctx['base']}"


@diamond.task(dependencies=[double, note])
def total(ctx: Context) -> None:
    ctx["total"] = ctx["doubled"] + 1


# -- a mapped task ---------------------------------------------------------------------------------
mapped = Workflow("dash_mapped")


@mapped.task()
def items(ctx: Context) -> None:
    ctx["items"] = [1, 2, 3]


@mapped.task(dependencies=[items], map_over="items", collect="squares")
def square(ctx: Context, handle: object) -> int:
    item: int = handle.item  # type: ignore[attr-defined]
    return item * item


# -- fails while FAIL is set -----------------------------------------------------------------------
flaky = Workflow("dash_flaky")
FAIL = {"on": True}


@flaky.task()
def fragile(ctx: Context) -> None:
    if FAIL["on"]:
        raise RuntimeError("fragile is broken")
    ctx["fixed"] = True


# -- waits for an event ----------------------------------------------------------------------------
approval = Workflow("dash_approval")


@approval.task()
def ask(ctx: Context) -> None:
    ctx["asked"] = True


@approval.task(dependencies=[ask], wait=event("approved", key="approval"))
def decide(ctx: Context) -> None:
    ctx["decided"] = ctx["approval"]


# -- runs until released ---------------------------------------------------------------------------
slow = Workflow("dash_slow")
RELEASE = threading.Event()


@slow.task()
def hold(ctx: Context) -> None:
    RELEASE.wait(10)
    ctx["held"] = True
