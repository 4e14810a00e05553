"""The saga half of ``durably demo``: an order saga whose remote steps call in-process
participants over an :class:`InMemoryBroker`.

validate (local) -> reserve stock (remote, inventory) -> charge card (remote, payments) ->
ship (local). The first order ships. The second cannot: ``ship`` fails, so the steps before it
are compensated in reverse order — the payment refunded and the stock released by requests to
their services, then the order voided locally.
"""

from __future__ import annotations

import asyncio
import shlex
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .context import SagaContext
from .exceptions import ServiceError
from .memory_broker import InMemoryBroker
from .saga import Saga
from .saga_execution import SagaExecution
from .saga_manager import SagaManager
from .saga_messages import SagaRequest, SagaResponse
from .saga_repository import SagaExecutionRepository
from .view_parts import context_table

UNDELIVERABLE = frozenset({"Atlantis"})

# What the participants and the compensations did, in order (printed by the demo).
events: list[str] = []
broker = InMemoryBroker()


@broker.service("inventory")
def inventory(content: dict[str, Any]) -> dict[str, Any]:
    if "release" in content:
        events.append(f"inventory: reservation {content['release']} released")
        return {"released": content["release"]}
    reservation = f"R-{content['order_id']}"
    events.append(f"inventory: {content['qty']} item(s) reserved as {reservation}")
    return {"reservation": reservation}


@broker.service("payments")
async def payments(content: dict[str, Any]) -> dict[str, Any]:
    if "refund" in content:
        events.append(f"payments: payment {content['refund']} refunded")
        return {"refunded": content["refund"]}
    if content["amount"] > Decimal("1000"):
        raise ServiceError({"reason": "amount over the card limit"})
    payment = f"P-{content['order_id']}"
    events.append(f"payments: {content['amount']} charged as {payment}")
    return {"payment": payment}


def validate(ctx: SagaContext) -> None:
    ctx["total"] = sum((item["price"] * item["qty"] for item in ctx["items"]), Decimal("0"))


def void_order(ctx: SagaContext) -> None:
    events.append(f"local: order {ctx['order_id']} voided")
    ctx["voided"] = True


def reserve_stock(ctx: SagaContext) -> SagaRequest:
    qty = sum(item["qty"] for item in ctx["items"])
    return SagaRequest("inventory", {"order_id": ctx["order_id"], "qty": qty})


def stock_reserved(ctx: SagaContext, response: SagaResponse) -> None:
    ctx["reservation"] = response.content()["reservation"]


def release_stock(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("inventory", {"release": ctx["reservation"]})


def charge_card(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("payments", {"order_id": ctx["order_id"], "amount": ctx["total"]})


def card_charged(ctx: SagaContext, response: SagaResponse) -> None:
    ctx["payment"] = response.content()["payment"]


def card_declined(ctx: SagaContext, response: SagaResponse) -> Exception:
    return ValueError(f"card declined: {response.content()['reason']}")


def refund_card(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("payments", {"refund": ctx["payment"]})


def ship(ctx: SagaContext) -> None:
    if ctx["destination"] in UNDELIVERABLE:
        raise RuntimeError(f"no carrier delivers to {ctx['destination']}")
    ctx["tracking"] = f"TRK-{ctx['order_id']}"


order_saga = (
    Saga("demo_order_saga")
    .local_step(validate)
    .on_failure(void_order)
    .remote_step(reserve_stock)
    .on_success(stock_reserved)
    .on_failure(release_stock)
    .remote_step(charge_card)
    .on_success(card_charged)
    .on_error(card_declined)
    .on_failure(refund_card)
    .local_step(ship)
    .commit()
)


def new_order(order_id: str, destination: str) -> SagaContext:
    items = [{"sku": "book", "qty": 2, "price": Decimal("12.50")}]
    return SagaContext(order_id=order_id, destination=destination, items=items)


def run_saga_demo(url: str, console: Console) -> None:
    """Run a saga that finishes and one that fails and compensates, printing each."""
    repo = SagaExecutionRepository(url)
    try:
        executions = asyncio.run(_run_both(SagaManager(storage=repo, broker_pool=broker)))
    finally:
        repo.close()
    titles = (
        "Saga 1. An order that ships: remote steps call in-process participants",
        "Saga 2. An order that cannot ship: the steps before it are compensated in reverse",
    )
    for title, (execution, log) in zip(titles, executions, strict=True):
        console.rule(title)
        console.print(_steps_table(execution))
        console.print(Text("What the participants and compensations did:", style="bold"))
        for index, line in enumerate(log, 1):
            console.print(f"  {index}. {line}")
        outcome = Text.assemble(("Outcome: ", "bold"), execution.status.value)
        if execution.error:
            outcome.append(f" ({execution.error})")
        console.print(outcome)
        console.print(context_table(execution.context, title="Final context"))
        console.print(
            f"  durably show {execution.uuid} --db {shlex.quote(url)}", soft_wrap=True, style="dim"
        )


async def _run_both(manager: SagaManager) -> list[tuple[SagaExecution, list[str]]]:
    results = []
    for order_id, destination in (("S-2001", "Lisbon"), ("S-2002", "Atlantis")):
        events.clear()
        execution = await manager.run(
            definition=order_saga, context=new_order(order_id, destination), raise_on_error=False
        )
        assert isinstance(execution, SagaExecution)
        results.append((execution, list(events)))
    return results


def _steps_table(execution: SagaExecution) -> Table:
    table = Table(header_style="bold")
    for column in ("#", "step", "status", "error"):
        table.add_column(column)
    for record in execution.steps:
        table.add_row(record.path, record.name, record.status.value, record.error or "")
    return table
