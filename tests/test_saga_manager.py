"""SagaManager: waiting for replies, pausing on disk, resuming anywhere, duplicates, timeouts."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any
from uuid import UUID, uuid4

import pytest

import durably.saga
from durably.broker import InMemoryBroker, Message
from durably.context import SagaContext
from durably.exceptions import (
    SagaDefinitionNotFound,
    SagaExecutionNotFoundException,
    SagaFailedExecutionException,
    SagaTimeoutException,
)
from durably.saga import Saga
from durably.saga_execution import SagaExecution, SagaStatus, SagaStepStatus
from durably.saga_manager import DEFAULT_REPLY_TO, SagaManager
from durably.saga_messages import SagaRequest, SagaResponse
from durably.saga_repository import SagaExecutionRepository

calls: Counter[str] = Counter()


def validate(ctx: SagaContext) -> None:
    calls["validate"] += 1
    ctx.valid = True


def reserve(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("inventory", {"order_id": ctx.order_id})


async def reserved(ctx: SagaContext, response: SagaResponse) -> None:
    calls["reserved"] += 1
    await asyncio.sleep(0.01)  # lets two concurrent deliveries of one reply overlap
    ctx.reservation = response.content()["reservation"]


def release(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("inventory", {"release": ctx.reservation})


def charge(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("payments", {"order_id": ctx.order_id})


def charged(ctx: SagaContext, response: SagaResponse) -> None:
    ctx.payment = response.content()["payment"]


def ship(ctx: SagaContext) -> None:
    calls["ship"] += 1
    if ctx.get("destination") == "Atlantis":
        raise RuntimeError("no carrier")
    ctx.shipped = True


ORDER = (
    Saga("order")
    .local_step(validate)
    .remote_step(reserve)
    .on_success(reserved)
    .on_failure(release)
    .remote_step(charge)
    .on_success(charged)
    .local_step(ship)
    .commit()
)


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


def participants(broker: InMemoryBroker) -> InMemoryBroker:
    @broker.service("inventory")
    def inventory(content: dict[str, Any]) -> dict[str, Any]:
        calls["inventory"] += 1
        if "release" in content:
            calls["released"] += 1
            return {"released": content["release"]}
        return {"reservation": f"R-{content['order_id']}"}

    @broker.service("payments")
    async def payments(content: dict[str, Any]) -> dict[str, Any]:
        calls["payments"] += 1
        return {"payment": f"P-{content['order_id']}"}

    return broker


def finished(execution: Any) -> SagaExecution:
    assert isinstance(execution, SagaExecution)
    return execution


def test_run_waits_for_replies_by_default(tmp_path: Any) -> None:
    repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/s.db")
    manager = SagaManager(storage=repo, broker_pool=participants(InMemoryBroker()))
    execution = finished(asyncio.run(manager.run(definition=ORDER, context={"order_id": 1})))
    assert execution.status is SagaStatus.Finished
    assert execution.context == {
        "order_id": 1,
        "valid": True,
        "reservation": "R-1",
        "payment": "P-1",
        "shipped": True,
    }
    assert asyncio.run(repo.load(execution.uuid)).context == execution.context


def test_request_messages_carry_correlation_headers_and_json(tmp_path: Any) -> None:
    broker = InMemoryBroker()  # nobody serves "inventory": the request stays queued
    manager = SagaManager(storage=SagaExecutionRepository("sqlite://:memory:"), broker_pool=broker)
    uuid = asyncio.run(
        manager.run(
            definition=ORDER, context={"order_id": 5}, pause_on_disk=True, return_execution=False
        )
    )
    assert broker.pending("inventory") == 1
    [message] = broker.sent
    assert message.topic == "inventory"
    assert json.loads(message.body) == {"order_id": 5}
    assert message.headers == {
        "saga": str(uuid),
        "step": "1",
        "reply_to": DEFAULT_REPLY_TO,
        "idempotency_key": f"{uuid}:1:execute",
        "token": message.headers["token"],
    }
    assert len(message.headers["token"]) >= 20  # secrets.token_urlsafe(16): unguessable


def test_pause_on_disk_then_resume_with_another_manager_on_the_same_database(
    store_url: str,
) -> None:
    async def first_process() -> UUID:
        repo = SagaExecutionRepository(store_url)
        manager = SagaManager(storage=repo, broker_pool=InMemoryBroker())
        uuid = await manager.run(
            definition=ORDER,
            context=SagaContext(order_id=9),
            pause_on_disk=True,
            return_execution=False,
        )
        assert isinstance(uuid, UUID)
        repo.close()
        return uuid

    uuid = asyncio.run(first_process())

    async def second_process() -> None:
        repo = SagaExecutionRepository(store_url)
        manager = SagaManager(storage=repo, broker_pool=InMemoryBroker())
        execution = await repo.load(uuid)
        assert execution.status is SagaStatus.Paused
        assert execution.context == {"order_id": 9, "valid": True}
        assert execution.paused_step is not None
        assert execution.paused_step.path == "1"
        assert execution.paused_step.status is SagaStepStatus.PausedByOnExecute

        reply = SagaResponse({"reservation": "R-9"}, uuid=uuid)
        execution = finished(await manager.run(response=reply, pause_on_disk=True))
        assert execution.status is SagaStatus.Paused  # at the payment step now
        assert execution.context["reservation"] == "R-9"

        execution = finished(
            await manager.run(
                response=SagaResponse({"payment": "P-9"}, uuid=uuid), pause_on_disk=True
            )
        )
        assert execution.status is SagaStatus.Finished
        assert execution.context["shipped"] is True

        # A duplicate reply for a step already resumed is ignored.
        again = SagaResponse({"reservation": "R-other"}, uuid=uuid)
        execution = finished(await manager.run(response=again, pause_on_disk=True))
        assert execution.status is SagaStatus.Finished
        assert execution.context["reservation"] == "R-9"
        repo.close()

    asyncio.run(second_process())
    assert calls == Counter({"validate": 1, "reserved": 1, "ship": 1})


def test_a_reply_for_an_unknown_execution_raises() -> None:
    manager = SagaManager(storage=SagaExecutionRepository("sqlite://:memory:"))
    with pytest.raises(SagaExecutionNotFoundException):
        asyncio.run(manager.run(response=SagaResponse({}, uuid=uuid4())))
    with pytest.raises(SagaExecutionNotFoundException):
        asyncio.run(manager.run(response=SagaResponse({})))
    with pytest.raises(SagaExecutionNotFoundException):
        asyncio.run(manager.storage.load("not-a-uuid"))
    with pytest.raises(TypeError):
        asyncio.run(manager.run())


def test_a_stale_reply_key_is_ignored() -> None:
    manager = SagaManager(storage=SagaExecutionRepository("sqlite://:memory:"))

    async def main() -> None:
        uuid = await manager.run(
            definition=ORDER, context={"order_id": 2}, pause_on_disk=True, return_execution=False
        )
        stale = SagaResponse({"reservation": "R"}, uuid=uuid, idempotency_key=f"{uuid}:0:execute")
        execution = finished(await manager.run(response=stale, pause_on_disk=True))
        assert execution.status is SagaStatus.Paused
        assert "reservation" not in execution.context

    asyncio.run(main())


def test_one_reply_delivered_twice_at_once_is_applied_once(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    first = SagaManager(storage=SagaExecutionRepository(url))
    second = SagaManager(storage=SagaExecutionRepository(url))

    async def main() -> None:
        uuid = await first.run(
            definition=ORDER, context={"order_id": 3}, pause_on_disk=True, return_execution=False
        )
        key = f"{uuid}:1:execute"
        replies = [
            SagaResponse({"reservation": name}, uuid=uuid, idempotency_key=key)
            for name in ("first", "second")
        ]
        a, b = await asyncio.gather(
            first.run(response=replies[0], pause_on_disk=True),
            second.run(response=replies[1], pause_on_disk=True),
        )
        assert calls["reserved"] == 2  # both ran the handler on their copy...
        stored = await first.get(uuid)
        assert stored.context["reservation"] in ("first", "second")  # ...one of them was saved
        assert stored.status is SagaStatus.Paused
        # Whichever lost the race reloaded the winner's state instead of saving its own.
        assert finished(a).context["reservation"] == stored.context["reservation"]
        assert finished(b).context["reservation"] == stored.context["reservation"]

    asyncio.run(main())


def test_reply_listener_resumes_paused_executions_without_user_code() -> None:
    broker = participants(InMemoryBroker())
    repo = SagaExecutionRepository("sqlite://:memory:")
    manager = SagaManager(storage=repo, broker_pool=broker)

    async def main() -> None:
        listener = asyncio.create_task(manager.serve_replies())
        await asyncio.sleep(0)  # let it subscribe
        uuid = await manager.run(
            definition=ORDER, context={"order_id": 4}, pause_on_disk=True, return_execution=False
        )
        assert (await manager.get(uuid)).status is SagaStatus.Paused
        await broker.join()
        execution = await manager.get(uuid)
        assert execution.status is SagaStatus.Finished
        assert execution.context["payment"] == "P-4"

        # The same reply delivered again (a broker redelivery) changes nothing.
        [reply] = [
            m
            for m in broker.sent
            if m.headers.get("idempotency_key") == f"{uuid}:1:execute"
            and m.topic == DEFAULT_REPLY_TO
        ]
        await broker.publish(reply)
        await broker.join()
        assert calls["reserved"] == 1
        listener.cancel()

    asyncio.run(main())


def test_reply_listener_drops_replies_it_can_never_apply(caplog: pytest.LogCaptureFixture) -> None:
    broker = InMemoryBroker()
    manager = SagaManager(storage=SagaExecutionRepository("sqlite://:memory:"), broker_pool=broker)

    async def main() -> None:
        listener = asyncio.create_task(manager.serve_replies())
        await asyncio.sleep(0)  # let it subscribe
        headers = {"saga": str(uuid4()), "idempotency_key": "k", "status": "200"}
        await broker.publish(Message(DEFAULT_REPLY_TO, "{}", headers))
        await broker.join()
        assert broker.pending(DEFAULT_REPLY_TO) == 0
        listener.cancel()

    asyncio.run(main())
    assert "reply dropped" in caplog.text


def test_a_request_waits_for_its_service_to_appear() -> None:
    broker = InMemoryBroker()
    manager = SagaManager(storage=SagaExecutionRepository("sqlite://:memory:"), broker_pool=broker)

    async def main() -> SagaExecution:
        running = asyncio.create_task(manager.run(definition=ORDER, context={"order_id": 6}))
        await asyncio.sleep(0.05)
        assert broker.pending("inventory") == 1
        assert not running.done()
        participants(broker)
        return finished(await asyncio.wait_for(running, 5))

    assert asyncio.run(main()).status is SagaStatus.Finished


def test_timeout_leaves_the_execution_saved_and_a_late_reply_resumes_it() -> None:
    broker = InMemoryBroker()
    repo = SagaExecutionRepository("sqlite://:memory:")
    manager = SagaManager(storage=repo, broker_pool=broker)

    async def main() -> None:
        with pytest.raises(SagaTimeoutException) as info:
            await manager.run(definition=ORDER, context={"order_id": 8}, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        [summary] = repo.list_executions()
        assert summary.status is SagaStatus.Paused
        listener = asyncio.create_task(manager.serve_replies())
        await asyncio.sleep(0)  # let it subscribe
        participants(broker)  # the late service replies to the waiter that gave up
        await broker.join()
        assert (await manager.get(summary.id)).status is SagaStatus.Finished
        listener.cancel()

    asyncio.run(main())


def test_resume_sends_the_pending_request_again() -> None:
    repo = SagaExecutionRepository("sqlite://:memory:")
    lost = InMemoryBroker()  # a broker whose messages are lost with its process
    uuid = asyncio.run(
        SagaManager(storage=repo, broker_pool=lost).run(
            definition=ORDER, context={"order_id": 11}, pause_on_disk=True, return_execution=False
        )
    )
    broker = participants(InMemoryBroker())
    execution = finished(asyncio.run(SagaManager(storage=repo, broker_pool=broker).resume(uuid)))
    assert execution.status is SagaStatus.Finished
    assert broker.sent[0].headers["idempotency_key"] == lost.sent[0].headers["idempotency_key"]


class Crash(BaseException):
    """Stands for the process dying: nothing catches it."""


def test_resume_continues_from_the_last_finished_step() -> None:
    crash = {"armed": True}

    def fragile(ctx: SagaContext) -> None:
        calls["fragile"] += 1
        if crash["armed"]:
            crash["armed"] = False
            raise Crash
        ctx.survived = True

    saga = Saga().local_step(validate).local_step(fragile).local_step(ship).commit()
    repo = SagaExecutionRepository("sqlite://:memory:")
    manager = SagaManager(storage=repo)
    with pytest.raises(Crash):
        asyncio.run(manager.run(definition=saga, context={"order_id": 12}))
    [summary] = repo.list_executions()
    assert summary.status is SagaStatus.Running
    assert summary.context == {"order_id": 12, "valid": True}
    execution = finished(asyncio.run(manager.resume(summary.id)))
    assert execution.status is SagaStatus.Finished
    assert execution.context == {"order_id": 12, "valid": True, "survived": True, "shipped": True}
    assert calls == Counter({"validate": 1, "fragile": 2, "ship": 1})


def test_remote_compensation_pauses_on_disk_too() -> None:
    repo = SagaExecutionRepository("sqlite://:memory:")
    manager = SagaManager(storage=repo, broker_pool=InMemoryBroker())

    async def main() -> None:
        uuid = await manager.run(
            definition=ORDER,
            context={"order_id": 13, "destination": "Atlantis"},
            pause_on_disk=True,
            return_execution=False,
        )
        await manager.run(
            response=SagaResponse({"reservation": "R-13"}, uuid=uuid), pause_on_disk=True
        )
        # ship fails after the payment reply: the reservation's release is requested.
        execution = finished(
            await manager.run(
                response=SagaResponse({"payment": "P-13"}, uuid=uuid), pause_on_disk=True
            )
        )
        assert execution.status is SagaStatus.Paused
        assert execution.pending is not None
        assert execution.pending.phase == "failure"
        assert execution.paused_step is not None
        assert execution.paused_step.status is SagaStepStatus.PausedOnFailure
        with pytest.raises(SagaFailedExecutionException) as info:
            await manager.run(
                response=SagaResponse({"released": "R-13"}, uuid=uuid), pause_on_disk=True
            )
        assert "no carrier" in str(info.value)
        execution = await manager.get(uuid)
        assert execution.status is SagaStatus.Errored
        assert execution.steps[1].status is SagaStepStatus.Compensated

    asyncio.run(main())


def test_an_unregistered_definition_is_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = SagaExecutionRepository("sqlite://:memory:")
    uuid = asyncio.run(
        SagaManager(storage=repo).run(
            definition=ORDER, context={"order_id": 14}, pause_on_disk=True, return_execution=False
        )
    )
    monkeypatch.setattr(durably.saga, "_registry", {})
    with pytest.raises(SagaDefinitionNotFound) as info:
        asyncio.run(repo.load(uuid))
    assert "'order'" in str(info.value)
    assert ORDER.fingerprint in str(info.value)
    manager = SagaManager(storage=repo)
    with pytest.raises(SagaDefinitionNotFound):
        asyncio.run(manager.run(response=SagaResponse({"reservation": "R"}, uuid=uuid)))
    assert repo.load_sync(uuid).status is SagaStatus.Paused  # the CLI needs no definition

    SagaManager(storage=repo, sagas=[ORDER])  # registers explicitly
    assert asyncio.run(repo.load(uuid)).definition is ORDER
