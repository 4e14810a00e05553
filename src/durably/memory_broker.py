"""The embedded broker (:class:`InMemoryBroker`): a queue per topic in this process, the default
of ``SagaManager`` and of tests and demos. It keeps the network brokers' contract: a message is
acknowledged when its handler returns and delivered again, after a pause, when it raises.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import defaultdict, deque
from dataclasses import replace
from typing import TYPE_CHECKING

from .broker_base import Broker
from .exceptions import UndecodableMessageError
from .participants import inbox_of
from .saga_log import log_rejected, message_fields
from .wire import Message, MessageHandler, Subscription

if TYPE_CHECKING:
    from .store import Store

__all__ = ["InMemoryBroker"]

# Brokers log under one logger, whichever of their modules writes the record.
logger = logging.getLogger("durably.broker")


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
            inbox = inbox_of(store)
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
                extra=message_fields(message, "message_redelivered"),
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
