"""What a saga participant can learn about the request it is handling.

A participant's handler keeps the ``handle(content)`` signature; while it runs,
:func:`current_request` returns the request's correlation headers as a :class:`RequestInfo`.
:meth:`durably.broker.Broker.serve` sets it around each handler call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .saga_messages import HEADER_KEY, HEADER_SAGA, HEADER_STEP

__all__ = ["RequestInfo", "current_request"]


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
