"""``durably demo``: an order-processing workflow that shows what durably does.

validate -> (reserve_stock, charge_card) -> ship. The two branches both write ``stage``, and
``ship`` receives ``charge_card``'s value because it is the last *declared* dependency (SPEC
§3.1 rule 4), whichever finished first. ``charge_card`` fails its first attempt and succeeds on
the retry. A second order cannot ship, so the completed tasks' compensations run in reverse
order.
"""

from __future__ import annotations

import importlib
import io
import shlex
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from .context import Context
from .demo_bulk import run_bulk
from .engine import Engine
from .exceptions import NonRetryable
from .execution_views import diff_section, task_table
from .executor import TaskHandle
from .json_views import summary_json
from .results import ExecutionResult
from .retry import RetryPolicy
from .view_parts import context_table
from .workflow import Workflow

UNDELIVERABLE = frozenset({"Atlantis"})

# What the compensations did, in the order they ran (this process only): printed by the demo.
compensations: list[str] = []


def void_order(ctx: Context) -> None:
    compensations.append(f"validate: order {ctx['order_id']} voided")


def release_stock(ctx: Context) -> None:
    compensations.append(f"reserve_stock: reservation {ctx['reservation']} released")


def refund_card(ctx: Context) -> None:
    payment = ctx["payment"]
    compensations.append(f"charge_card: payment {payment['id']} of {payment['amount']} refunded")


order = Workflow("demo_order")


@order.task(compensate=void_order)
def validate(ctx: Context) -> None:
    if not ctx["items"]:
        raise NonRetryable("an order needs at least one item")
    ctx["total"] = sum((item["price"] * item["qty"] for item in ctx["items"]), Decimal("0"))
    ctx["stage"] = "validated"


@order.task(dependencies=[validate], compensate=release_stock)
def reserve_stock(ctx: Context) -> None:
    time.sleep(0.15)  # the slow branch: it usually finishes after charge_card
    ctx["reservation"] = f"R-{ctx['order_id']}"
    ctx["stage"] = "stock reserved"


@order.task(
    dependencies=[validate],
    retry=RetryPolicy(max_attempts=3, backoff="fixed", initial_delay=0.02, jitter=False),
    compensate=refund_card,
)
def charge_card(ctx: Context, handle: TaskHandle) -> None:
    if handle.attempt == 1:
        raise ConnectionError("payment gateway timed out (simulated: attempt 1 always fails)")
    ctx["payment"] = {"id": f"P-{ctx['order_id']}", "amount": ctx["total"]}
    ctx["stage"] = "payment captured"


@order.task(dependencies=[reserve_stock, charge_card])
def ship(ctx: Context) -> None:
    # Both dependencies wrote "stage": the last declared one (charge_card) wins.
    ctx["stage_seen_by_ship"] = ctx["stage"]
    if ctx["destination"] in UNDELIVERABLE:
        raise NonRetryable(f"no carrier delivers to {ctx['destination']}")
    ctx["tracking"] = f"TRK-{ctx['order_id']}"
    ctx["stage"] = "shipped"


def new_order(order_id: str, destination: str) -> Context:
    return Context(
        order_id=order_id,
        destination=destination,
        items=[
            {"sku": "book", "qty": 2, "price": Decimal("12.50")},
            {"sku": "lamp", "qty": 1, "price": Decimal("30.00")},
        ],
    )


def _merge_note(result: ExecutionResult) -> Text:
    reserved = result.tasks["reserve_stock"].completed_at
    charged = result.tasks["charge_card"].completed_at
    order_word = "first" if charged and reserved and charged < reserved else "last"
    seen = result.tasks["ship"].context
    value = seen["stage_seen_by_ship"] if seen is not None else "?"
    note = Text("Merge: ", style="bold")
    note.append(
        "reserve_stock and charge_card both wrote 'stage'; ship received "
        f"{value!r} from charge_card, the last declared dependency "
        f"(it finished {order_word}: declaration order decides, not finishing order)."
    )
    return note


def _retry_note(result: ExecutionResult) -> Text:
    note = Text("Retry: ", style="bold")
    note.append(
        f"charge_card failed its first attempt (a simulated gateway timeout) and completed on "
        f"attempt {result.tasks['charge_card'].attempts}."
    )
    return note


def run_demo(db: str | None, out: Console, *, quiet: bool = False) -> dict[str, Any]:
    """Run both orders (and the saga demo when available); return a JSON summary."""
    if quiet:
        out = Console(file=io.StringIO())
    if db is None:
        directory = Path(tempfile.mkdtemp(prefix="durably-demo-"))
        url = f"sqlite:///{directory / 'demo.db'}"
        where = "a new temporary SQLite database; pass --db URL to choose one"
    else:
        url = db
        where = "from --db / DURABLY_DATABASE_URL"
    out.print(Text("durably demo", style="bold"))
    out.print(Text.assemble("database ", (url, "bold"), (f"  ({where})", "dim")), soft_wrap=True)

    with Engine(url) as engine:
        out.rule("1. An order that ships")
        shipped = engine.run(order, new_order("A-1001", "Lisbon"))
        out.print(task_table(shipped))
        out.print(_retry_note(shipped))
        out.print(_merge_note(shipped))
        out.print()
        out.print(diff_section(engine, shipped))
        out.print()
        out.print(context_table(shipped.context, title="Final context"))

        out.rule("2. An order that cannot ship: compensations run in reverse order")
        compensations.clear()
        failed = engine.run(order, new_order("A-1002", "Atlantis"))
        out.print(task_table(failed))
        out.print(Text.assemble(("Outcome: ", "bold"), f"{failed.status}: {failed.error}"))
        out.print(Text("Compensations, in the order they ran:", style="bold"))
        rollback = list(compensations)
        for index, line in enumerate(rollback, 1):
            out.print(f"  {index}. {line}")

        out.rule("3. A bulk order: a sub-workflow fans out over the order's lines")
        bulk = run_bulk(engine, out)

    db_arg = shlex.quote(url)
    out.rule("Inspect them")
    for result in (shipped, failed, bulk):
        out.print(
            f"  durably show {result.execution_id} --db {db_arg} -m durably.demo", soft_wrap=True
        )
        out.print(f"  durably context {result.execution_id} --db {db_arg}", soft_wrap=True)
    out.print(f"  durably list --db {db_arg}", soft_wrap=True)

    saga_demo = _saga_demo()
    if saga_demo is not None:
        out.rule("Saga demo")
        saga_demo(url, out)
    return {
        "database": url,
        "executions": [summary_json(shipped), summary_json(failed)],
        "bulk": summary_json(bulk),
        "compensations": rollback,
        "saga_demo": saga_demo is not None,
    }


def _saga_demo() -> Any:
    """``durably.saga_demo.run_saga_demo`` when sagas are installed, else None."""
    try:
        module = importlib.import_module("durably.saga_demo")
    except ModuleNotFoundError as exc:
        if exc.name == "durably.saga_demo":
            return None
        raise
    return module.run_saga_demo
