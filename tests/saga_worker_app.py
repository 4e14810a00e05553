"""The module ``durably worker`` serves in tests/test_saga_worker.py: a saga and its participant.

The worker's environment names the participant's broker (``SAGA_APP_BROKER_URL``) and its
target (``SAGA_APP_TARGET``), so that each test has topics of its own; the saga reads the target
from its context. The test process imports this module too, without them, for the saga: its
fingerprint hashes the callbacks' qualified names, so both processes must import it under the
same name. There the broker is an unused InMemoryBroker.
"""

from __future__ import annotations

import os
from typing import Any

from durably.broker import broker_from_url
from durably.context import SagaContext
from durably.exceptions import ServiceError
from durably.saga import Saga
from durably.saga_messages import SagaRequest, SagaResponse

broker = broker_from_url(os.environ.get("SAGA_APP_BROKER_URL", "memory://"))


@broker.service(os.environ.get("SAGA_APP_TARGET", "saga-worker-app-inventory"))
def inventory(content: dict[str, Any]) -> dict[str, Any]:
    if content["qty"] > 10:
        raise ServiceError({"reason": "out of stock"})
    return {"reservation": f"R-{content['order_id']}"}


def validate(ctx: SagaContext) -> None:
    ctx["validated"] = True


def unvalidate(ctx: SagaContext) -> None:
    ctx["compensated"] = True


def reserve(ctx: SagaContext) -> SagaRequest:
    return SagaRequest(ctx["target"], {"order_id": ctx["order_id"], "qty": ctx["qty"]})


def reserved(ctx: SagaContext, response: SagaResponse) -> None:
    ctx["reservation"] = response.content()["reservation"]


def rejected(ctx: SagaContext, response: SagaResponse) -> Exception:
    return RuntimeError(f"reservation rejected: {response.content()['reason']}")


def ship(ctx: SagaContext) -> None:
    ctx["shipped"] = True


saga = (
    Saga("saga_worker_app")
    .local_step(validate)
    .on_failure(unvalidate)
    .remote_step(reserve)
    .on_success(reserved)
    .on_error(rejected)
    .local_step(ship)
    .commit()
)
