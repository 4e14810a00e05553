"""The :class:`Broker` base class: the three methods a broker edge implements, and what every
broker builds on them (the participants it serves, the saga requests it sends).

- ``publish(message)`` puts a message on the durable queue (topic) it names;
- ``subscribe(topic, handler, durable=True)`` consumes a queue. A message is acknowledged when
  ``handler`` returns and redelivered when it raises, so a consumer that changes saga state
  acknowledges only once that change is committed; when it raises
  :class:`~durably.exceptions.UndecodableMessageError`, the message is logged once and rejected
  without requeue (dead-lettered on RabbitMQ, terminated on NATS), since no redelivery can make
  it decodable. ``durable=False`` asks for a queue that lives
  as long as the subscription (a waiting manager's private reply queue);
- ``close()`` releases connections.

The edges are ``memory_broker``, ``rabbitmq_broker`` and ``nats_broker``; how a participant
answers a request is in ``participants``.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .participants import answer, inbox_of
from .saga_messages import request_message
from .wire import Message, MessageHandler, Subscription

if TYPE_CHECKING:
    from .saga_inbox import ParticipantInbox
    from .store import Store

__all__ = ["Broker"]

_F = TypeVar("_F", bound=Callable[..., Any])


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
        inbox = inbox_of(store)
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
        inbox = inbox if inbox is not None else inbox_of(store)
        reply = await answer(self.services, target, message, inbox)
        if reply is not None:
            await self.publish(reply)

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
