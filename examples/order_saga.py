"""Seed 001's order processing saga, with inventory and payment services, and its monitored
variant: the snippets "Context in Saga Steps" and "Context Debugging and Monitoring".

The snippets' code is kept as written, apart from the import line. What they use without
defining (the compensations, ``validate_order``, the two services, a ``main``) comes after
them, marked as such.

As written, ``create_inventory_request`` reads ``context.items``: that is the mapping's
``items`` method, not the "items" key (SPEC §2: method names stay methods; minos behaves the
same), so the request cannot be encoded and the saga errors at its second step, cleanly.
Reading ``context["items"]`` instead makes the whole order go through (see ``main``).

    PYTHONPATH=src python examples/order_saga.py
"""

# The snippets keep the seed's own style; only what this file adds follows ours.
# ruff: noqa: E501

import asyncio
import json
from datetime import datetime

from durably import (
    InMemoryBroker,
    Saga,
    SagaContext,
    SagaExecutionRepository,
    SagaManager,
    SagaRequest,
    ServiceError,
)


# --- snippet: "Context in Saga Steps" -----------------------------------------------------------
# fmt: off
def create_order_processing_saga():
    saga = Saga()

    # Step 1: Validate order
    saga.local_step().on_execute(validate_order_data)

    # Step 2: Reserve inventory
    saga.remote_step() \
        .on_execute(create_inventory_request) \
        .on_success(handle_inventory_success) \
        .on_failure(release_reservation)

    # Step 3: Process payment
    saga.remote_step() \
        .on_execute(create_payment_request) \
        .on_success(handle_payment_success) \
        .on_failure(refund_payment)

    return saga.commit()

# Context flows through all steps
def validate_order_data(context):
    """Local step - modify context directly"""
    if not context.get("total") or context.total <= 0:
        raise ValueError("Invalid order total")

    # Add validation timestamp
    context.validated_at = datetime.utcnow().isoformat()
    return context

def create_inventory_request(context):
    """Remote step - use context to create request"""
    return SagaRequest(
        target="inventory-service",
        content={
            "items": context.items,
            "order_id": context.order_id
        }
    )

def handle_inventory_success(context, response):
    """Success handler - update context with response data"""
    reservation_data = response.content()
    context.reservation_id = reservation_data["reservation_id"]
    context.inventory_status = "reserved"
    return context

def create_payment_request(context):
    """Payment step - access multiple context fields"""
    return SagaRequest(
        target="payment-service",
        content={
            "amount": context.total,
            "customer_id": context.customer_id,
            "order_id": context.order_id,
            "payment_method": context.get("payment_method", "default")
        }
    )

def handle_payment_success(context, response):
    """Update context with payment details"""
    payment_data = response.content()
    context.payment_id = payment_data["payment_id"]
    context.transaction_id = payment_data["transaction_id"]
    context.payment_status = "completed"
    return context


# fmt: on


# --- snippet: "Context Debugging and Monitoring" -------------------------------------------------
# fmt: off
def log_context_state(context: SagaContext, step_name: str):
    """Log context state for debugging."""
    print(f"[{datetime.utcnow()}] Context at {step_name}:")
    for key, value in context.items():
        print(f"  {key}: {value}")
    print()

def create_monitored_saga():
    saga = Saga()

    # Add monitoring to each step
    saga.local_step().on_execute(lambda ctx: log_context_state(ctx, "start") or validate_order(ctx))

    saga.remote_step() \
        .on_execute(lambda ctx: log_context_state(ctx, "payment_request") or create_payment_request(ctx)) \
        .on_success(lambda ctx, resp: log_context_state(ctx, "payment_success") or handle_payment_success(ctx, resp))

    return saga.commit()

# Context snapshots for debugging
class ContextSnapshot:
    def __init__(self, context: SagaContext, step_name: str):
        self.step_name = step_name
        self.timestamp = datetime.utcnow().isoformat()
        self.data = dict(context)  # Create snapshot copy

    def to_json(self) -> str:
        return json.dumps({
            "step": self.step_name,
            "timestamp": self.timestamp,
            "data": self.data
        }, indent=2)

# Usage in saga steps
def debug_step_with_snapshot(context):
    snapshot = ContextSnapshot(context, "debug_checkpoint")
    print(snapshot.to_json())

    # Continue with step logic
    context.debug_checkpoint = snapshot.timestamp
    return context


# fmt: on

# --- what the snippets leave out ------------------------------------------------------------------


def release_reservation(context):
    """Compensates step 2: give the reserved items back."""
    return SagaRequest("inventory-service", {"release": context.reservation_id})


def refund_payment(context):
    """Compensates step 3 (when its success handler fails after the charge)."""
    return SagaRequest("payment-service", {"refund": context.payment_id})


def validate_order(context):
    """The monitored saga's validation: a positive total."""
    if context.get("total", 0) <= 0:
        raise ValueError("Invalid order total")
    context.validated = True


broker = InMemoryBroker()
stock = {"ITEM1": 10, "ITEM2": 5}
reservations: dict[str, list[dict]] = {}
payments: dict[str, dict] = {}


@broker.service("inventory-service")
def inventory_service(content):
    if "release" in content:
        for item in reservations.pop(content["release"]):
            stock[item["sku"]] += item["quantity"]
        return {"released": content["release"]}
    for item in content["items"]:
        if stock.get(item["sku"], 0) < item["quantity"]:
            raise ServiceError({"reason": f"out of stock: {item['sku']}"})
    for item in content["items"]:
        stock[item["sku"]] -= item["quantity"]
    reservation_id = f"res-{content['order_id']}"
    reservations[reservation_id] = content["items"]
    return {"reservation_id": reservation_id}


@broker.service("payment-service")
async def payment_service(content):
    if "refund" in content:
        payments.pop(content["refund"])
        return {"refunded": content["refund"]}
    if content["payment_method"] == "expired_card":
        raise RuntimeError("card processor unavailable")
    payment_id = f"pay-{content['order_id']}"
    payments[payment_id] = content
    return {"payment_id": payment_id, "transaction_id": f"tx-{content['order_id']}"}


async def main(url: str = "sqlite://:memory:") -> None:
    manager = SagaManager(storage=SagaExecutionRepository(url), broker_pool=broker)
    context = SagaContext(
        order_id=12345,
        customer_id="cust_456",
        items=[{"sku": "ITEM1", "quantity": 2}],
        total=99.99,
    )
    execution = await manager.run(
        definition=create_order_processing_saga(), context=context, raise_on_error=False
    )
    print(execution.status.value, execution.error)

    global create_inventory_request

    def create_inventory_request(context):  # the same request, reading the "items" key
        return SagaRequest(
            "inventory-service", {"items": context["items"], "order_id": context.order_id}
        )

    execution = await manager.run(definition=create_order_processing_saga(), context=context)
    print(execution.status.value, dict(execution.context))
    execution = await manager.run(definition=create_monitored_saga(), context=context)
    print(execution.status.value, dict(execution.context))


if __name__ == "__main__":
    asyncio.run(main())
