"""An order workflow: validate, charge the card and reserve stock, then ship (issue 9's example).

    validate ──► charge_card (compensate=refund) ──┐
             └─► reserve_stock ────────────────────┴─► merge_results ──┐
    gift_wrap (independent) ───────────────────────────────────────────┴─► ship

``ship`` uses ``trigger="none_failed"``: a skipped ``gift_wrap`` is fine, but a declined card
fails ``charge_card``, which makes ``merge_results`` *upstream_failed* (not a harmless skip), so
``ship`` is upstream_failed too and the order never ships.

What happens is chosen by the initial context and the carrier:

- ``{"card": "declined"}``: ``charge_card`` fails (never retried), nothing ships;
- ``{"gift": True}``: ``gift_wrap`` wraps it;
- ``shop.carrier.outage = True``: ``ship`` fails, so the execution fails and the charge is
  refunded by ``charge_card``'s compensation. ``engine.retry(id)`` or ``engine.fork(id,
  "ship")`` then charges the card *again* (a refunded charge is never reused) before shipping.

Every charge, refund and shipment is recorded by the :class:`Shop` the workflow was built with,
so a new charge is observable: each has its own id (``ch_1``, ``ch_2``, …).

    python -m examples.order_workflow            # runs one order on a temporary SQLite db
    python -m examples.order_workflow declined   # the same with a declined card
"""

from __future__ import annotations

import itertools
import logging
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durably import Context, Engine, ExecutionResult, NonRetryable, Workflow


class CardDeclined(NonRetryable):
    """The payment provider refused the card: retrying will not help."""


class CarrierUnavailable(Exception):
    """The carrier's API is down."""


@dataclass
class Payments:
    """A fake payment provider: charges get increasing ids, refunds are recorded."""

    charges: list[tuple[str, str, float]] = field(default_factory=list)  # (id, order, amount)
    refunds: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def charge(self, order_id: str, amount: float, card: str) -> str:
        if card == "declined":
            raise CardDeclined(f"card declined for order {order_id} ({amount:.2f})")
        with self._lock:
            charge_id = f"ch_{next(self._ids)}"
            self.charges.append((charge_id, order_id, amount))
        return charge_id

    def refund(self, charge_id: str) -> None:
        with self._lock:
            self.refunds.append(charge_id)

    @property
    def charge_ids(self) -> list[str]:
        return [charge_id for charge_id, _, _ in self.charges]


@dataclass
class Carrier:
    """A fake carrier: ``outage = True`` makes every shipment fail."""

    outage: bool = False
    shipments: list[dict[str, Any]] = field(default_factory=list)

    def ship(self, order_id: str, charge_id: str, gift_wrapped: bool) -> str:
        if self.outage:
            raise CarrierUnavailable("the carrier API is not answering")
        tracking = f"TRK-{order_id}-{len(self.shipments) + 1}"
        self.shipments.append(
            {
                "order_id": order_id,
                "charge_id": charge_id,
                "gift": gift_wrapped,
                "tracking": tracking,
            }
        )
        return tracking


@dataclass
class Shop:
    """The services the workflow talks to."""

    payments: Payments = field(default_factory=Payments)
    carrier: Carrier = field(default_factory=Carrier)
    calls: list[str] = field(default_factory=list)  # task names, in the order they ran


def build(name: str = "order_workflow", shop: Shop | None = None) -> tuple[Workflow, Shop]:
    """The order workflow under ``name``, talking to ``shop`` (a fresh one by default)."""
    shop = shop or Shop()
    wf = Workflow(name)

    def refund(ctx: Context) -> None:
        shop.calls.append("refund")
        shop.payments.refund(ctx["charge_id"])

    @wf.task()
    def validate(ctx: Context) -> None:
        shop.calls.append("validate")
        if not ctx.get("order_id"):
            raise NonRetryable("an order needs an order_id")
        if not ctx.get("amount", 0) > 0:
            raise NonRetryable(f"order {ctx['order_id']}: the amount must be positive")
        ctx["valid"] = True

    @wf.task(dependencies=[validate], compensate=refund)
    def charge_card(ctx: Context) -> None:
        shop.calls.append("charge_card")
        ctx["charge_id"] = shop.payments.charge(
            ctx["order_id"], ctx["amount"], ctx.get("card", "ok")
        )

    @wf.task(dependencies=[validate])
    def reserve_stock(ctx: Context) -> None:
        shop.calls.append("reserve_stock")
        ctx["reservation"] = f"R-{ctx['order_id']}"

    @wf.task(dependencies=[charge_card, reserve_stock])  # default trigger: all_success
    def merge_results(ctx: Context) -> None:
        shop.calls.append("merge_results")
        ctx["ready_to_ship"] = True

    @wf.task()
    def gift_wrap(ctx: Context) -> None:
        shop.calls.append("gift_wrap")
        ctx["gift_wrapped"] = bool(ctx.get("gift", False))

    @wf.task(
        dependencies=[merge_results, gift_wrap],
        trigger="none_failed",
    )
    def ship(ctx: Context) -> None:
        shop.calls.append("ship")
        ctx["tracking"] = shop.carrier.ship(
            ctx["order_id"], ctx["charge_id"], ctx.get("gift_wrapped", False)
        )

    return wf, shop


def describe(result: ExecutionResult) -> str:
    lines = [f"execution {result.execution_id}: {result.status}"]
    for name, task in result.tasks.items():
        lines.append(f"  {name:<14} {task.status}" + (f"  ({task.error})" if task.error else ""))
    if result.status == "completed":
        lines.append(
            f"  shipped: {result.context['tracking']} (charge {result.context['charge_id']})"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    card = "declined" if "declined" in argv else "ok"
    wf, shop = build()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Engine(f"sqlite:///{Path(tmp) / 'orders.db'}") as engine,
    ):
        order = {"order_id": "A-1001", "amount": 42.5, "card": card, "gift": True}
        result = engine.run(wf, order)
        print(describe(result))
        print(f"  charges: {shop.payments.charge_ids}, refunds: {shop.payments.refunds}")
    return 0 if result.status == "completed" or card == "declined" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
