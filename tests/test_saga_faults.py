"""Sagas under broker faults, on every broker: the in-memory one, RabbitMQ and NATS JetStream.

The manager talks to its broker through a cut-able link: for the network brokers a TCP proxy
(``tests/tcp_proxy.py``) between the client and the server, for the in-memory broker a wrapper
whose calls raise ``ConnectionResetError`` (not a ``BrokerError``: a driver may raise anything)
while it is cut. Participants use a direct connection, as another process would. Every test
ends with the saga finished or compensated, nothing left in the outbox and no participant
called twice for one request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from durably.backends import open_store
from durably.broker import Broker, InMemoryBroker, Message, MessageHandler, Subscription
from durably.exceptions import BrokerError
from durably.nats_broker import NatsBroker
from durably.saga import Saga
from durably.saga_execution import SagaExecution, SagaStatus
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest, SagaResponse
from durably.saga_repository import SagaExecutionRepository
from tests.tcp_proxy import TcpProxy
from tests.test_brokers import (
    ACK_WAIT,
    IN_CI,
    KINDS,
    NATS_URL,
    RABBITMQ_URL,
    REDELIVERY,
    TrackedRabbitMQBroker,
    delete_queues,
    delete_stream,
    server_problem,
)

pytestmark = pytest.mark.broker

WAIT = 30.0


class Link(Broker):
    """The in-memory broker seen through a link that can be cut."""

    def __init__(self, inner: InMemoryBroker) -> None:
        super().__init__()
        self.inner, self.up = inner, True

    def _check(self) -> None:
        if not self.up:
            raise ConnectionResetError("the link to the broker is cut")

    async def publish(self, message: Message) -> None:
        self._check()
        await self.inner.publish(message)

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        self._check()
        return await self.inner.subscribe(topic, handler, durable=durable)


@dataclass
class Rig:
    """A manager-side broker behind a cut-able link and a participant-side broker."""

    kind: str
    manager_broker: Broker
    participant: Broker
    cut: Callable[[], None]
    restore: Callable[[], None]
    calls: Counter[str] = field(default_factory=Counter)
    closers: list[Any] = field(default_factory=list)


def _skip_without(kind: str) -> None:
    problem = server_problem(kind)
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: the broker tests must run)", pytrace=False)
        pytest.skip(problem)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    if name != "memory":
        _skip_without(name)
    return name


@asynccontextmanager
async def rig(kind: str, participant_cls: type[Broker] | None = None) -> AsyncIterator[Rig]:
    """Brokers for one test, closed (and their queues or stream deleted) afterwards."""
    if kind == "memory":
        inner = (participant_cls or InMemoryBroker)(redelivery_delay=REDELIVERY)  # type: ignore[call-arg]
        assert isinstance(inner, InMemoryBroker)
        link = Link(inner)

        def cut() -> None:
            link.up = False

        def restore() -> None:
            link.up = True

        yield Rig(kind, link, inner, cut, restore)
        return
    proxy = await TcpProxy("127.0.0.1", 5672 if kind == "rabbitmq" else 4222).start()
    stream = f"DURABLY_TEST_{uuid.uuid4().hex[:12]}"
    if kind == "rabbitmq":
        assert RABBITMQ_URL.endswith("127.0.0.1:5672/")
        via = proxy.url("amqp", "guest:guest", "/?reconnect_interval=0.5")
        manager_broker: Broker = TrackedRabbitMQBroker(via, redelivery_delay=REDELIVERY)
        cls = participant_cls or TrackedRabbitMQBroker
        participant = cls(RABBITMQ_URL, redelivery_delay=REDELIVERY)  # type: ignore[call-arg]
        participant.topics = manager_broker.topics  # type: ignore[attr-defined]
    else:
        assert NATS_URL.endswith("127.0.0.1:4222")
        via = proxy.url("nats")
        manager_broker = NatsBroker(
            via, stream=stream, redelivery_delay=REDELIVERY, ack_wait=ACK_WAIT
        )
        cls = participant_cls or NatsBroker
        participant = cls(  # type: ignore[call-arg]
            NATS_URL, stream=stream, redelivery_delay=REDELIVERY, ack_wait=ACK_WAIT
        )
    try:
        yield Rig(kind, manager_broker, participant, proxy.cut, proxy.restore)
    finally:
        proxy.restore()
        for broker in (manager_broker, participant):
            with suppress(BrokerError):
                await broker.close()
        await proxy.close()
        if kind == "rabbitmq":
            await delete_queues(manager_broker.topics)  # type: ignore[attr-defined]
        else:
            await delete_stream(stream)


def serve_counting(r: Rig, *targets: str, fail: str | None = None) -> None:
    for target in targets:

        def handler(content: Any, target: str = target) -> Any:
            r.calls[target] += 1
            return {"from": target, "got": content}

        r.participant.service(target)(handler)


def three_steps(prefix: str, seen: list[str]) -> Saga:
    def record(name: str) -> Callable[[Any, SagaResponse], None]:
        def on_success(ctx: Any, response: SagaResponse) -> None:
            seen.append(name)
            ctx[name] = response.content()["from"]

        return on_success

    saga = Saga()
    for n in range(3):
        target = f"{prefix}-{n}"
        saga.remote_step(
            lambda ctx, target=target: SagaRequest(target, {"order": ctx["order"]})
        ).on_success(record(target))
    return saga.commit()


def run_test(main: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


async def until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


def repository(tmp_path: Path) -> SagaExecutionRepository:
    return SagaExecutionRepository(f"sqlite:///{tmp_path}/sagas.db")


def finished(value: SagaExecution | Any) -> SagaExecution:
    assert isinstance(value, SagaExecution)
    return value


# -- the broker is down ----------------------------------------------------------------------


def test_broker_down_at_start_delays_the_saga_without_failing_or_repeating_it(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"down-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    saga = three_steps(prefix, seen)
    repo = repository(tmp_path)

    async def main() -> None:
        async with rig(kind) as r:
            serve_counting(r, *(f"{prefix}-{n}" for n in range(3)))
            await r.participant.start_services()
            r.cut()
            manager = SagaManager(repo, r.manager_broker)
            running = asyncio.create_task(manager.run(saga, {"order": 7}, timeout=WAIT))
            await until(lambda: bool(repo.list_executions()), "the execution is saved")
            [summary] = repo.list_executions()
            await until(lambda: repo.outbox_count(summary.id) == 1, "the request is queued")
            await asyncio.sleep(1.0)  # the relay retries meanwhile
            assert not running.done()
            assert repo.load_sync(summary.id).status is SagaStatus.Paused  # never compensated
            assert sum(r.calls.values()) == 0
            r.restore()
            execution = finished(await running)
            assert execution.status is SagaStatus.Finished
            assert seen == [f"{prefix}-{n}" for n in range(3)]
            assert r.calls == {f"{prefix}-{n}": 1 for n in range(3)}
            assert repo.outbox_count(execution.uuid) == 0
            await manager.close()

    with caplog.at_level(logging.WARNING, logger="durably"):
        run_test(main)
    retries = [r for r in caplog.records if getattr(r, "action", None) == "saga_outbox_retry"]
    # At most one warning per request, not one per attempt (a NATS client may also just wait
    # inside one publish, retrying its connection, until the link is back).
    assert len(retries) <= 1
    assert all(record.execution_id for record in retries)  # type: ignore[attr-defined]


def test_broker_down_mid_saga_finishes_it_once_the_broker_is_back(
    kind: str, tmp_path: Path
) -> None:
    prefix = f"mid-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    saga = three_steps(prefix, seen)
    repo = repository(tmp_path)
    inbox = open_store(f"sqlite:///{tmp_path}/participant.db")

    async def main() -> None:
        async with rig(kind) as r:
            serve_counting(r, f"{prefix}-0", f"{prefix}-2")

            @r.participant.service(f"{prefix}-1")
            async def second(content: Any) -> Any:
                # The manager's link goes down while the participant works; it answers anyway.
                r.calls[f"{prefix}-1"] += 1
                if r.calls[f"{prefix}-1"] == 1:
                    r.cut()
                    asyncio.get_running_loop().call_later(1.5, r.restore)
                return {"from": f"{prefix}-1"}

            # The link may drop before the manager hears the broker's confirmation of a
            # publish: its relay then sends the request again (at least once), and the
            # participant's inbox answers the copy without calling the handler.
            await r.participant.start_services(store=inbox)
            async with SagaManager(repo, r.manager_broker) as manager:
                execution = finished(await manager.run(saga, {"order": 1}, timeout=WAIT))
            assert execution.status is SagaStatus.Finished
            assert seen == [f"{prefix}-{n}" for n in range(3)]
            assert r.calls == {f"{prefix}-{n}": 1 for n in range(3)}
            assert repo.outbox_count(execution.uuid) == 0

    try:
        run_test(main)
    finally:
        inbox.close()


def test_a_broker_that_never_comes_back_is_a_broker_error_with_the_uuid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = repository(tmp_path)

    class Broken(Broker):
        async def publish(self, message: Message) -> None:
            raise KeyError("a driver bug, not even a ConnectionError")

        async def subscribe(
            self, topic: str, handler: MessageHandler, *, durable: bool = True
        ) -> Subscription:
            raise KeyError("a driver bug")

    saga = Saga().remote_step(lambda ctx: SagaRequest("nobody", {})).commit()

    async def main() -> None:
        async with SagaManager(repo, Broken()) as manager:
            with pytest.raises(BrokerError) as caught:
                await manager.run(saga, {}, timeout=0.5)
            [summary] = repo.list_executions()
            assert caught.value.uuid == summary.id
            assert str(summary.id) in str(caught.value)
            assert isinstance(caught.value.__cause__, KeyError)
            assert summary.status is SagaStatus.Paused  # not compensated by the outage
            assert repo.outbox_count(summary.id) == 1  # the request is kept for later
            # pause_on_disk returns at once: the request waits in the outbox.
            paused = finished(await manager.run(saga, {}, pause_on_disk=True))
            assert paused.status is SagaStatus.Paused

    with caplog.at_level(logging.DEBUG, logger="durably"):
        run_test(main)
    records = [r for r in caplog.records if r.name.startswith("durably.")]
    assert records
    for record in records:  # SPEC §8: the structured fields on every record
        for name in ("execution_id", "workflow", "task", "attempt", "action"):
            assert hasattr(record, name), (record.getMessage(), name)


# -- replies that must not be applied ----------------------------------------------------------


@pytest.mark.parametrize("waiting", ["on-disk", "in-memory"])
def test_duplicate_and_forged_replies_are_ignored(
    kind: str, waiting: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # On disk the reply listener judges replies against the stored step; in memory the
    # waiting run's private consumer does (a duplicate it no longer waits for goes on to the
    # listener).
    prefix = f"forged-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    saga = three_steps(prefix, seen)
    repo = repository(tmp_path)

    base: type[Broker] = {
        "memory": InMemoryBroker,
        "rabbitmq": TrackedRabbitMQBroker,
        "nats": NatsBroker,
    }[kind]
    Recording = type("Recording", (RecordReplies, base), {"replies": []})

    async def main() -> None:
        async with rig(kind, Recording) as r:
            serve_counting(r, f"{prefix}-0", f"{prefix}-2")
            sent: list[Message] = []  # the forged replies

            @r.participant.service(f"{prefix}-1")
            async def second(content: Any) -> Any:
                from durably.participants import current_request

                info = current_request()
                assert info is not None
                r.calls[f"{prefix}-1"] += 1
                headers = {"saga": info.saga or "", "step": info.step or "", "status": "200"}
                key = info.idempotency_key or ""
                # Whoever can publish on the reply topic, without the request's token:
                for forged in (
                    {**headers, "idempotency_key": key, "token": "guessed"},
                    {**headers, "idempotency_key": key},
                    headers,
                ):
                    topic = manager.reply_to if waiting == "on-disk" else manager._private_topic
                    message = Message(topic, '{"from": "forger"}', forged)
                    sent.append(message)
                    await r.participant.publish(message)
                return {"from": f"{prefix}-1"}

            await r.participant.start_services()
            manager = SagaManager(repo, r.manager_broker)
            listener = asyncio.create_task(manager.serve_replies())
            await asyncio.sleep(0.3)
            uuid_ = await manager.run(
                saga,
                {"order": 3},
                pause_on_disk=waiting == "on-disk",
                return_execution=False,
                timeout=WAIT,
            )
            await until(
                lambda: repo.load_sync(uuid_).status is SagaStatus.Finished, "the saga finishes"
            )
            # A duplicate of a real reply (token and all), after its step moved on: ignored.
            [real] = [m for m in Recording.replies if m.headers.get("step") == "1"]
            await r.participant.publish(real)
            await asyncio.sleep(5 * REDELIVERY)
            execution = await repo.load(uuid_)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await manager.close()
            assert execution.status is SagaStatus.Finished
            assert execution.context[f"{prefix}-1"] == f"{prefix}-1"  # the forger's never won
            assert seen == [f"{prefix}-{n}" for n in range(3)]
            assert r.calls == {f"{prefix}-{n}": 1 for n in range(3)}

    with caplog.at_level(logging.INFO, logger="durably"):
        run_test(main)
    actions = Counter(getattr(record, "action", None) for record in caplog.records)
    # Each forged reply logged once (none redelivered), and the duplicate once.
    assert actions["saga_reply_forged"] == 3
    assert actions["saga_reply_ignored"] == 1


def test_undecodable_replies_are_rejected_once_and_never_redelivered(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"poison-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    saga = three_steps(prefix, seen)
    repo = repository(tmp_path)

    async def main() -> None:
        async with rig(kind) as r:
            serve_counting(r, *(f"{prefix}-{n}" for n in range(3)))
            await r.participant.start_services()
            manager = SagaManager(repo, r.manager_broker)
            listener = asyncio.create_task(manager.serve_replies())
            await asyncio.sleep(0.3)
            await r.participant.publish(Message(manager.reply_to, "not json {", {"status": "200"}))
            await r.participant.publish(Message(manager.reply_to, "{}", {"status": "OK"}))
            uuid_ = await manager.run(
                saga, {"order": 4}, pause_on_disk=True, return_execution=False
            )
            await until(
                lambda: repo.load_sync(uuid_).status is SagaStatus.Finished, "the saga finishes"
            )
            await asyncio.sleep(8 * REDELIVERY)  # a redelivered poison message would be back
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await manager.close()

    with caplog.at_level(logging.ERROR, logger="durably"):
        run_test(main)
    rejected = [r for r in caplog.records if getattr(r, "action", None) == "message_rejected"]
    assert len(rejected) == 2, [r.getMessage() for r in rejected]
    assert all(r.exc_info is None for r in rejected)  # one line each, no traceback
    assert all(getattr(r, "message_id", "") for r in rejected)
    assert not [r for r in caplog.records if r.exc_info is not None and "poison" in r.getMessage()]


# -- a participant that crashes after its side effect ---------------------------------------


class RecordReplies:
    """A participant-side broker that remembers the replies it publishes."""

    replies: list[Message]

    async def publish(self, message: Message) -> None:
        if message.headers.get("status") and message.headers.get("token") not in (None, "guessed"):
            type(self).replies.append(message)
        await super().publish(message)  # type: ignore[misc]


class CrashBeforeFirstReply:
    """A participant-side broker whose first reply never goes out: the process "dies" after
    the handler's side effect and the inbox record, before publishing."""

    crashed = False

    async def publish(self, message: Message) -> None:
        if message.headers.get("status") and not type(self).crashed:
            type(self).crashed = True
            raise ConnectionResetError("the participant dies before replying")
        await super().publish(message)  # type: ignore[misc]


def test_a_participant_crashing_before_its_reply_is_answered_by_its_inbox(
    kind: str, tmp_path: Path
) -> None:
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    saga = three_steps(prefix, seen)
    repo = repository(tmp_path)
    inbox_store = open_store(f"sqlite:///{tmp_path}/participant.db")
    base: type[Broker] = {
        "memory": InMemoryBroker,
        "rabbitmq": TrackedRabbitMQBroker,
        "nats": NatsBroker,
    }[kind]
    crashing = type("Crashing", (CrashBeforeFirstReply, base), {"crashed": False})

    async def main() -> None:
        async with rig(kind, crashing) as r:
            serve_counting(r, *(f"{prefix}-{n}" for n in range(3)))
            await r.participant.start_services(store=inbox_store)
            async with SagaManager(repo, r.manager_broker) as manager:
                execution = finished(await manager.run(saga, {"order": 5}, timeout=WAIT))
            assert crashing.crashed  # type: ignore[attr-defined]
            assert execution.status is SagaStatus.Finished
            assert seen == [f"{prefix}-{n}" for n in range(3)]
            assert r.calls == {f"{prefix}-{n}": 1 for n in range(3)}  # redelivered, not re-run

    try:
        run_test(main)
    finally:
        inbox_store.close()
