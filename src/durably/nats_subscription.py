"""A NATS JetStream subscription (:class:`NatsSubscription`): how one consumed message is
handled, kept alive, acknowledged, redelivered or terminated, and how a subscription drains.

``nats_broker`` binds it to its consumer; this module knows the broker only by the settings
it reads (:class:`ConsumerSettings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from .exceptions import UndecodableMessageError
from .saga_log import log_fields, log_rejected
from .wire import Message, MessageHandler, Subscription, reason

__all__ = ["ConsumerSettings", "NatsSubscription"]

logger = logging.getLogger("durably.nats_broker")  # the broker's logger, as before the split


class ConsumerSettings(Protocol):
    """What a subscription reads of its broker (a ``NatsBroker``)."""

    stream: str
    ack_wait: float
    redelivery_delay: float


class NatsSubscription(Subscription):
    """One topic consumed from the stream: each message handed to ``handler`` in a task of its
    own, then acknowledged, ``nak``-ed for redelivery or terminated.

    ``settings`` is the broker the subscription belongs to, read when a message needs its
    settings (so a change to them applies at once); ``js`` the JetStream context it was bound
    on; ``forget`` what tells the broker the subscription is closed."""

    def __init__(
        self,
        settings: ConsumerSettings,
        topic: str,
        handler: MessageHandler,
        *,
        js: Any,
        forget: Callable[[NatsSubscription], None],
    ) -> None:
        self._settings, self._topic, self._handler = settings, topic, handler
        self._js, self._forget = js, forget
        self.psub: Any = None  # nats.js.JetStreamContext.PushSubscription
        self.ephemeral: str | None = None  # the consumer to delete at close
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def on_message(self, msg: Any) -> None:
        # nats-py calls a subscription's callback for one message at a time: hand each to a
        # task, so up to max_ack_pending handlers run at once instead of queueing behind one.
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _handle(self, msg: Any) -> None:
        from nats.errors import Error

        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        message = Message(self._topic, "", headers, id=_message_id(self._settings.stream, msg))
        keepalive = asyncio.get_running_loop().create_task(self._keep_alive(msg))
        try:
            try:
                message = replace(message, body=msg.data.decode())
            except UnicodeDecodeError:
                raise UndecodableMessageError("the body is not UTF-8 text") from None
            await self._handler(message)
        except UndecodableMessageError as exc:
            # No redelivery can make it decodable: logged once and terminated (never again).
            log_rejected(message, exc, "terminated")
            with contextlib.suppress(Error, OSError):
                await msg.term()
            return
        except Exception:
            delay = self._settings.redelivery_delay
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
            failed = True
        else:
            failed = False
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
        try:
            await (msg.nak(delay=self._settings.redelivery_delay) if failed else msg.ack())
        except (Error, OSError) as exc:
            logger.warning(
                "cannot settle a message on %r (%s): it will be redelivered after ack_wait",
                self._topic,
                reason(exc),
                extra=log_fields("message_settle_failed", topic=self._topic),
            )

    async def _keep_alive(self, msg: Any) -> None:
        """Tell the server, while the handler runs, that the message is not lost."""
        from nats.errors import Error

        while True:
            await asyncio.sleep(self._settings.ack_wait / 2)
            try:
                await msg.in_progress()
            except (Error, OSError) as exc:
                logger.debug(
                    "in progress on %r: %s",
                    self._topic,
                    reason(exc),
                    extra=log_fields("message_in_progress_failed"),
                )
                return

    async def close(self) -> None:
        """Stop receiving, let the handlers in progress settle their messages, and delete an
        ephemeral consumer."""
        if self._closed:
            return
        self._closed = True
        from nats.errors import Error
        from nats.js.errors import NotFoundError

        if self.psub is not None:
            try:
                await self.psub.drain()  # hands over the messages already received
            except (Error, OSError) as exc:
                logger.debug(
                    "draining the subscription to %r: %s",
                    self._topic,
                    reason(exc),
                    extra=log_fields("subscription_drain_failed"),
                )
        others = self._running - {asyncio.current_task()}  # a handler may close its own sub
        if others:
            await asyncio.wait(others)
        if self.ephemeral is not None:
            # Deleted now, not after the server's inactivity timeout: a work-queue stream
            # allows one consumer per subject, and the topic may be subscribed again at once.
            try:
                await self._js.delete_consumer(self._settings.stream, self.ephemeral)
            except NotFoundError:
                pass
            except (Error, OSError) as exc:
                logger.debug(
                    "deleting the consumer of %r: %s",
                    self._topic,
                    reason(exc),
                    extra=log_fields("consumer_delete_failed"),
                )
        self._forget(self)


def _message_id(stream: str, msg: Any) -> str:
    """The stream sequence of a JetStream message: the same on every redelivery."""
    try:
        return f"{stream}:{msg.metadata.sequence.stream}"
    except Exception:  # not a JetStream message (no metadata in its reply subject)
        return ""
