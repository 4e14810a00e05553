"""One suite for every broker: the in-memory one, RabbitMQ and NATS JetStream.

The ``broker`` fixture runs each test on the three. The network brokers need their servers:
RabbitMQ at ``DURABLY_TEST_RABBITMQ_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``) and
NATS with JetStream at ``DURABLY_TEST_NATS_URL`` (default ``nats://127.0.0.1:4222``). When one
is unreachable its cases skip with the reason, except under ``CI=true`` (or ``CI=1``), where they
fail: CI must not go green without the brokers.

Every test uses topics of its own (uuids). The RabbitMQ queues a test touched are deleted after
it; a NATS test runs in a stream of its own, deleted after it with its consumers.

pytest-asyncio is not used: each test body is a coroutine run by :func:`run`, which closes the
broker on the same event loop.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from durably import codec
from durably.broker import Broker, InMemoryBroker, Message, MessageHandler, Subscription
from durably.context import SagaContext
from durably.exceptions import BrokerError, ServiceError
from durably.nats_broker import NatsBroker, subject_token
from durably.rabbitmq_broker import RabbitMQBroker, queue_name
from durably.saga import Saga
from durably.saga_execution import SagaStatus
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest, SagaResponse, SagaResponseStatus
from durably.saga_repository import SagaExecutionRepository

pytestmark = pytest.mark.broker

KINDS = ("memory", "rabbitmq", "nats")
RABBITMQ_URL = os.environ.get("DURABLY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("DURABLY_TEST_NATS_URL", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
REDELIVERY = 0.2  # seconds: the network brokers' redelivery_delay in these tests
ACK_WAIT = 0.5  # seconds: NATS redelivers a message nobody settled after this
WAIT = 20.0  # seconds: the most any test waits for a message

T = TypeVar("T")


# -- fixtures ----------------------------------------------------------------------------------


@functools.cache
def server_problem(kind: str) -> str | None:
    """Why the server of ``kind`` cannot be used, or None (asked once per session)."""

    async def rabbitmq() -> None:
        import aio_pika

        connection = await aio_pika.connect(RABBITMQ_URL, timeout=3)
        await connection.close()

    async def nats_js() -> None:
        import nats

        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=1)
        try:
            await nc.jetstream().account_info()  # fails when JetStream is not enabled
        finally:
            await nc.close()

    try:
        asyncio.run(asyncio.wait_for(rabbitmq() if kind == "rabbitmq" else nats_js(), 10))
    except Exception as exc:
        where = (
            RabbitMQBroker(RABBITMQ_URL).where if kind == "rabbitmq" else NatsBroker(NATS_URL).where
        )
        return f"{kind} server at {where} unusable: {type(exc).__name__}: {exc}"
    return None


class TrackedRabbitMQBroker(RabbitMQBroker):
    """Remembers the queues a test touched, so that the fixture deletes them."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.topics: set[str] = set()

    async def publish(self, message: Message) -> None:
        self.topics.add(message.topic)
        await super().publish(message)

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        self.topics.add(topic)
        return await super().subscribe(topic, handler, durable=durable)


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    kind: str = request.param
    if kind == "memory":
        yield InMemoryBroker(redelivery_delay=REDELIVERY)
        return
    problem = server_problem(kind)
    if problem is not None:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: the broker tests must run)", pytrace=False)
        pytest.skip(problem)
    if kind == "rabbitmq":
        rabbit = TrackedRabbitMQBroker(RABBITMQ_URL, redelivery_delay=REDELIVERY)
        yield rabbit
        asyncio.run(delete_queues(rabbit.topics))
    else:
        stream = f"DURABLY_TEST_{uuid.uuid4().hex[:12]}"
        yield NatsBroker(NATS_URL, stream=stream, redelivery_delay=REDELIVERY, ack_wait=ACK_WAIT)
        asyncio.run(delete_stream(stream))


