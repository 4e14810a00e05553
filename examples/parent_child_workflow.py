"""A parent workflow that runs a payment workflow as a sub-workflow (issue 10's parent/child
example), and what happens when the parent fails after the child completed.

    checkout ──► payment (sub-workflow "payment": authorize ──► capture) ──► ship

``payment`` is an execution of its own (``parent_id`` names the checkout), started with
``checkout``'s output as its initial context; ``ship`` sees the child's final context. A
child's failure fails ``payment``; cancelling the checkout cancels the payment; and when
``ship`` fails, the completed payment is undone: its ``capture`` compensation refunds.

    python -m examples.parent_child_workflow   # one order that ships, one that cannot
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from durably import Context, Engine, NonRetryable, Workflow

refunds: list[str] = []

payment = Workflow("payment")


@payment.task()
def authorize(ctx: Context) -> None:
    ctx["authorization"] = f"AUTH-{ctx['order_id']}"


@payment.task(
    dependencies=[authorize],
    compensate=lambda ctx: refunds.append(f"refunded {ctx['amount']} for {ctx['order_id']}"),
)
def capture(ctx: Context) -> None:
    ctx["captured"] = ctx["amount"]


checkout = Workflow("checkout")


@checkout.task()
def start_checkout(ctx: Context) -> None:
    ctx["amount"] = sum(line["price"] for line in ctx["lines"])


checkout.subworkflow("payment", payment, dependencies=[start_checkout])


@checkout.task(dependencies=["payment"])
def ship(ctx: Context) -> None:
    if ctx["country"] == "Atlantis":
        raise NonRetryable("no carrier delivers to Atlantis")
    ctx["shipped"] = f"captured {ctx['captured']}, shipped to {ctx['country']}"


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as folder,
        Engine(f"sqlite:///{Path(folder) / 'checkout.db'}") as engine,
    ):
        lines = [{"sku": "lamp", "price": 30}, {"sku": "book", "price": 12}]
        good = engine.run(checkout, {"order_id": "O-1", "country": "PT", "lines": lines})
        child = engine.get(good.tasks["payment"].child_id)  # type: ignore[arg-type]
        print(f"{good.execution_id}: {good.status}: {good.context['shipped']}")
        print(f"  payment ran as execution {child.execution_id} ({child.status})")
        bad = engine.run(checkout, {"order_id": "O-2", "country": "Atlantis", "lines": lines})
        print(f"{bad.execution_id}: {bad.status}: {bad.error}")
        for refund in refunds:
            print(f"  compensation: {refund}")
    return 0 if good.status == "completed" and refunds == ["refunded 42 for O-2"] else 1


if __name__ == "__main__":
    sys.exit(main())
