"""NATS JetStream as a :class:`~durably.broker.Broker`, on nats-py (``pip install durably[nats]``).

Every topic lives in one stream (``DURABLY`` unless told), created or updated at connection
with the subjects ``<stream in lower case>.>`` and *work-queue* retention: a message stays in the
stream until a consumer acknowledges it, then it is gone, as in a queue.

- A topic is the subject ``<stream>.<token>``. NATS subject tokens cannot hold spaces, ``.``,
  ``*`` or ``>``, so :func:`subject_token` spells every byte outside ``A-Z a-z 0-9 -`` as
  ``_XX`` (hex): ``"orders.created"`` is ``durably.orders_2Ecreated``. The mapping is stable
  and one-to-one, so every process finds the same subject for a topic;
- ``publish`` is ``js.publish``: it returns once the stream has stored the message. Headers
  travel as NATS headers;
- ``subscribe`` binds a durable consumer named by the token, pushed to a queue group of the
  same name, so every process that subscribes to a topic shares its messages, each delivered
  to one of them. A message is acknowledged when the handler returns; when it raises, it is
  ``nak``-ed with ``redelivery_delay``, so the server redelivers it after that pause. A message
  not settled within ``ack_wait`` (a process that died holding it) is redelivered too. One
  whose handler raises ``UndecodableMessageError`` (or whose body is not UTF-8) is logged once
  and ``term``-inated: never delivered again.
  ``durable=False`` uses an ephemeral consumer instead, deleted with the subscription.

Driver errors come out as :class:`~durably.exceptions.BrokerError`, naming the server without
its password. The connection, the stream and the consumers are here; what a subscription does
with each message it receives is in ``nats_subscription``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from .broker_base import Broker
from .exceptions import BrokerError
from .nats_subscription import NatsSubscription
from .saga_log import log_fields
from .wire import Message, MessageHandler, Subscription, reason, redacted

__all__ = ["NatsBroker", "subject_token"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_MAX_TOKEN = 200  # a durable consumer is a directory named by the token: stay under 255 bytes
_FIRST_CONNECT_ATTEMPTS = 3
_STREAM_NAME_IN_USE = 10058  # JetStream: "stream name already in use with a different config"
_CONSUMER_NOT_UNIQUE = 10100  # JetStream: "filtered consumer not unique on workqueue stream"


def subject_token(topic: str) -> str:
    """The NATS subject token (also the consumer and queue group name) of ``topic``.

    Bytes of ``A-Z a-z 0-9 -`` stay as they are; every other byte of the UTF-8 text, ``_``
    included, becomes ``_XX``, so two topics never share a token. A token that would be longer
    than 200 characters is cut and suffixed with a SHA-256 of the topic."""
    if not isinstance(topic, str) or not topic:
        raise BrokerError(f"a topic must be a non-empty str, not {topic!r}")
    raw = topic.encode()
    token = "".join(chr(b) if b in _SAFE else f"_{b:02X}" for b in raw)
    if len(token) > _MAX_TOKEN:
        # Longer than any plain token, so it cannot collide with one.
        token = f"{token[:180]}-{hashlib.sha256(raw).hexdigest()}"
    return token


class NatsBroker(Broker):
    """A broker on a NATS server with JetStream enabled (``nats-server -js``). It connects at
    its first ``publish`` or ``subscribe``.

    ``ack_wait`` is how long, in seconds, the server waits for news of a delivered message
    before it delivers it again (a running handler sends "in progress" every ``ack_wait / 2``,
    so only a process that died or lost its connection loses its messages to another);
    ``max_ack_pending`` how many messages of a topic may be in handlers at once, over all the
    processes that share it. Both apply to the consumers this broker creates: an existing
    durable consumer keeps its settings. ``redelivery_delay`` is the pause before a message
    whose handler failed is delivered again.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        stream: str = "DURABLY",
        ack_wait: float = 30.0,
        max_ack_pending: int = 64,
        redelivery_delay: float = 1.0,
    ) -> None:
        super().__init__()
        _require_nats()
        if not isinstance(stream, str) or not _STREAM_NAME.fullmatch(stream):
            raise BrokerError(f"a stream name must be 1 to 64 of A-Z a-z 0-9 _ -, not {stream!r}")
        if not isinstance(ack_wait, int | float) or ack_wait <= 0:
            raise BrokerError(f"ack_wait must be > 0 seconds, not {ack_wait!r}")
        if not isinstance(redelivery_delay, int | float) or redelivery_delay < 0:
            raise BrokerError(f"redelivery_delay must be >= 0 seconds, not {redelivery_delay!r}")
        if not isinstance(max_ack_pending, int) or max_ack_pending < 1:
            raise BrokerError(f"max_ack_pending must be a positive int, not {max_ack_pending!r}")
        self.url = url
        self.servers = [server.strip() for server in url.split(",") if server.strip()]
        self.where = ", ".join(
            redacted(server, bare_user_is_secret=True) for server in self.servers
        )
        self.stream = stream
        self.ack_wait = float(ack_wait)
        self.max_ack_pending = max_ack_pending
        self.redelivery_delay = float(redelivery_delay)
        self._prefix = stream.lower()
        self._lock = asyncio.Lock()
        self._nc: Any = None  # nats.aio.client.Client
        self._js: Any = None  # nats.js.JetStreamContext
        self._subscriptions: set[NatsSubscription] = set()

    def __repr__(self) -> str:
        return f"NatsBroker({self.where!r}, stream={self.stream!r})"

    def subject(self, topic: str) -> str:
        """The subject that carries ``topic``: ``<stream in lower case>.<subject_token>``."""
        return f"{self._prefix}.{subject_token(topic)}"

    async def publish(self, message: Message) -> None:
        subject = self.subject(message.topic)
        js = await self._jetstream()
        with self._wrapped(f"publish to {message.topic!r}"):
            headers = dict(message.headers)
            if message.id:
                # JetStream drops a message whose id it stored within its duplicate window:
                # a relay that publishes again, not knowing the first publish got through,
                # does not send the request twice.
                headers["Nats-Msg-Id"] = message.id
            await js.publish(
                subject,
                message.body.encode(),
                stream=self.stream,  # the server refuses it if another stream would take it
                headers=headers or None,
            )

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import BadRequestError

        token = subject_token(topic)
        subject = f"{self._prefix}.{token}"
        js = await self._jetstream()
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            filter_subject=subject,
        )
        subscription = NatsSubscription(
            self, topic, handler, js=js, forget=self._subscriptions.discard
        )
        with self._wrapped(f"subscribe to {topic!r}"):
            try:
                await self._bind(js, token, config, subscription, durable)
            except BadRequestError as exc:
                if exc.err_code != _CONSUMER_NOT_UNIQUE:
                    raise
                raise BrokerError(
                    f"NATS at {self.where}: cannot subscribe to {topic!r}: a work-queue stream "
                    "gives a topic one consumer, so a durable=False subscription cannot share "
                    "its topic with any other subscription"
                ) from exc
        self._subscriptions.add(subscription)
        return subscription

    async def close(self) -> None:
        """Stop every subscription (waiting for handlers in progress), then disconnect."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        async with self._lock:
            nc, self._nc, self._js = self._nc, None, None
            if nc is not None and not nc.is_closed:
                with self._wrapped("close the connection"):
                    await nc.close()

    # -- internals -----------------------------------------------------------------------------

    async def _bind(
        self, js: Any, token: str, config: Any, subscription: NatsSubscription, durable: bool
    ) -> None:
        """Create or find the topic's consumer and push-subscribe ``subscription`` to it."""
        if durable:
            # A fixed deliver subject gives every process the same consumer configuration, so
            # processes that create the consumer at the same time agree on it.
            config.durable_name = config.deliver_group = token
            config.deliver_subject = f"_INBOX.durably.{self.stream}.{token}"
        subscription.psub = await js.subscribe(
            config.filter_subject,
            queue=token if durable else None,
            cb=subscription.on_message,
            stream=self.stream,
            config=config,
            manual_ack=True,
        )
        if not durable:
            subscription.ephemeral = (await subscription.psub.consumer_info()).name

    async def _jetstream(self) -> Any:
        """The JetStream context, connecting and setting up the stream at the first call."""
        async with self._lock:
            if self._js is None:
                import nats

                with self._wrapped("connect"):
                    # nats-py counts the first connection against max_reconnect_attempts: a
                    # wrong URL fails after a few tries, then, once connected, it reconnects
                    # for as long as it takes.
                    nc = await nats.connect(
                        self.servers,
                        name="durably",
                        connect_timeout=5,
                        reconnect_time_wait=1,
                        max_reconnect_attempts=_FIRST_CONNECT_ATTEMPTS,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    )
                    nc.options["max_reconnect_attempts"] = -1
                try:
                    js = nc.jetstream()
                    await self._ensure_stream(js)
                except BaseException:
                    await nc.close()
                    raise
                self._nc, self._js = nc, js
            return self._js

    async def _ensure_stream(self, js: Any) -> None:
        from nats.errors import NoRespondersError
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self._prefix}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
        with self._wrapped(f"create the stream {self.stream!r}"):
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                # The stream is durably's: its settings are these, whatever they were.
                try:
                    await js.update_stream(config)
                except APIError as update_exc:
                    raise BrokerError(
                        f"NATS at {self.where}: the stream {self.stream!r} exists with a "
                        f"configuration durably cannot update ({update_exc.description}): "
                        "delete it, or give NatsBroker another stream="
                    ) from update_exc
            except (NoRespondersError, ServiceUnavailableError) as exc:
                raise BrokerError(
                    f"NATS at {self.where} has no JetStream: start the server with -js"
                ) from exc

    @contextlib.contextmanager
    def _wrapped(self, doing: str) -> Iterator[None]:
        from nats.errors import Error

        try:
            yield
        except (Error, OSError) as exc:  # OSError covers TimeoutError and ConnectionError
            raise BrokerError(f"NATS at {self.where}: cannot {doing}: {reason(exc)}") from exc

    async def _on_error(self, exc: Exception) -> None:
        logger.warning("NATS at %s: %s", self.where, reason(exc), extra=log_fields("broker_error"))

    async def _on_disconnected(self) -> None:
        logger.info("NATS at %s: disconnected", self.where, extra=log_fields("broker_disconnected"))

    async def _on_reconnected(self) -> None:
        logger.info("NATS at %s: reconnected", self.where, extra=log_fields("broker_reconnected"))


def _require_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise BrokerError("NatsBroker needs nats-py: pip install durably[nats]") from exc
