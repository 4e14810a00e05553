"""current_request(): a participant reads the request's saga, step and idempotency key, and uses
the key to perform its side effect once when the request reaches it again."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any
from uuid import UUID

import pytest

from durably.broker import InMemoryBroker, Message
from durably.context import SagaContext
from durably.exceptions import ServiceError
from durably.participants import RequestInfo, current_request
from durably.saga import Saga
from durably.saga_execution import SagaExecution, SagaStatus
from durably.saga_manager import DEFAULT_REPLY_TO, SagaManager
from durably.saga_messages import SagaRequest, SagaResponse
from durably.saga_repository import SagaExecutionRepository


def charge(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("payments", {"amount": ctx.amount})


def charged(ctx: SagaContext, response: SagaResponse) -> None:
    ctx.payment = response.content()["payment"]


def mark_done(ctx: SagaContext) -> None:
    ctx.done = True


PAY = (
    Saga("participants-pay").local_step(mark_done).remote_step(charge).on_success(charged).commit()
)

KINDS = ["sync", "async"]


class Ledger:
    """A participant's own store: the side effects it performed, by idempotency key."""

    def __init__(self) -> None:
        self.deliveries: list[RequestInfo | None] = []
        self.charges: dict[str, dict[str, Any]] = {}  # idempotency key -> the reply it gave
        self.side_effects: list[int] = []

    def handle(self, content: dict[str, Any]) -> dict[str, Any]:
        info = current_request()
        self.deliveries.append(info)
        assert info is not None
        assert info.idempotency_key is not None
        if info.idempotency_key in self.charges:
            return self.charges[info.idempotency_key]  # a repeat: the same reply, no new charge
        self.side_effects.append(content["amount"])
        result = {"payment": f"P-{len(self.side_effects)}"}
        self.charges[info.idempotency_key] = result
        return result


