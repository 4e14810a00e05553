"""Brokers carry saga requests to participants and their replies back.

A broker edge (RabbitMQ, NATS JetStream) implements three methods; everything else here is
built on them and is the same for every broker:

- ``publish(message)`` puts a message on the durable queue (topic) it names;
- ``subscribe(topic, handler, durable=True)`` consumes a queue. A message is acknowledged when
  ``handler`` returns and redelivered when it raises, so a consumer that changes saga state
  acknowledges only once that change is committed; when it raises
  :class:`~durably.exceptions.UndecodableMessageError`, the message is logged once and rejected
  without requeue (dead-lettered on RabbitMQ, terminated on NATS), since no redelivery can make
  it decodable. ``durable=False`` asks for a queue that lives
  as long as the subscription (a waiting manager's private reply queue);
- ``close()`` releases connections.

Participants register with ``@broker.service(target)``; ``start_services()`` subscribes each to
its queue and :meth:`Broker.serve` turns a request into a reply. Messages are JSON text from the
context codec plus string headers (``saga_messages.HEADER_*``): nothing is ever pickled.
:class:`InMemoryBroker` is the embedded default; :func:`broker_from_url` picks one by URL.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import inspect
import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec, tracing
from .exceptions import (
    BrokerError,
    ContextSerializationError,
    ServiceError,
    UndecodableMessageError,
)
from .participants import _serving
from .saga_messages import (
    HEADER_KEY,
    HEADER_REPLY_TO,
    HEADER_SAGA,
    HEADER_STATUS,
    HEADER_STEP,
    HEADER_TOKEN,
    SagaResponseStatus,
)

if TYPE_CHECKING:
    from .saga_inbox import ParticipantInbox
    from .store import Store

__all__ = [
    "Broker",
    "InMemoryBroker",
    "Message",
    "MessageHandler",
    "Subscription",
    "broker_from_url",
]

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Message:
    """One message on a queue: its JSON body and string headers."""

    topic: str
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # What the broker knows the message by (RabbitMQ message id, NATS stream sequence), for
    # logs; empty on a message not received yet.
    id: str = ""


MessageHandler = Callable[[Message], Awaitable[None]]


class Subscription(abc.ABC):
    """A consumer of one queue; ``close()`` stops it."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Broker(abc.ABC):
    """A message broker as sagas use it: request/reply over durable queues."""

    def __init__(self) -> None:
        self.services: dict[str, Callable[[Any], Any]] = {}

    @abc.abstractmethod
    async def publish(self, message: Message) -> None:
        """Put ``message`` on the queue ``message.topic``."""

    @abc.abstractmethod
    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        """Consume ``topic``: ack when ``handler`` returns, redeliver when it raises."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- participants ----------------------------------------------------------------------

    def service(self, target: str) -> Callable[[_F], _F]:
        """Register ``handle(content) -> content`` (def or async def) as the participant
        serving ``target``. Returning replies SUCCESS with the value; raising
        ``durably.ServiceError(content)`` replies ERROR with that content; any other exception
        replies SYSTEM_ERROR."""
        if not isinstance(target, str) or not target:
            raise TypeError(f"a service target must be a non-empty str, not {target!r}")

        def decorator(fn: _F) -> _F:
            if not callable(fn):
                raise TypeError(f"@service({target!r}) needs a function, not {fn!r}")
            self.services[target] = fn
            self._service_added(target)
            return fn

        return decorator

    def _service_added(self, target: str) -> None:  # noqa: B027 - optional hook
        """Network brokers subscribe in ``start_services()``; the in-memory one at once."""

    async def start_services(self, *, store: Store | None = None) -> list[Subscription]:
        """Subscribe every registered participant to its queue; with a ``store``, each keeps
        an inbox there (see :meth:`serve`)."""
        inbox = _inbox(store)
        return [
            await self.subscribe(target, functools.partial(self.serve, target, inbox=inbox))
            for target in self.services
        ]

    async def serve(
        self,
        target: str,
        message: Message,
        *,
        store: Store | None = None,
        inbox: ParticipantInbox | None = None,
    ) -> None:
        """Run the participant of ``target`` on one request and publish its reply. The request
        is acknowledged after the reply is out, so a crash in between redelivers it. While the
        handler runs, :func:`durably.participants.current_request` describes the request.

        With a ``store`` (or an ``inbox`` on one), the reply is recorded under the request's
        idempotency key before it is published, and a request whose key is recorded already
        (redelivered, or sent again by a resumed saga) gets the recorded reply: the handler is
        not called again."""
        inbox = inbox if inbox is not None else _inbox(store)
        key = message.headers.get(HEADER_KEY) or None
        stored = await inbox.get(target, key) if inbox is not None and key else None
        if stored is not None:
            status, body = stored
            logger.info(
                "request %s to %r answered from the inbox",
                key,
                target,
                extra=_log_extra(message, "saga_inbox_replay"),
            )
        else:
            with _serving(target, message.headers), tracing.participant(target, message.headers):
                status, content = await _call_service(self.services[target], message)
            try:
                body = codec.dumps_value(content)
            except ContextSerializationError as exc:
                status = SagaResponseStatus.SYSTEM_ERROR
                body = codec.dumps_value(
                    f"{target} replied with content that cannot be sent: {exc}"
                )
            if inbox is not None and key:
                # Recorded before the reply goes out: a crash after this point redelivers the
                # request, which the inbox then answers without calling the handler.
                status, body = await inbox.put(target, key, status, body)
        reply_to = message.headers.get(HEADER_REPLY_TO)
        if not reply_to:
            logger.warning(
                "request to %r has no reply_to header: reply dropped",
                target,
                extra=_log_extra(message, "saga_reply_dropped"),
            )
            return
        headers = {k: v for k, v in message.headers.items() if k in _ECHOED}
        headers[HEADER_STATUS] = str(int(status))
        await self.publish(Message(reply_to, body, headers))

    # -- the saga side ---------------------------------------------------------------------

    async def request(
        self,
        target: str,
        body: str,
        *,
        saga: str,
        step: str,
        reply_to: str,
        key: str,
        token: str = "",
    ) -> None:
        """Send a saga request (``body`` already encoded) with its correlation headers."""
        await self.publish(request_message(target, body, saga, step, reply_to, key, token))


def request_message(
    target: str, body: str, saga: str, step: str, reply_to: str, key: str, token: str
) -> Message:
    """A saga request as it goes on the wire."""
    headers = {HEADER_SAGA: saga, HEADER_STEP: step, HEADER_REPLY_TO: reply_to, HEADER_KEY: key}
    if token:
        headers[HEADER_TOKEN] = token
    return Message(target, body, headers)


_ECHOED = frozenset({HEADER_SAGA, HEADER_STEP, HEADER_KEY, HEADER_TOKEN})


def _inbox(store: Store | None) -> ParticipantInbox | None:
    if store is None:
        return None
    from .saga_inbox import ParticipantInbox

    return ParticipantInbox(store)


def _log_extra(message: Message, action: str) -> dict[str, Any]:
    """The structured fields of a log record about a saga message (SPEC §8)."""
    headers = message.headers
    return {
        "execution_id": headers.get(HEADER_SAGA),
        "workflow": None,
        "task": headers.get(HEADER_STEP),
        "attempt": None,
        "action": action,
        "message_id": message.id,
        "topic": message.topic,
    }


def log_rejected(message: Message, error: UndecodableMessageError, what: str) -> None:
    """Log, once, a message a consumer rejects for good (``what``: "dead-lettered", ...)."""
    logger.error(
        "message %s on %r rejected (%s): %s",
        message.id or "?",
        message.topic,
        what,
        error,
        extra=_log_extra(message, "message_rejected"),
    )


async def _call_service(
    handler: Callable[[Any], Any], message: Message
) -> tuple[SagaResponseStatus, Any]:
    try:
        result = handler(codec.loads_value(message.body))
        if inspect.isawaitable(result):
            result = await result
    except ServiceError as exc:
        return SagaResponseStatus.ERROR, exc.content
    except Exception as exc:
        logger.warning(
            "saga participant %r failed",
            handler,
            exc_info=True,
            extra=_log_extra(message, "saga_participant_failed"),
        )
        return SagaResponseStatus.SYSTEM_ERROR, f"{type(exc).__name__}: {exc}"
    return SagaResponseStatus.SUCCESS, result


class InMemoryBroker(Broker):
    """The embedded broker: a FIFO queue per topic in this process. A message waits in its
    queue until its topic has a consumer, so a request for a service registered later is
    delivered when it appears. Each delivery runs as a task on the running event loop (like a
    consumer without a prefetch limit: a slow handler holds up no other message). ``sent``
    lists every message published, in order."""

    def __init__(self, *, redelivery_delay: float = 1.0) -> None:
        super().__init__()
        self.redelivery_delay = redelivery_delay
        self.sent: list[Message] = []
        self._queues: dict[str, deque[Message]] = defaultdict(deque)
        self._consumers: dict[str, list[MessageHandler]] = defaultdict(list)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._turn = 0
        self._ids = itertools.count(1)

    async def publish(self, message: Message) -> None:
        message = replace(message, id=str(next(self._ids)))
        self.sent.append(message)
        self._queues[message.topic].append(message)
        self._deliver_all()

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        self._consumers[topic].append(handler)
        self._deliver_all()
        return _MemorySubscription(self, topic, handler)

    def _service_added(self, target: str) -> None:
        consumers = self._consumers[target]
        if not any(getattr(c, "func", None) == self.serve for c in consumers):
            consumers.append(functools.partial(self.serve, target))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # registered outside a loop: queued requests go out at the next publish
        self._deliver_all()

    async def start_services(self, *, store: Store | None = None) -> list[Subscription]:
        # Every participant is consuming since it was registered; a store gives them an inbox.
        if store is not None:
            inbox = _inbox(store)
            for target in self.services:
                consumers = self._consumers[target]
                for index, consumer in enumerate(consumers):
                    if getattr(consumer, "func", None) == self.serve:
                        consumers[index] = functools.partial(self.serve, target, inbox=inbox)
        return []

    def pending(self, topic: str) -> int:
        """How many messages wait in ``topic``'s queue."""
        return len(self._queues.get(topic, ()))

    async def join(self) -> None:
        """Wait until every message that has a consumer is handled (tests, demos)."""
        while self._deliveries:
            await asyncio.wait(set(self._deliveries))

    def _deliver_all(self) -> None:
        loop = asyncio.get_running_loop()
        for topic, queue in self._queues.items():
            consumers = self._consumers.get(topic)
            while queue and consumers:
                handler = consumers[self._turn % len(consumers)]
                self._turn += 1
                task = loop.create_task(self._deliver(queue, handler, queue.popleft()))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, queue: deque[Message], handler: MessageHandler, message: Message
    ) -> None:
        try:
            await handler(message)
        except UndecodableMessageError as exc:
            log_rejected(message, exc, "dropped")  # acknowledged: never delivered again
        except asyncio.CancelledError:
            queue.appendleft(message)  # not acknowledged: a later loop delivers it
            raise
        except Exception:
            # Not acknowledged: redelivered after a pause (as the network brokers do), or
            # sooner by the next publish or subscribe; never in a hot loop.
            logger.exception(
                "handler of %r failed; the message stays queued",
                message.topic,
                extra=_log_extra(message, "message_redelivered"),
            )
            queue.appendleft(message)
            asyncio.get_running_loop().call_later(self.redelivery_delay, self._deliver_all)


