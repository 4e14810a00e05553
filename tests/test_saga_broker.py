"""The in-memory broker and the participant side of the Broker interface."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest

from durably import codec
from durably.broker import InMemoryBroker, Message
from durably.exceptions import ServiceError
from durably.saga_messages import SagaResponse, SagaResponseStatus

SAGA = "12345678-1234-5678-1234-567812345678"


async def ask(broker: InMemoryBroker, target: str, content: Any) -> SagaResponse:
    """Send one request and return the reply that comes back."""
    replies: list[Message] = []

    async def collect(message: Message) -> None:
        replies.append(message)

    subscription = await broker.subscribe("replies", collect)
    await broker.request(
        target, codec.dumps_value(content), saga=SAGA, step="2", reply_to="replies", key="k-1"
    )
    await broker.join()
    await subscription.close()
    [reply] = replies
    assert reply.headers["saga"] == SAGA
    assert reply.headers["step"] == "2"
    assert reply.headers["idempotency_key"] == "k-1"
    assert "reply_to" not in reply.headers
    json.loads(reply.body)  # JSON on the wire, never pickle
    response = SagaResponse.from_message(reply)
    assert str(response.uuid) == SAGA
    assert response.idempotency_key == "k-1"
    return response


def test_sync_and_async_services_reply_success_with_their_value() -> None:
    broker = InMemoryBroker()

    @broker.service("double")
    def double(content: dict[str, Any]) -> dict[str, Any]:
        return {"value": content["value"] * 2}

    @broker.service("async-double")
    async def async_double(content: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"value": content["value"] * 2}

    for target in ("double", "async-double"):
        response = asyncio.run(ask(broker, target, {"value": Decimal("1.5")}))
        assert response.status is SagaResponseStatus.SUCCESS
        assert response.content() == {"value": Decimal("3.0")}  # typed values round-trip


def test_service_error_replies_error_with_its_content() -> None:
    broker = InMemoryBroker()

    @broker.service("picky")
    def picky(content: Any) -> Any:
        raise ServiceError({"reason": "out of stock"})

    response = asyncio.run(ask(broker, "picky", {}))
    assert response.status is SagaResponseStatus.ERROR
    assert response.content() == {"reason": "out of stock"}


def test_other_exceptions_and_unsendable_results_reply_system_error() -> None:
    broker = InMemoryBroker()

    @broker.service("buggy")
    def buggy(content: Any) -> Any:
        raise KeyError("oops")

    @broker.service("weird")
    def weird(content: Any) -> Any:
        return object()

    response = asyncio.run(ask(broker, "buggy", {}))
    assert response.status is SagaResponseStatus.SYSTEM_ERROR
    assert "KeyError" in response.content()
    response = asyncio.run(ask(broker, "weird", {}))
    assert response.status is SagaResponseStatus.SYSTEM_ERROR
    assert "cannot be sent" in response.content()


def test_a_request_for_an_unserved_target_waits_until_a_handler_appears() -> None:
    broker = InMemoryBroker()

    async def main() -> None:
        await broker.request("later", "{}", saga="s", step="0", reply_to="r", key="k")
        await broker.join()
        assert broker.pending("later") == 1

        @broker.service("later")
        def later(content: Any) -> str:
            return "served"

        await broker.join()
        assert broker.pending("later") == 0
        assert broker.pending("r") == 1

    asyncio.run(main())


def test_a_handler_registered_outside_a_loop_gets_queued_requests_later() -> None:
    broker = InMemoryBroker()
    asyncio.run(broker.request("svc", "1", saga="s", step="0", reply_to="r", key="k"))

    @broker.service("svc")
    def svc(content: int) -> int:
        return content + 1

    async def main() -> None:
        await broker.publish(Message("unrelated", "null"))  # any publish delivers
        await broker.join()

    asyncio.run(main())
    assert broker.pending("svc") == 0
    assert broker.sent[-1].body == "2"


def test_a_failing_consumer_leaves_the_message_queued_for_redelivery() -> None:
    broker = InMemoryBroker()
    attempts: list[str] = []

    async def flaky(message: Message) -> None:
        attempts.append(message.body)
        if len(attempts) == 1:
            raise ConnectionError("database down")

    async def main() -> None:
        await broker.subscribe("topic", flaky)
        await broker.publish(Message("topic", '"a"'))
        await broker.join()
        assert broker.pending("topic") == 1  # not acknowledged
        await broker.publish(Message("topic", '"b"'))
        await broker.join()

    asyncio.run(main())
    assert attempts == ['"a"', '"a"', '"b"']


def test_closed_subscription_receives_nothing() -> None:
    broker = InMemoryBroker()
    got: list[Message] = []

    async def handler(message: Message) -> None:
        got.append(message)

    async def main() -> None:
        subscription = await broker.subscribe("t", handler)
        await subscription.close()
        await broker.publish(Message("t", "1"))
        await broker.join()

    asyncio.run(main())
    assert got == []
    assert broker.pending("t") == 1


def test_service_arguments_are_checked() -> None:
    broker = InMemoryBroker()
    with pytest.raises(TypeError):
        broker.service("")
    with pytest.raises(TypeError):
        broker.service("x")("not callable")  # type: ignore[arg-type]
    assert asyncio.run(broker.start_services()) == []  # in memory they consume at once


def test_response_accepts_int_status_and_str_uuid() -> None:
    response = SagaResponse({"a": 1}, 400, SAGA)
    assert response.status is SagaResponseStatus.ERROR
    assert not response.ok
    assert str(response.uuid) == SAGA
    assert response == SagaResponse({"a": 1}, SagaResponseStatus.ERROR, response.uuid)
    assert "ERROR" in repr(response)
    with pytest.raises(ValueError):
        SagaResponse(status=418)


def test_a_reply_without_a_saga_uuid_decodes_with_none() -> None:
    reply = Message("r", '"x"', {"saga": "garbage", "status": "500"})
    response = SagaResponse.from_message(reply)
    assert response.uuid is None
    assert response.status is SagaResponseStatus.SYSTEM_ERROR
