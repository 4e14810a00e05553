"""Seed 001's "Context Validation and Type Safety": a saga whose first step validates the
context, and a factory that builds order contexts.

The snippet's code is kept as written, apart from the import line and the usage's placeholder
item list (``[...]``), which is spelled out. What it uses without defining
(``process_validated_order``, the service, a ``main``) comes after it, marked as such.

    PYTHONPATH=src python examples/saga_validation.py
"""

# The snippets keep the seed's own style; only what this file adds follows ours.
# ruff: noqa: E501, UP006, UP035

import asyncio
from datetime import datetime
from typing import Any, Dict

from durably import (
    InMemoryBroker,
    Saga,
    SagaContext,
    SagaExecutionRepository,
    SagaManager,
    SagaRequest,
)


# --- snippet: "Context Validation and Type Safety" ----------------------------------------------
# fmt: off
def validate_context_schema(context: SagaContext) -> bool:
    """Validate context has required fields with correct types."""
    required_fields = {
        "order_id": (str, int),
        "customer_id": str,
        "total": (int, float),
        "items": list
    }

    for field, expected_type in required_fields.items():
        if field not in context:
            raise ValueError(f"Required field '{field}' missing from context")

        if not isinstance(context[field], expected_type):
            raise TypeError(f"Field '{field}' must be of type {expected_type}")

    return True

def create_validated_saga():
    saga = Saga()

    # Add validation step at the beginning
    saga.local_step().on_execute(validate_context_schema)

    # Continue with business logic
    saga.remote_step().on_execute(process_validated_order)

    return saga.commit()

# Context factory pattern
class OrderContextFactory:
    @staticmethod
    def create_order_context(order_data: Dict[str, Any]) -> SagaContext:
        """Create standardized order context."""
        return SagaContext(
            order_id=order_data["id"],
            customer_id=order_data["customer_id"],
            items=order_data["items"],
            total=sum(item["price"] * item["quantity"] for item in order_data["items"]),
            created_at=datetime.utcnow().isoformat(),
            status="pending"
        )

    @staticmethod
    def create_payment_context(payment_data: Dict[str, Any], order_context: SagaContext) -> SagaContext:
        """Extend order context with payment data."""
        order_context.update(
            payment_method=payment_data["method"],
            payment_token=payment_data["token"],
            billing_address=payment_data["billing_address"]
        )
        return order_context

# Usage
order_data = {"id": "ord_123", "customer_id": "cust_456", "items": [
    {"sku": "ITEM1", "price": 25.0, "quantity": 2},
    {"sku": "ITEM2", "price": 49.99, "quantity": 1},
]}
context = OrderContextFactory.create_order_context(order_data)


# fmt: on

# --- what the snippet leaves out ------------------------------------------------------------------


def process_validated_order(context):
    return SagaRequest("order-service", {"order_id": context.order_id, "total": context.total})


broker = InMemoryBroker()


@broker.service("order-service")
async def order_service(content):
    return {"accepted": content["order_id"]}


async def main(url: str = "sqlite://:memory:") -> None:
    manager = SagaManager(storage=SagaExecutionRepository(url), broker_pool=broker)
    execution = await manager.run(definition=create_validated_saga(), context=context)
    print(execution.status.value, dict(execution.context))


if __name__ == "__main__":
    asyncio.run(main())