class _MemorySubscription(Subscription):
    def __init__(self, broker: InMemoryBroker, topic: str, handler: MessageHandler) -> None:
        self._broker, self._topic, self._handler = broker, topic, handler

    async def close(self) -> None:
        consumers = self._broker._consumers[self._topic]
        if self._handler in consumers:
            consumers.remove(self._handler)


_SCHEMES = "amqp:// or amqps:// (RabbitMQ), nats:// or tls:// (NATS JetStream), memory://"


def broker_from_url(url: str) -> Broker:
    """The broker a URL names, by its scheme: ``amqp://``/``amqps://`` a
    :class:`~durably.rabbitmq_broker.RabbitMQBroker`, ``nats://``/``tls://`` a
    :class:`~durably.nats_broker.NatsBroker` (servers may be comma-separated), ``memory://``
    an :class:`InMemoryBroker`. Network brokers connect at their first use."""
    if not isinstance(url, str) or not url.strip():
        raise BrokerError(f"a broker URL must be a non-empty str, not {url!r}; use {_SCHEMES}")
    scheme, sep, _ = url.strip().partition("://")
    scheme = scheme.lower()
    # Imported here: the network brokers import this module, and their drivers are optional.
    if sep and scheme in ("amqp", "amqps"):
        from .rabbitmq_broker import RabbitMQBroker

        return RabbitMQBroker(url.strip())
    if sep and scheme in ("nats", "tls"):
        from .nats_broker import NatsBroker

        return NatsBroker(url.strip())
    if sep and scheme == "memory":
        return InMemoryBroker()
    # Only the scheme is named: the rest of a URL may hold a password.
    found = f"scheme {scheme!r}" if sep else "no scheme"
    raise BrokerError(f"unsupported broker URL ({found}): use {_SCHEMES}")


def redacted(url: str, *, bare_user_is_secret: bool = False) -> str:
    """A broker URL for messages: never its password (nor, for NATS, a bare token)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    keep_user = ":" in userinfo or not bare_user_is_secret
    user = userinfo.partition(":")[0] if keep_user else ""
    return f"{scheme}{sep}{user}{at if user else ''}{host}{slash}{path}"