async def delete_queues(names: set[str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(queue_name(name))  # a queue that is gone already is fine


async def delete_stream(stream: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    except NotFoundError:
        pass  # the test never connected
    finally:
        await nc.close()


def twin(broker: Broker) -> Broker:
    """Another client of the same server and topics, as a second process would be. The
    in-memory broker lives in one process: its twin is itself."""
    if isinstance(broker, TrackedRabbitMQBroker):
        other = TrackedRabbitMQBroker(RABBITMQ_URL, redelivery_delay=REDELIVERY)
        other.topics = broker.topics  # cleaned up with the fixture's
        return other
    if isinstance(broker, NatsBroker):
        return NatsBroker(
            NATS_URL, stream=broker.stream, redelivery_delay=REDELIVERY, ack_wait=ACK_WAIT
        )
    return broker


def run(main: Callable[[], Awaitable[T]], *brokers: Broker) -> T:
    """Run ``main()`` in a fresh event loop, closing ``brokers`` on it afterwards."""

    async def wrapper() -> T:
        try:
            return await asyncio.wait_for(main(), 3 * WAIT)
        finally:
            for broker in brokers:
                await broker.close()

    return asyncio.run(wrapper())


def new_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def backlog(broker: Broker, topic: str) -> int:
    """How many messages of ``topic`` the server still holds once ``broker`` is closed:
    unacknowledged ones included. Asked for a second, as acks from the closed connection may
    still be on their way."""
    for _ in range(10):
        if not (count := await stored(broker, topic)):
            break
        await asyncio.sleep(0.1)
    return count


async def stored(broker: Broker, topic: str) -> int:
    if isinstance(broker, InMemoryBroker):
        return broker.pending(topic)
    if isinstance(broker, RabbitMQBroker):
        import aio_pika

        # Closing the broker's connection put back anything it held unacknowledged.
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name(topic), passive=True)
            count = queue.declaration_result.message_count
            return int(count or 0)
    assert isinstance(broker, NatsBroker)
    import nats

    # A work-queue stream deletes a message once it is acknowledged.
    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().stream_info(broker.stream, subjects_filter=">")
        return int((info.state.subjects or {}).get(broker.subject(topic), 0))
    finally:
        await nc.close()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        pytest.fail(f"timed out after {WAIT:g} s waiting until {what}")


# -- publish and subscribe ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", ["orders", "orders.created v2 *>_x"], ids=["plain", "dots-spaces-wildcards"]
)
def test_round_trip_keeps_body_and_headers(broker: Broker, prefix: str) -> None:
    topic = new_topic(prefix)
    body = codec.dumps_value({"name": "Zoë", "items": [1, 2.5, None], "ok": True})
    headers = {"saga": str(uuid.uuid4()), "step": "3.0", "reply_to": "r 1.x", "custom-h": "v"}
    received: list[Message] = []

    async def handler(message: Message) -> None:
        received.append(message)

    async def main() -> None:
        # The first message is published before anybody consumes the topic: it waits.
        await broker.publish(Message(topic, body, {**headers, "n": "1"}))
        await broker.subscribe(topic, handler)
        await broker.publish(Message(topic, body, {**headers, "n": "2"}))
        await wait_until(lambda: len(received) >= 2, "both messages arrive")

    run(main, broker)
    assert sorted(m.headers["n"] for m in received) == ["1", "2"]
    for message in received:
        assert message.topic == topic
        assert message.body == body
        assert codec.loads_value(message.body) == codec.loads_value(body)
        assert dict(message.headers) == {**headers, "n": message.headers["n"]}


def test_failed_handler_gets_the_message_again_and_success_acks_it(broker: Broker) -> None:
    topic = new_topic()
    deliveries: list[str] = []

    async def handler(message: Message) -> None:
        deliveries.append(message.body)
        if message.body == '"A"' and deliveries.count('"A"') == 1:
            raise RuntimeError("first attempt fails")

    async def main() -> None:
        await broker.subscribe(topic, handler)
        await broker.publish(Message(topic, '"A"'))
        await wait_until(lambda: len(deliveries) >= 1, "the first delivery")
        # Every broker redelivers on its own after REDELIVERY: no further traffic needed.
        await wait_until(lambda: len(deliveries) >= 2, "A is delivered again")
        await broker.publish(Message(topic, '"B"'))
        await wait_until(lambda: len(deliveries) >= 3, "B is delivered")
        await asyncio.sleep(5 * REDELIVERY)  # an unacknowledged message would be back by now

    run(main, broker)
    assert Counter(deliveries) == {'"A"': 2, '"B"': 1}
    assert asyncio.run(backlog(broker, topic)) == 0  # both acknowledged, nothing left queued


def test_a_handler_slower_than_ack_wait_gets_the_message_once(broker: Broker) -> None:
    topic = new_topic()
    deliveries: list[str] = []

    async def handler(message: Message) -> None:
        deliveries.append(message.body)
        await asyncio.sleep(2.5 * ACK_WAIT)  # NATS hears "in progress" meanwhile

    async def main() -> None:
        await broker.subscribe(topic, handler)
        await broker.publish(Message(topic, '"slow"'))
        await wait_until(lambda: len(deliveries) >= 1, "the delivery")
        await asyncio.sleep(3 * ACK_WAIT)

    run(main, broker)
    assert deliveries == ['"slow"']
    assert asyncio.run(backlog(broker, topic)) == 0


def test_two_subscribers_share_a_durable_topic_without_duplicates(broker: Broker) -> None:
    topic = new_topic()
    seen: dict[str, list[str]] = {"first": [], "second": []}

    def handler(name: str) -> MessageHandler:
        async def handle(message: Message) -> None:
            seen[name].append(message.body)
            await asyncio.sleep(0.01)

        return handle

    other = twin(broker)

    async def main() -> None:
        # At once, from two clients: both find or create the topic's one consumer.
        await asyncio.gather(
            broker.subscribe(topic, handler("first")), other.subscribe(topic, handler("second"))
        )
        for n in range(20):
            await broker.publish(Message(topic, str(n)))
        await wait_until(lambda: len(seen["first"]) + len(seen["second"]) >= 20, "all arrive")
        await asyncio.sleep(5 * REDELIVERY)  # time for a duplicate to show up

    run(main, broker, other)
    everything = seen["first"] + seen["second"]
    assert sorted(everything, key=int) == [str(n) for n in range(20)]  # each exactly once
    assert seen["first"], f"the second subscriber got everything: {seen}"
    assert seen["second"], f"the first subscriber got everything: {seen}"
    assert asyncio.run(backlog(broker, topic)) == 0


def test_non_durable_subscription_lives_with_the_subscription(broker: Broker) -> None:
    topic = new_topic("private")
    received: list[str] = []

    async def handler(message: Message) -> None:
        received.append(message.body)

    async def main() -> None:
        subscription = await broker.subscribe(topic, handler, durable=False)
        await broker.publish(Message(topic, '"first"'))
        await wait_until(lambda: received == ['"first"'], "the message arrives")
        await subscription.close()
        # The same private topic can be taken again at once (a restarted manager).
        again = await broker.subscribe(topic, handler, durable=False)
        await broker.publish(Message(topic, '"second"'))
        await wait_until(lambda: len(received) == 2, "the second message arrives")
        await again.close()

    run(main, broker)
    assert received == ['"first"', '"second"']


# -- participants ------------------------------------------------------------------------------


def test_service_replies_success_error_and_system_error(broker: Broker) -> None:
    target = new_topic("inventory")
    reply_to = new_topic("replies")
    saga = str(uuid.uuid4())
    replies: dict[str, Message] = {}
    participant = twin(broker)  # the service runs in "another process"

    @participant.service(target)
    async def inventory(content: dict[str, Any]) -> dict[str, Any]:
        if content["op"] == "reject":
            raise ServiceError({"reason": "out of stock"})
        if content["op"] == "crash":
            raise RuntimeError("database on fire")
        return {"reserved": content["qty"]}

    async def on_reply(message: Message) -> None:
        replies[message.headers["idempotency_key"]] = message

    async def main() -> None:
        await broker.subscribe(reply_to, on_reply, durable=False)
        for step, op in enumerate(("ok", "reject", "crash")):
            body = codec.dumps_value({"op": op, "qty": 3})
            key = f"{saga}:{step}:execute"
            await broker.request(
                target, body, saga=saga, step=str(step), reply_to=reply_to, key=key
            )
        # Requests sent before the participant starts wait for it in its queue.
        await participant.start_services()
        await wait_until(lambda: len(replies) == 3, "the three replies arrive")

    run(main, broker, participant)
    expected = {
        "0": (SagaResponseStatus.SUCCESS, {"reserved": 3}),
        "1": (SagaResponseStatus.ERROR, {"reason": "out of stock"}),
        "2": (SagaResponseStatus.SYSTEM_ERROR, "RuntimeError: database on fire"),
    }
    for step, (status, content) in expected.items():
        message = replies[f"{saga}:{step}:execute"]
        assert message.topic == reply_to
        assert message.headers == {
            "saga": saga,
            "step": step,
            "idempotency_key": f"{saga}:{step}:execute",
            "status": str(int(status)),
        }
        response = SagaResponse.from_message(message)
        assert response.status is status
        assert response.content() == content
        assert str(response.uuid) == saga
    assert asyncio.run(backlog(broker, target)) == 0


# -- sagas end to end --------------------------------------------------------------------------

# The participants' names come from the context, so each test run has queues of its own.


def reserve(ctx: SagaContext) -> SagaRequest:
    return SagaRequest(ctx["inventory"], {"reserve": ctx["qty"]})


def reserved(ctx: SagaContext, response: SagaResponse) -> None:
    ctx["reservation"] = response.content()["reservation"]


def release(ctx: SagaContext) -> SagaRequest:
    return SagaRequest(ctx["inventory"], {"release": ctx["reservation"]})


def charge(ctx: SagaContext) -> SagaRequest:
    return SagaRequest(ctx["payments"], {"amount": ctx["amount"]})


def charged(ctx: SagaContext, response: SagaResponse) -> None:
    ctx["payment"] = response.content()["payment"]


def declined(ctx: SagaContext, response: SagaResponse) -> Exception:
    return ValueError(f"declined: {response.content()['reason']}")


ORDER_SAGA = (
    Saga()
    .remote_step(reserve)
    .on_success(reserved)
    .on_failure(release)
    .remote_step(charge)
    .on_success(charged)
    .on_error(declined)
    .commit()
)


@pytest.mark.parametrize("amount", [10, 5000], ids=["finished", "compensated"])
@pytest.mark.parametrize("waiting", ["in-memory", "on-disk"])
def test_saga_with_remote_steps_over_the_broker(
    broker: Broker, tmp_path: Path, waiting: str, amount: int
) -> None:
    inventory, payments = new_topic("inventory"), new_topic("payments")
    events: list[str] = []

    @broker.service(inventory)
    def inventory_service(content: dict[str, Any]) -> dict[str, Any]:
        if "release" in content:
            events.append(f"released {content['release']}")
            return {"released": content["release"]}
        events.append(f"reserved {content['reserve']}")
        return {"reservation": "R-1"}

    @broker.service(payments)
    async def payments_service(content: dict[str, Any]) -> dict[str, Any]:
        if content["amount"] > 1000:
            raise ServiceError({"reason": "over the limit"})
        events.append(f"charged {content['amount']}")
        return {"payment": "P-1"}

    context = SagaContext(inventory=inventory, payments=payments, qty=2, amount=amount)
    repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/s.db")
    manager = SagaManager(storage=repo, broker_pool=broker, reply_to=new_topic("replies"))

    async def main() -> tuple[SagaStatus, dict[str, Any]]:
        await broker.start_services()
        if waiting == "in-memory":
            execution = await manager.run(
                definition=ORDER_SAGA, context=context, raise_on_error=False, timeout=WAIT
            )
            await manager.close()
            assert not isinstance(execution, uuid.UUID)
            return execution.status, execution.context.to_dict()
        # Paused on disk at the first remote step; a reply listener resumes it.
        execution_id = await manager.run(
            definition=ORDER_SAGA, context=context, pause_on_disk=True, return_execution=False
        )
        assert isinstance(execution_id, uuid.UUID)
        listener = asyncio.get_running_loop().create_task(manager.serve_replies())
        try:
            done = (SagaStatus.Finished, SagaStatus.Errored)
            while (execution := await manager.get(execution_id)).status not in done:
                await asyncio.sleep(0.05)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        return execution.status, execution.context.to_dict()

    try:
        status, final = run(main, broker)
    finally:
        repo.close()
    if amount == 10:
        assert status is SagaStatus.Finished
        assert final["reservation"] == "R-1"
        assert final["payment"] == "P-1"
        assert events == ["reserved 2", "charged 10"]
    else:
        assert status is SagaStatus.Errored
        assert "payment" not in final
        assert events == ["reserved 2", "released R-1"]  # the reservation was compensated


# -- errors and the optional drivers (no server needed) ----------------------------------------


def test_unreachable_rabbitmq_is_a_broker_error_without_the_password() -> None:
    broker = RabbitMQBroker("amqp://guest:s3cret@127.0.0.1:1/")
    with pytest.raises(BrokerError) as info:
        run(lambda: broker.publish(Message("t", "1")), broker)
    assert "amqp://guest@127.0.0.1:1/" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert info.value.__cause__ is not None


def test_unreachable_nats_is_a_broker_error_without_the_password() -> None:
    broker = NatsBroker("nats://user:s3cret@127.0.0.1:1")
    with pytest.raises(BrokerError) as info:
        run(lambda: broker.publish(Message("t", "1")), broker)
    assert "nats://user@127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("module", "cls", "extra"),
    [("aio_pika", RabbitMQBroker, "durably[rabbitmq]"), ("nats", NatsBroker, "durably[nats]")],
)
def test_a_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, cls: type[Broker], extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail
    with pytest.raises(BrokerError) as info:
        cls()
    assert f"pip install {extra}" in str(info.value)


