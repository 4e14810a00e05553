"""Seed 001's "Advanced Context Patterns": nested context data, and a saga whose steps are
chosen from the context when it is built.

The snippet's code is kept as written, apart from the import line. What it uses without
defining (the two processing requests, the service, a ``main``) comes after it, marked as such.

    PYTHONPATH=src python examples/dynamic_saga.py
"""

# The snippets keep the seed's own style; only what this file adds follows ours.
# ruff: noqa: RET505

import asyncio

from durably import (
    InMemoryBroker,
    Saga,
    SagaContext,
    SagaExecutionRepository,
    SagaManager,
    SagaRequest,
)

# --- snippet: "Advanced Context Patterns" -------------------------------------------------------
# fmt: off
# Nested data structures
context = SagaContext()
context.customer = {
    "id": "cust_123",
    "name": "John Doe",
    "tier": "premium"
}
context.order = {
    "items": [
        {"sku": "ITEM1", "qty": 2, "price": 25.00},
        {"sku": "ITEM2", "qty": 1, "price": 49.99}
    ],
    "shipping": {
        "address": "123 Main St",
        "method": "express"
    }
}

# Access nested data
customer_tier = context.customer["tier"]
first_item_sku = context.order["items"][0]["sku"]
shipping_method = context.order["shipping"]["method"]

# Conditional logic based on context
def determine_processing_flow(context):
    if context.customer.get("tier") == "premium":
        return "express_processing"
    elif context.order.get("total", 0) > 100:
        return "standard_processing"
    else:
        return "basic_processing"

# Context-driven step selection
def create_dynamic_saga(context):
    saga = Saga()

    processing_type = determine_processing_flow(context)
    context.processing_type = processing_type

    if processing_type == "express_processing":
        saga.remote_step().on_execute(express_process_order)
    else:
        saga.remote_step().on_execute(standard_process_order)

    return saga.commit()


# fmt: on

# --- what the snippet leaves out ------------------------------------------------------------------


def express_process_order(context):
    return SagaRequest("fulfillment-service", {"speed": "express", "items": context.order["items"]})


def standard_process_order(context):
    return SagaRequest(
        "fulfillment-service", {"speed": "standard", "items": context.order["items"]}
    )


broker = InMemoryBroker()
shipped: list[dict] = []


@broker.service("fulfillment-service")
def fulfillment_service(content):
    shipped.append(content)
    return {"shipment": len(shipped)}


async def main(url: str = "sqlite://:memory:") -> None:
    manager = SagaManager(storage=SagaExecutionRepository(url), broker_pool=broker)
    saga = create_dynamic_saga(context)
    execution = await manager.run(definition=saga, context=context)
    print(execution.status.value, context.processing_type, shipped[-1]["speed"])


if __name__ == "__main__":
    asyncio.run(main())
