"""A saga run in a child process that the crash test kills with SIGKILL.

The test process imports this module too, so both sides commit the same definition: the
fingerprint hashes the callbacks' module names, hence the re-import under ``__main__`` below.
Each step appends a line to $DURABLY_MARKS when it runs, so the test can count how many times
each one really ran across the two processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from durably.broker import InMemoryBroker
from durably.context import SagaContext
from durably.saga import Saga
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest, SagaResponse
from durably.saga_repository import SagaExecutionRepository


def mark(name: str) -> None:
    with open(os.environ["DURABLY_MARKS"], "a", encoding="utf-8") as marks:
        marks.write(f"{name}\n")


broker = InMemoryBroker()


@broker.service("payments")
def payments(content: dict[str, Any]) -> dict[str, Any]:
    mark("payments")
    return {"payment": f"P-{content['order_id']}"}


def reserve(ctx: SagaContext) -> None:
    mark("reserve")
    ctx["reserved"] = True


def charge(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("payments", {"order_id": ctx["order_id"]})


def charged(ctx: SagaContext, response: SagaResponse) -> None:
    ctx["payment"] = response.content()["payment"]


def ship(ctx: SagaContext) -> None:
    mark("ship")
    # Only the child blocks: the resumed run in the test process goes straight on.
    while os.environ.get("DURABLY_BLOCK") == "ship":
        time.sleep(0.05)
    ctx["shipped"] = True


crash_saga = (
    Saga("crash_saga")
    .local_step(reserve)
    .remote_step(charge)
    .on_success(charged)
    .local_step(ship)
    .commit()
)


def main(url: str) -> None:
    manager = SagaManager(storage=SagaExecutionRepository(url), broker_pool=broker)
    asyncio.run(manager.run(definition=crash_saga, context={"order_id": 21}))


if __name__ == "__main__":
    from tests.saga_crash_app import main as imported_main

    imported_main(sys.argv[1])
