"""RabbitMQ as a :class:`~durably.broker.Broker`, on aio-pika (``pip install durably[rabbitmq]``).

A topic is a queue, reached through the default exchange. Its name is the topic itself when
the topic uses only the characters AMQP clients accept in a queue name (letters, digits and
``-_.:@,/+`` and space), which is the usual case; :func:`queue_name` spells any other byte, and
``#``, as ``#XX`` (hex), so the mapping stays stable and one-to-one.


- ``publish`` sends a persistent ``application/json`` message with the headers as AMQP headers
  and returns when RabbitMQ confirms it. It is published ``mandatory``: when no queue of that
  name exists yet (a request for a service nobody has started), RabbitMQ returns it, and the
  broker declares the durable queue and publishes again, so the request waits for its service;
- ``subscribe`` declares the durable queue (once per topic) and consumes it with manual acks:
  ``ack`` when the handler returns; when it raises, ``nack`` with requeue after
  ``redelivery_delay`` seconds (RabbitMQ puts a requeued message back at the head of its queue,
  so without the pause a failing handler would spin on it); when it raises
  ``UndecodableMessageError`` (or the body is not UTF-8), ``reject`` without requeue: the
  message is dead-lettered if the queue has a dead-letter exchange, logged once either way.
  ``durable=False`` consumes a transient queue instead: deleted with the subscription, or by
  RabbitMQ five minutes after its last consumer went away; it survives a reconnection.

Connections are robust: aio-pika reconnects and restores queues and consumers by itself, and a
call made meanwhile waits for it (up to 30 s). Driver errors come out as
:class:`~durably.exceptions.BrokerError`, naming the server without its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .broker_base import Broker
from .exceptions import BrokerError, UndecodableMessageError
from .saga_log import log_fields, log_rejected
from .wire import Message, MessageHandler, Subscription, reason, redacted

if TYPE_CHECKING:
    import aio_pika
    from aio_pika.abc import (
        AbstractIncomingMessage,
        AbstractRobustChannel,
        AbstractRobustConnection,
        AbstractRobustQueue,
    )

__all__ = ["RabbitMQBroker", "queue_name"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
_CONNECT_TIMEOUT = 10.0  # seconds; a dead server fails the first call instead of hanging it
_RECONNECT_WAIT = 30.0  # seconds a call waits for a dropped connection to come back
_PRIVATE_QUEUE_EXPIRES = 300_000  # ms a durable=False queue outlives its last consumer
# What pamqp lets through in a queue name (the AMQP "queue-name" domain), "#" aside: it escapes.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:@,/+ ")


def queue_name(topic: str) -> str:
    """The RabbitMQ queue that carries ``topic``: the topic itself unless it holds a byte that
    is not allowed in a queue name, or ``#``; such a byte becomes ``#XX``. A name longer than
    255 bytes is cut and suffixed with ``##`` and a SHA-256 of the topic (``##`` never occurs
    otherwise, so a cut name cannot collide with another)."""
    if not isinstance(topic, str) or not topic:
        raise BrokerError(f"a topic must be a non-empty str, not {topic!r}")
    raw = topic.encode()
    name = "".join(chr(b) if b in _SAFE else f"#{b:02X}" for b in raw)
    if len(name) > 255:
        name = f"{name[:180]}##{hashlib.sha256(raw).hexdigest()}"
    return name


class RabbitMQBroker(Broker):
    """A broker on a RabbitMQ server. It connects at its first ``publish`` or ``subscribe``.

    ``prefetch`` is how many unacknowledged messages each subscription may hold (handled
    concurrently); ``redelivery_delay`` the pause, in seconds, before a message whose handler
    failed goes back to its queue.
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, prefetch: int = 16, redelivery_delay: float = 1.0
    ) -> None:
        super().__init__()
        _require_aio_pika()
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
            raise BrokerError(f"prefetch must be a positive int, not {prefetch!r}")
        if not isinstance(redelivery_delay, int | float) or redelivery_delay < 0:
            raise BrokerError(f"redelivery_delay must be >= 0 seconds, not {redelivery_delay!r}")
        self.url = url
        self.where = redacted(url)
        self.prefetch = prefetch
        self.redelivery_delay = float(redelivery_delay)
        self._lock = asyncio.Lock()
        self._connection: AbstractRobustConnection | None = None
        # Publishing (with confirms) and consuming use separate channels: a channel error on
        # one, e.g. a refused declaration, does not requeue what the other holds.
        self._publisher: AbstractRobustChannel | None = None
        self._consumer: AbstractRobustChannel | None = None
        self._queues: dict[str, AbstractRobustQueue] = {}  # durable queues, declared once
        self._subscriptions: set[_RabbitMQSubscription] = set()

    def __repr__(self) -> str:
        return f"RabbitMQBroker({self.where!r})"

    async def publish(self, message: Message) -> None:
        import aio_pika
        from aio_pika.exceptions import ChannelInvalidStateError

        name = queue_name(message.topic)
        channel, _ = await self._channels()
        outgoing = aio_pika.Message(
            message.body.encode(),
            headers=dict(message.headers),
            content_type="application/json",
            content_encoding="utf-8",
            # The same on every redelivery, so logs can name it.
            message_id=message.id or uuid.uuid4().hex,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        with self._wrapped(f"publish to {message.topic!r}"):
            await _restored(channel)
            try:
                await _send(channel, name, outgoing)
            except ChannelInvalidStateError:
                # Nothing was sent: the connection dropped and aio-pika is restoring it.
                await _restored(channel)
                await _send(channel, name, outgoing)

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        name = queue_name(topic)
        _, channel = await self._channels()
        with self._wrapped(f"subscribe to {topic!r}"):
            await _restored(channel)
            if durable:
                queue = self._queues.get(topic)
                if queue is None:
                    queue = await channel.declare_queue(name, durable=True)
                    self._queues[topic] = queue
            else:
                # Not exclusive: an exclusive queue dies with the connection, and a reply sent
                # while aio-pika reconnects would be lost. x-expires removes it once nobody has
                # consumed it for a while (its manager is gone); close() deletes it at once.
                queue = await channel.declare_queue(
                    name, auto_delete=False, arguments={"x-expires": _PRIVATE_QUEUE_EXPIRES}
                )
            subscription = _RabbitMQSubscription(self, topic, queue, handler, durable)
            subscription.consumer_tag = await queue.consume(subscription.on_message)
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        """Stop every subscription (waiting for handlers in progress), then disconnect."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        async with self._lock:
            connection, self._connection = self._connection, None
            self._publisher = self._consumer = None
            self._queues.clear()
            if connection is not None and not connection.is_closed:
                with self._wrapped("close the connection"):
                    await connection.close()

    # -- internals -----------------------------------------------------------------------------

    async def _channels(self) -> tuple[AbstractRobustChannel, AbstractRobustChannel]:
        """The publishing and the consuming channel, connecting at the first call."""
        async with self._lock:
            if self._publisher is None or self._consumer is None:
                import aio_pika

                with self._wrapped("connect"):
                    connection = await aio_pika.connect_robust(self.url, timeout=_CONNECT_TIMEOUT)
                    try:
                        publisher = await connection.channel(
                            publisher_confirms=True, on_return_raises=True
                        )
                        consumer = await connection.channel(publisher_confirms=False)
                        await consumer.set_qos(prefetch_count=self.prefetch)
                    except BaseException:
                        await connection.close()
                        raise
                self._connection, self._publisher, self._consumer = connection, publisher, consumer
            return self._publisher, self._consumer

    @contextlib.contextmanager
    def _wrapped(self, doing: str) -> Iterator[None]:
        from aio_pika.exceptions import AMQPError

        try:
            yield
        except (AMQPError, OSError, RuntimeError) as exc:  # OSError covers ConnectionError
            raise BrokerError(f"RabbitMQ at {self.where}: cannot {doing}: {reason(exc)}") from exc


class _RabbitMQSubscription(Subscription):
    def __init__(
        self,
        broker: RabbitMQBroker,
        topic: str,
        queue: AbstractRobustQueue,
        handler: MessageHandler,
        durable: bool,
    ) -> None:
        self._broker, self._topic, self._queue, self._handler = broker, topic, queue, handler
        self.durable = durable
        self.consumer_tag: str | None = None
        self._running: set[asyncio.Task[object]] = set()
        self._closed = False

    async def on_message(self, incoming: AbstractIncomingMessage) -> None:
        """aio-pika runs this in a task of its own per delivery (up to ``prefetch`` at once)."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._handle(incoming)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _handle(self, incoming: AbstractIncomingMessage) -> None:
        from aio_pika.exceptions import AMQPError

        message = _decode(self._topic, incoming)
        try:
            if message is None:
                raise UndecodableMessageError("the body is not UTF-8 text")
            await self._handler(message)
        except UndecodableMessageError as exc:
            # No redelivery can make it decodable: logged once, dead-lettered if the queue has
            # a dead-letter exchange, dropped otherwise.
            log_rejected(message or _undecoded(self._topic, incoming), exc, "dead-lettered")
            with contextlib.suppress(AMQPError, OSError, RuntimeError):
                await incoming.reject(requeue=False)
            return
        except Exception:
            delay = self._broker.redelivery_delay
            logger.exception(
                "handler of %r failed; redelivering in %g s",
                self._topic,
                delay,
                extra=log_fields(
                    "message_redelivered",
                    topic=self._topic,
                    message_id=message.id if message is not None else "",
                ),
            )
            await asyncio.sleep(delay)
            failed = True
        else:
            failed = False
        try:
            await (incoming.nack(requeue=True) if failed else incoming.ack())
        except (AMQPError, OSError, RuntimeError) as exc:
            # The channel is gone: RabbitMQ requeues every unacknowledged message by itself.
            logger.warning(
                "cannot settle a message on %r (%s): it will be redelivered",
                self._topic,
                reason(exc),
                extra=log_fields("message_settle_failed", topic=self._topic),
            )

    async def close(self) -> None:
        """Stop consuming, then wait for the handlers in progress to settle their messages."""
        if self._closed:
            return
        self._closed = True
        from aio_pika.exceptions import AMQPError

        if self.consumer_tag is not None:
            try:
                await self._queue.cancel(self.consumer_tag)
            except (AMQPError, OSError, RuntimeError) as exc:
                logger.debug(
                    "cancelling the consumer of %r: %s",
                    self._topic,
                    reason(exc),
                    extra=log_fields("consumer_cancel_failed"),
                )
        others = self._running - {asyncio.current_task()}  # a handler may close its own sub
        if others:
            await asyncio.wait(others)
        broker = self._broker
        broker._subscriptions.discard(self)
        private = [s for s in broker._subscriptions if s._topic == self._topic and not s.durable]
        if not self.durable and not private and broker._consumer is not None:
            # Auto-delete removed the queue already; this also drops it from the channel's
            # list of queues to declare again after a reconnection.
            try:
                await broker._consumer.queue_delete(self._queue.name)
            except (AMQPError, OSError, RuntimeError) as exc:
                logger.debug(
                    "deleting the queue of %r: %s",
                    self._topic,
                    reason(exc),
                    extra=log_fields("queue_delete_failed"),
                )


async def _send(channel: AbstractRobustChannel, name: str, message: aio_pika.Message) -> None:
    from aio_pika.exceptions import PublishError

    try:
        await channel.default_exchange.publish(message, routing_key=name, mandatory=True)
    except PublishError:
        # Returned unroutable: the queue does not exist yet. Create it durable, so that the
        # message waits for a consumer, then send it again.
        await channel.declare_queue(name, durable=True)
        await channel.default_exchange.publish(message, routing_key=name, mandatory=True)


async def _restored(channel: AbstractRobustChannel) -> None:
    """Wait while aio-pika restores a dropped connection (TimeoutError after a while)."""
    if channel.is_closed:
        await asyncio.wait_for(channel.ready(), _RECONNECT_WAIT)


def _decode(topic: str, incoming: AbstractIncomingMessage) -> Message | None:
    """The message, or None when its body is not UTF-8 text."""
    headers = {
        str(key): value.decode("utf-8", "replace")
        if isinstance(value, bytes | bytearray)
        else str(value)
        for key, value in (incoming.headers or {}).items()
    }
    try:
        body = incoming.body.decode()
    except UnicodeDecodeError:
        return None
    return Message(topic, body, headers, id=_message_id(incoming))


def _undecoded(topic: str, incoming: AbstractIncomingMessage) -> Message:
    return Message(topic, "", {}, id=_message_id(incoming))


def _message_id(incoming: AbstractIncomingMessage) -> str:
    return incoming.message_id or f"delivery-{incoming.delivery_tag}"


def _require_aio_pika() -> None:
    try:
        import aio_pika  # noqa: F401
    except ImportError as exc:
        raise BrokerError("RabbitMQBroker needs aio-pika: pip install durably[rabbitmq]") from exc