def test_import_durably_needs_no_broker_driver() -> None:
    code = (
        "import sys, durably, durably.broker\n"
        "assert 'aio_pika' not in sys.modules and 'nats' not in sys.modules, sys.modules.keys()\n"
        "assert durably.RabbitMQBroker.__name__ == 'RabbitMQBroker'\n"
        "assert durably.NatsBroker.__name__ == 'NatsBroker'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_subject_tokens_are_safe_stable_and_distinct() -> None:
    topics = ["orders", "orders.created", "orders_2Ecreated", "a b", "a*b", "a>b", "Zoë", "x" * 300]
    tokens = [subject_token(topic) for topic in topics]
    assert len(set(tokens)) == len(topics)
    assert tokens[:2] == ["orders", "orders_2Ecreated"]
    assert tokens[2] == "orders_5F2Ecreated"  # "_" is escaped too, so it cannot collide
    for token in tokens:
        assert 0 < len(token) <= 250
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert subject_token("x" * 300) == subject_token("x" * 300)
    assert NatsBroker(stream="Orders").subject("a.b") == "orders.a_2Eb"
    with pytest.raises(BrokerError):
        subject_token("")
    with pytest.raises(BrokerError):
        NatsBroker(stream="bad.name")


def test_queue_names_are_valid_stable_and_distinct() -> None:
    topics = ["inventory", "durably.saga.replies.ab12", "a*b", "a#2Ab", "Zoë", "x" * 300]
    names = [queue_name(topic) for topic in topics]
    assert len(set(names)) == len(topics)
    assert names[:4] == ["inventory", "durably.saga.replies.ab12", "a#2Ab", "a#232Ab"]
    for name in names:
        assert 0 < len(name.encode()) <= 255
        assert re.fullmatch(r"[a-zA-Z0-9-_.:@#,/+ ]+", name)  # what pamqp accepts
    assert queue_name("x" * 300) == queue_name("x" * 300)
    with pytest.raises(BrokerError):
        queue_name("")


# -- traces across the broker ------------------------------------------------------------------


def _stock_request(ctx: SagaContext) -> SagaRequest:
    return SagaRequest(ctx.stock, {"n": 1})


def test_a_participants_span_joins_the_sagas_trace_over_the_broker(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # this test's provider only
    stock = new_topic("stock")

    @broker.service(stock)
    def stock_service(content: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    saga = Saga(f"traced_{uuid.uuid4().hex[:8]}").remote_step(_stock_request).commit()
    repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/s.db")
    manager = SagaManager(storage=repo, broker_pool=broker, reply_to=new_topic("replies"))

    async def main() -> SagaStatus:
        await broker.start_services()
        execution = await manager.run(definition=saga, context={"stock": stock}, timeout=WAIT)
        await manager.close()
        assert not isinstance(execution, uuid.UUID)
        return execution.status

    try:
        assert run(main, broker) is SagaStatus.Finished
    finally:
        repo.close()
        provider.shutdown()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    step = spans[f"durably.saga_step {saga.name} 0"]
    served = spans[f"durably.participant {stock}"]
    assert step.context is not None
    assert served.context is not None
    assert served.context.trace_id == step.context.trace_id
    assert served.parent is not None
    assert served.parent.span_id == step.context.span_id