def serve_ledger(broker: InMemoryBroker, ledger: Ledger, kind: str) -> None:
    if kind == "sync":
        broker.service("payments")(ledger.handle)
        return

    @broker.service("payments")
    async def payments(content: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # the context survives a suspension
        return ledger.handle(content)


def finished(execution: Any) -> SagaExecution:
    assert isinstance(execution, SagaExecution)
    return execution


@pytest.mark.parametrize("kind", KINDS)
def test_a_handler_sees_the_saga_step_and_key_of_its_request(kind: str) -> None:
    ledger = Ledger()
    broker = InMemoryBroker()
    serve_ledger(broker, ledger, kind)
    manager = SagaManager(storage=SagaExecutionRepository("sqlite://:memory:"), broker_pool=broker)
    execution = finished(asyncio.run(manager.run(definition=PAY, context={"amount": 5})))
    assert execution.status is SagaStatus.Finished
    assert execution.context["payment"] == "P-1"
    [request] = [m for m in broker.sent if m.topic == "payments"]
    assert ledger.deliveries == [
        RequestInfo(
            saga=str(execution.uuid),
            step="1",
            idempotency_key=f"{execution.uuid}:1:execute",
            target="payments",
        )
    ]
    assert ledger.deliveries[0] == RequestInfo(
        saga=request.headers["saga"],
        step=request.headers["step"],
        idempotency_key=request.headers["idempotency_key"],
        target="payments",
    )


def test_request_info_is_frozen() -> None:
    info = RequestInfo(saga=None, step=None, idempotency_key="k", target="t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.idempotency_key = "other"  # type: ignore[misc]


def test_outside_a_handler_there_is_no_current_request() -> None:
    assert current_request() is None

    async def main() -> None:
        assert current_request() is None
        broker = InMemoryBroker()
        seen: list[RequestInfo | None] = []

        @broker.service("echo")
        def echo(content: Any) -> Any:
            seen.append(current_request())
            return content

        @broker.service("broken")
        def broken(content: Any) -> Any:
            seen.append(current_request())
            raise ServiceError("no")

        @broker.service("crashing")
        async def crashing(content: Any) -> Any:
            seen.append(current_request())
            raise RuntimeError("boom")

        # serve() called in this task: the request info is gone once it returns, whatever
        # the handler did.
        for target in ("echo", "broken", "crashing"):
            await broker.serve(target, Message(target, "1", {"reply_to": "replies"}))
            assert current_request() is None
        assert seen == [
            RequestInfo(None, None, None, target) for target in ("echo", "broken", "crashing")
        ]
        assert [m.headers["status"] for m in broker.sent] == ["200", "400", "500"]

    asyncio.run(main())
    assert current_request() is None


def test_concurrent_requests_each_see_their_own() -> None:
    broker = InMemoryBroker()
    seen: dict[str, RequestInfo | None] = {}

    @broker.service("slow")
    async def slow(content: str) -> str:
        await asyncio.sleep(0.01)  # the other deliveries run meanwhile
        seen[content] = current_request()
        return content

    async def main() -> None:
        for n in range(3):
            headers = {"saga": f"s{n}", "step": str(n), "idempotency_key": f"k{n}"}
            await broker.publish(Message("slow", f'"{n}"', headers))
        await broker.join()

    asyncio.run(main())
    assert seen == {
        str(n): RequestInfo(saga=f"s{n}", step=str(n), idempotency_key=f"k{n}", target="slow")
        for n in range(3)
    }


@pytest.mark.parametrize("kind", KINDS)
def test_a_resent_request_has_the_same_key_and_the_side_effect_happens_once(kind: str) -> None:
    repo = SagaExecutionRepository("sqlite://:memory:")
    ledger = Ledger()  # the participant's store outlives the crashed process

    # First process: the participant handles the request and replies, but the reply is never
    # applied (nobody listens on the reply queue, and the process goes away).
    first = InMemoryBroker()
    serve_ledger(first, ledger, kind)

    async def first_process() -> UUID:
        uuid = await SagaManager(storage=repo, broker_pool=first).run(
            definition=PAY, context={"amount": 7}, pause_on_disk=True, return_execution=False
        )
        assert isinstance(uuid, UUID)
        await first.join()
        assert first.pending(DEFAULT_REPLY_TO) == 1  # the lost reply
        return uuid

    uuid = asyncio.run(first_process())
    assert ledger.side_effects == [7]
    assert asyncio.run(repo.load(uuid)).status is SagaStatus.Paused

    # Second process: resume() sends the pending request again, under the same key.
    second = InMemoryBroker()
    serve_ledger(second, ledger, kind)
    execution = finished(asyncio.run(SagaManager(storage=repo, broker_pool=second).resume(uuid)))

    assert execution.status is SagaStatus.Finished
    assert execution.context == {"amount": 7, "done": True, "payment": "P-1"}
    assert len(ledger.deliveries) == 2
    a, b = ledger.deliveries
    assert a is not None
    assert a == b  # same saga, step, target and idempotency key
    assert a.idempotency_key == f"{uuid}:1:execute"
    assert ledger.side_effects == [7]  # charged once
    assert ledger.charges == {f"{uuid}:1:execute": {"payment": "P-1"}}


# -- the inbox: broker.serve(..., store=...) ---------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "error"])
def test_serve_with_a_store_answers_a_repeated_request_from_the_inbox(
    tmp_path: Any, outcome: str
) -> None:
    from durably.backends import open_store

    store = open_store(f"sqlite:///{tmp_path}/inbox.db")
    broker = InMemoryBroker()
    calls: list[Any] = []

    @broker.service("inbox-payments")
    def pay(content: Any) -> Any:
        calls.append(content)
        if outcome == "error":
            raise ServiceError({"declined": len(calls)})
        return {"payment": len(calls)}

    headers = {"saga": "s", "step": "1", "reply_to": "inbox-replies", "idempotency_key": "k-1"}
    request = Message("inbox-payments", '{"amount": 3}', {**headers, "token": "t"})

    async def main() -> None:
        await broker.serve("inbox-payments", request, store=store)
        await broker.serve("inbox-payments", request, store=store)  # redelivered
        other = Message("inbox-payments", '{"amount": 4}', {**headers, "idempotency_key": "k-2"})
        await broker.serve("inbox-payments", other, store=store)  # another request: handled

    try:
        asyncio.run(main())
    finally:
        store.close()
    assert calls == [{"amount": 3}, {"amount": 4}]
    first, second, third = [m for m in broker.sent if m.topic == "inbox-replies"]
    assert (first.body, dict(first.headers)) == (second.body, dict(second.headers))
    assert first.headers["token"] == "t"  # the token is echoed, from the inbox too
    assert first.headers["status"] == ("200" if outcome == "success" else "400")
    assert third.body != first.body
