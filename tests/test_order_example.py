"""The order example (examples/order_workflow.py) end to end, on both backends (issue 9): a
declined card never ships, and a refunded charge is never reused by ``fork`` or ``retry``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from examples.order_workflow import Shop, build

from durably import Engine, ExecutionResult

from .conftest import unique

ROOT = Path(__file__).resolve().parent.parent
ORDER = {"order_id": "A-1", "amount": 42.5, "gift": True}


def statuses(result: ExecutionResult) -> dict[str, str]:
    return {name: task.status for name, task in result.tasks.items()}


def test_a_declined_card_never_ships(engine: Engine) -> None:
    wf, shop = build(unique("order"))
    result = engine.run(wf, {**ORDER, "card": "declined"})

    assert result.status == "failed"
    assert statuses(result) == {
        "validate": "completed",
        "charge_card": "failed",
        "reserve_stock": "completed",
        "merge_results": "upstream_failed",
        "gift_wrap": "completed",
        "ship": "upstream_failed",
    }
    assert "ship" not in shop.calls
    assert shop.carrier.shipments == []
    assert shop.payments.charges == []
    assert shop.payments.refunds == []  # a failed charge has nothing to undo
    assert "CardDeclined" in (result.tasks["charge_card"].error or "")
    assert result.tasks["charge_card"].attempts == 1  # NonRetryable
    # Each reason names the dependency that failed, not a harmless skip.
    assert "'charge_card'" in (result.tasks["merge_results"].error or "")
    assert "'merge_results'" in (result.tasks["ship"].error or "")
    assert "upstream_failed" in (result.tasks["ship"].error or "")
    assert "charge_card" in (result.error or "")
    stored = engine.get(result.execution_id)
    assert stored.status == "failed"
    assert stored.tasks["ship"].status == "upstream_failed"


def test_a_good_order_ships_with_its_charge(engine: Engine) -> None:
    wf, shop = build(unique("order"))
    result = engine.run(wf, ORDER)
    assert result.status == "completed", result.error
    assert shop.payments.charge_ids == ["ch_1"]
    assert shop.carrier.shipments == [
        {"order_id": "A-1", "charge_id": "ch_1", "gift": True, "tracking": "TRK-A-1-1"}
    ]
    assert result.context["tracking"] == "TRK-A-1-1"


def failed_shipment(engine: Engine) -> tuple[Shop, ExecutionResult]:
    """An order whose shipment failed after the card was charged: the charge is refunded."""
    wf, shop = build(unique("order"))
    shop.carrier.outage = True
    result = engine.run(wf, ORDER)
    assert result.status == "failed"
    assert result.tasks["ship"].status == "failed"
    assert "CarrierUnavailable" in (result.tasks["ship"].error or "")
    assert result.tasks["charge_card"].status == "completed"
    assert result.tasks["charge_card"].compensation == "completed"
    assert shop.payments.charge_ids == ["ch_1"]
    assert shop.payments.refunds == ["ch_1"]  # refunded once
    assert shop.calls.count("refund") == 1
    shop.carrier.outage = False
    shop.calls.clear()
    return shop, result


def test_fork_after_compensation_charges_again_before_shipping(engine: Engine) -> None:
    shop, failed = failed_shipment(engine)
    forked = engine.fork(failed.execution_id, "ship")

    assert forked.status == "completed", forked.error
    assert forked.parent_id == failed.execution_id
    assert shop.payments.charge_ids == ["ch_1", "ch_2"]  # a new charge, not the refunded one
    assert shop.payments.refunds == ["ch_1"]
    assert shop.carrier.shipments == [
        {"order_id": "A-1", "charge_id": "ch_2", "gift": True, "tracking": "TRK-A-1-1"}
    ]
    assert forked.context["charge_id"] == "ch_2"
    # charge_card (and what follows it) ran again, before ship; validate, reserve_stock and
    # gift_wrap were reused.
    assert "charge_card" in shop.calls
    assert "ship" in shop.calls
    assert shop.calls.index("charge_card") < shop.calls.index("ship")
    assert {"validate", "reserve_stock", "gift_wrap"}.isdisjoint(shop.calls)
    assert engine.task_context(forked.execution_id, "charge_card")["charge_id"] == "ch_2"
    # The original execution is untouched.
    assert engine.get(failed.execution_id).status == "failed"


def test_fork_from_the_failing_task_with_a_patch_charges_again(engine: Engine) -> None:
    shop, failed = failed_shipment(engine)
    forked = engine.fork(failed.execution_id, "ship", {"gift_wrapped": False})
    assert forked.status == "completed", forked.error
    assert shop.payments.charge_ids == ["ch_1", "ch_2"]
    assert shop.carrier.shipments[-1]["charge_id"] == "ch_2"
    assert shop.carrier.shipments[-1]["gift"] is False  # the patch reached ship's input


def test_retry_after_compensation_charges_again(engine: Engine) -> None:
    shop, failed = failed_shipment(engine)
    retried = engine.retry(failed.execution_id)

    assert retried.execution_id == failed.execution_id
    assert retried.status == "completed", retried.error
    assert shop.payments.charge_ids == ["ch_1", "ch_2"]
    assert shop.payments.refunds == ["ch_1"]
    assert retried.context["charge_id"] == "ch_2"
    assert shop.carrier.shipments[-1]["charge_id"] == "ch_2"
    assert shop.calls.index("charge_card") < shop.calls.index("ship")
    assert "validate" not in shop.calls  # completed, uncompensated work is kept
    assert retried.tasks["charge_card"].status == "completed"
    assert retried.tasks["charge_card"].compensation is None


def test_the_example_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.order_workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr
    assert ": completed" in done.stdout
    assert "shipped: TRK-A-1001-1 (charge ch_1)" in done.stdout
