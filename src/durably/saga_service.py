"""The saga side of ``durably worker``: participants and the reply listener, over brokers.

Participants answer from an inbox in the worker's database (a request answered before gets
the recorded reply), and the reply listener also relays the outbox requests that managers
which stopped left unsent.

The workflow Worker is synchronous and owns the main thread, while brokers and SagaManager are
asyncio; so sagas are served on a daemon thread with an event loop of its own, which
``start()`` and ``stop()`` drive from the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from .broker_base import Broker
from .exceptions import BrokerError
from .memory_broker import InMemoryBroker
from .saga import Saga
from .saga_execution import SagaExecution
from .saga_log import log_fields
from .saga_manager import DEFAULT_REPLY_TO, SagaManager
from .saga_repository import SagaExecutionRepository
from .wire import Message, MessageHandler, Subscription

__all__ = ["SagaService", "rollback_saga"]

logger = logging.getLogger(__name__)


class SagaService:
    """Serves the ``@service`` participants of ``brokers`` and ``broker`` and, when there are
    ``sagas``, a reply listener on ``reply_to`` that resumes their executions paused in the
    database ``db_url``. Replies arrive on ``broker`` or, without it, on the only one of
    ``brokers`` (several: ``ValueError``). ``on_error`` hears of a failure after ``start()``.
    The participants' inbox is in ``db_url`` too."""

    def __init__(
        self,
        db_url: str | None,
        sagas: Iterable[Saga],
        brokers: Iterable[Broker],
        broker: Broker | None = None,
        *,
        reply_to: str = DEFAULT_REPLY_TO,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.sagas = list(sagas)
        found: dict[int, Broker] = {id(b): b for b in brokers}
        if len(found) > 1 and broker is None and self.sagas:
            raise ValueError(
                f"the modules define {len(found)} brokers: pass --broker URL to say which one "
                "carries the saga replies"
            )
        # Where replies arrive; None: no broker at all (the manager makes an in-memory one).
        self.pool = broker if broker is not None else next(iter(found.values()), None)
        if broker is not None:
            found.setdefault(id(broker), broker)
        self.brokers = list(found.values())
        self.db_url = db_url
        self.reply_to = reply_to
        self.on_error = on_error
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="durably-sagas", daemon=True)

    def start(self) -> None:
        """Return once every participant and the reply listener are subscribed; raise here
        what prevented it (an unreachable broker, say)."""
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming (handlers in progress settle their messages), close the brokers."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the thread ended already
                loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            self.error = exc
            if self._ready.is_set():
                logger.error(
                    "saga service failed: %s",
                    exc,
                    exc_info=exc,
                    extra=log_fields("saga_service_failed"),
                )
                if self.on_error is not None:
                    self.on_error(exc)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        subscriptions: list[Subscription] = []
        listener: asyncio.Task[None] | None = None
        repo: SagaExecutionRepository | None = None
        try:
            if self.sagas or any(broker.services for broker in self.brokers):
                # Opened on this thread, which is the one that uses it. Participants keep
                # their inbox in it, sagas their executions and outbox.
                repo = SagaExecutionRepository(self.db_url)
            for broker in self.brokers:
                subscriptions += await broker.start_services(
                    store=repo.db if repo is not None else None
                )
            if self.sagas:
                assert repo is not None
                subscribed = asyncio.Event()
                pool = _Announcing(self.pool or InMemoryBroker(), subscribed)
                manager = SagaManager(repo, pool, sagas=self.sagas, reply_to=self.reply_to)
                listener = asyncio.create_task(manager.serve_replies())
                await _until(subscribed, listener)
            self._ready.set()
            await _until(self._stopping, listener)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            closing: list[Subscription | Broker] = [*subscriptions, *self.brokers]
            for each in closing:
                try:
                    await each.close()
                except Exception as exc:  # the others must still be closed
                    logger.warning("closing %r: %s", each, exc, extra=log_fields("close_failed"))
            if repo is not None:
                repo.close()


async def _until(event: asyncio.Event, listener: asyncio.Task[None] | None) -> None:
    """Wait for ``event``, raising the listener's error if it fails first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        waits: set[asyncio.Future[Any]] = {waiter} if listener is None else {waiter, listener}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if listener is not None and listener.done():
        listener.result()  # serve_replies() only ends by failing (or being cancelled)


class _Announcing(Broker):
    """The reply broker as the manager sees it: SagaManager does not tell when
    ``serve_replies()`` has subscribed, so this sets ``subscribed`` then."""

    def __init__(self, broker: Broker, subscribed: asyncio.Event) -> None:
        super().__init__()
        self.broker, self.subscribed = broker, subscribed

    async def publish(self, message: Message) -> None:
        await self.broker.publish(message)

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        subscription = await self.broker.subscribe(topic, handler, durable=durable)
        self.subscribed.set()
        return subscription


class _NoBroker(Broker):
    """Stands in when no broker is given: a request "sent" through it stays in the outbox,
    where the relay of a ``durably worker`` with a broker publishes it once its lease ends."""

    async def publish(self, message: Message) -> None:
        raise BrokerError("no broker given: the request waits in the outbox for a worker")

    async def subscribe(
        self, topic: str, handler: MessageHandler, *, durable: bool = True
    ) -> Subscription:
        raise BrokerError("no broker given")


def rollback_saga(
    db_url: str | None,
    uuid: UUID | str,
    broker: Broker | None = None,
    *,
    reply_to: str = DEFAULT_REPLY_TO,
) -> SagaExecution:
    """Roll a stored saga execution back (``durably cancel ID``): its local compensations run
    here; its first remote compensation is sent through ``broker`` (or, without one, left in
    the outbox for a worker), and the reply listener of a worker resumes the rest. The saga's
    definition must be registered (import the module that commits it)."""

    async def main() -> SagaExecution:
        repo = SagaExecutionRepository(db_url)
        pool = broker if broker is not None else _NoBroker()
        try:
            async with SagaManager(repo, pool, reply_to=reply_to) as manager:
                return await manager.rollback(uuid, pause_on_disk=True)
        finally:
            if broker is not None:
                await broker.close()
            repo.close()

    return asyncio.run(main())
