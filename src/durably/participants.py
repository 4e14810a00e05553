"""The participant side of a saga: how a request is answered, and what its handler can learn.

A participant's handler keeps the ``handle(content)`` signature; while it runs,
:func:`current_request` returns the request's correlation headers as a :class:`RequestInfo`.
:func:`answer` calls it (or replays the reply its inbox recorded) and makes the reply;
:meth:`durably.broker.Broker.serve` publishes it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from . import codec, tracing
from .exceptions import ContextSerializationError, ServiceError
from .saga_inbox import ParticipantInbox
from .saga_log import message_fields
from .saga_messages import (
    HEADER_KEY,
    HEADER_REPLY_TO,
    HEADER_SAGA,
    HEADER_STEP,
    SagaResponseStatus,
    reply_message,
)
from .store import Store
from .wire import Message

__all__ = ["RequestInfo", "current_request"]

# Brokers log under one logger, whichever of their modules writes the record.
logger = logging.getLogger("durably.broker")


@dataclass(frozen=True)
class RequestInfo:
    """The request a participant is handling: the ``target`` it was sent to, and its headers.

    ``saga`` is the saga execution uuid, ``step`` the step path (e.g. ``"1"``, ``"3.0"``), and
    ``idempotency_key`` the key of this request, the same on every delivery of it. A header
    that is missing or empty (a message not sent by a saga) is ``None``.
    """

    saga: str | None
    step: str | None
    idempotency_key: str | None
    target: str


_current: ContextVar[RequestInfo | None] = ContextVar("durably_current_request", default=None)


def current_request() -> RequestInfo | None:
    """The request the calling participant handler is serving, or ``None`` outside a handler.

    Sync and async handlers both see it (and so do tasks an async handler starts, which copy
    its context); a handler moved to another thread by its own code does not, unless it copies
    the context (``contextvars.copy_context().run`` or ``asyncio.to_thread``).

    A request can reach its participant more than once: :meth:`SagaManager.resume
    <durably.saga_manager.SagaManager.resume>` sends a pending request again, and a broker
    redelivers one whose handler ran but whose reply was not out before a crash. Every delivery
    carries the same ``idempotency_key``, so a participant whose side effect must happen once
    stores the key with that side effect, in the same transaction, and on a key it already
    holds returns the stored result instead of acting again::

        @broker.service("payments")
        def charge(content):
            key = current_request().idempotency_key
            with db.transaction() as tx:
                done = tx.execute("SELECT result FROM charges WHERE key = ?", (key,)).fetchone()
                if done:
                    return json.loads(done[0])  # a repeat: reply as the first time did
                result = {"payment": make_charge(tx, content)}
                tx.execute("INSERT INTO charges VALUES (?, ?)", (key, json.dumps(result)))
                return result

    (A unique constraint on the key also guards against two deliveries running at once.)
    """
    return _current.get()


@contextmanager
def _serving(target: str, headers: Mapping[str, str]) -> Iterator[RequestInfo]:
    """Make :func:`current_request` return this request's info inside the ``with`` block."""
    info = RequestInfo(
        saga=headers.get(HEADER_SAGA) or None,
        step=headers.get(HEADER_STEP) or None,
        idempotency_key=headers.get(HEADER_KEY) or None,
        target=target,
    )
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


def inbox_of(store: Store | None) -> ParticipantInbox | None:
    """The inbox participants keep in ``store``; none without a store."""
    return None if store is None else ParticipantInbox(store)


async def answer(
    services: Mapping[str, Callable[[Any], Any]],
    target: str,
    message: Message,
    inbox: ParticipantInbox | None,
) -> Message | None:
    """The reply to one request to the participant of ``target``; None when the request names
    no topic to reply to (logged). While the handler runs, :func:`current_request` describes
    the request.

    With an ``inbox``, the reply is recorded under the request's idempotency key before it is
    returned, and a request whose key is recorded already (redelivered, or sent again by a
    resumed saga) gets the recorded reply: the handler is not called again."""
    key = message.headers.get(HEADER_KEY) or None
    stored = await inbox.get(target, key) if inbox is not None and key else None
    if stored is not None:
        status, body = stored
        logger.info(
            "request %s to %r answered from the inbox",
            key,
            target,
            extra=message_fields(message, "saga_inbox_replay"),
        )
    else:
        with _serving(target, message.headers), tracing.participant(target, message.headers):
            status, content = await _call_service(services[target], message)
        try:
            body = codec.dumps_value(content)
        except ContextSerializationError as exc:
            status = SagaResponseStatus.SYSTEM_ERROR
            body = codec.dumps_value(f"{target} replied with content that cannot be sent: {exc}")
        if inbox is not None and key:
            # Recorded before the reply goes out: a crash after this point redelivers the
            # request, which the inbox then answers without calling the handler.
            status, body = await inbox.put(target, key, status, body)
    reply_to = message.headers.get(HEADER_REPLY_TO)
    if not reply_to:
        logger.warning(
            "request to %r has no reply_to header: reply dropped",
            target,
            extra=message_fields(message, "saga_reply_dropped"),
        )
        return None
    return reply_message(message, reply_to, status, body)


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
            extra=message_fields(message, "saga_participant_failed"),
        )
        return SagaResponseStatus.SYSTEM_ERROR, f"{type(exc).__name__}: {exc}"
    return SagaResponseStatus.SUCCESS, result
