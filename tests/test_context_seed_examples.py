"""The minos SagaContext documentation examples (seed 001), run against durably's SagaContext.

Each snippet's body is kept as written, apart from the import line. The functions the snippets
call without defining (``apply_discount``, ``validate_order``...) are small local stubs, and
the parts that build a Saga belong to the saga tests, not here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from durably.context import SagaContext

# datetime.utcnow() is deprecated from Python 3.12; the snippets use it as written.
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")


def test_basic_context_operations(capsys: pytest.CaptureFixture[str]) -> None:
    discounts: list[Any] = []

    def apply_discount(discount: Any) -> None:
        discounts.append(discount)

    # --- snippet: "Basic Context Operations" ---
    # Initialize context with data
    context = SagaContext(
        order_id=12345, customer_id="cust_456", items=[{"sku": "ITEM1", "quantity": 2}], total=99.99
    )

    # Dictionary-style access
    print(f"Order ID: {context['order_id']}")
    context["status"] = "processing"

    # Attribute-style access
    print(f"Customer: {context.customer_id}")
    context.payment_method = "credit_card"

    # Check for data
    if "discount" in context:
        apply_discount(context.discount)

    # Get with default
    shipping_cost = context.get("shipping_cost", 0.0)
    # --- end of snippet ---

    assert capsys.readouterr().out == "Order ID: 12345\nCustomer: cust_456\n"
    assert shipping_cost == 0.0
    assert discounts == []
    assert context == {
        "order_id": 12345,
        "customer_id": "cust_456",
        "items": [{"sku": "ITEM1", "quantity": 2}],
        "total": 99.99,
        "status": "processing",
        "payment_method": "credit_card",
    }
    context["discount"] = 5
    if "discount" in context:
        apply_discount(context.discount)
    assert discounts == [5]
    assert SagaContext.from_json(context.to_json()) == context


def test_advanced_context_patterns() -> None:
    # --- snippet: "Advanced Context Patterns" (the context parts) ---
    # Nested data structures
    context = SagaContext()
    context.customer = {"id": "cust_123", "name": "John Doe", "tier": "premium"}
    context.order = {
        "items": [
            {"sku": "ITEM1", "qty": 2, "price": 25.00},
            {"sku": "ITEM2", "qty": 1, "price": 49.99},
        ],
        "shipping": {"address": "123 Main St", "method": "express"},
    }

    # Access nested data
    customer_tier = context.customer["tier"]
    first_item_sku = context.order["items"][0]["sku"]
    shipping_method = context.order["shipping"]["method"]

    # Conditional logic based on context
    def determine_processing_flow(context):
        if context.customer.get("tier") == "premium":
            return "express_processing"
        elif context.order.get("total", 0) > 100:  # noqa: RET505 (as written)
            return "standard_processing"
        else:
            return "basic_processing"

    # Context-driven step selection (create_dynamic_saga without the Saga)
    processing_type = determine_processing_flow(context)
    context.processing_type = processing_type
    # --- end of snippet ---

    assert (customer_tier, first_item_sku, shipping_method) == ("premium", "ITEM1", "express")
    assert context.processing_type == "express_processing"
    context.customer["tier"] = "basic"
    context.order["total"] = 150
    assert determine_processing_flow(context) == "standard_processing"
    context.order["total"] = 10
    assert determine_processing_flow(context) == "basic_processing"
    assert SagaContext.from_json(context.to_json()) == context


def test_context_debugging_and_monitoring(capsys: pytest.CaptureFixture[str]) -> None:
    # --- snippet: "Context Debugging and Monitoring" (without create_monitored_saga) ---
    def log_context_state(context: SagaContext, step_name: str):
        """Log context state for debugging."""
        print(f"[{datetime.utcnow()}] Context at {step_name}:")
        for key, value in context.items():
            print(f"  {key}: {value}")
        print()

    # Context snapshots for debugging
    class ContextSnapshot:
        def __init__(self, context: SagaContext, step_name: str):
            self.step_name = step_name
            self.timestamp = datetime.utcnow().isoformat()
            self.data = dict(context)  # Create snapshot copy

        def to_json(self) -> str:
            return json.dumps(
                {"step": self.step_name, "timestamp": self.timestamp, "data": self.data}, indent=2
            )

    # Usage in saga steps
    def debug_step_with_snapshot(context):
        snapshot = ContextSnapshot(context, "debug_checkpoint")
        print(snapshot.to_json())

        # Continue with step logic
        context.debug_checkpoint = snapshot.timestamp
        return context

    # --- end of snippet ---

    context = SagaContext(order_id=1, items=[{"sku": "A"}])
    log_context_state(context, "start")
    out = capsys.readouterr().out
    assert "Context at start:" in out
    assert "  order_id: 1\n" in out
    assert "  items: [{'sku': 'A'}]\n" in out

    result = debug_step_with_snapshot(context)
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == "debug_checkpoint"
    assert printed["data"] == {"order_id": 1, "items": [{"sku": "A"}]}
    assert result is context
    assert context.debug_checkpoint == printed["timestamp"]
    assert "debug_checkpoint" not in printed["data"]  # the snapshot was a copy
