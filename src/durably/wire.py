"""What travels through a broker, and what every broker edge shares to hand it over.

A :class:`Message` is a topic, a JSON body and string headers; a subscription feeds each one to
a :data:`MessageHandler` and is stopped through its :class:`Subscription`. The helpers below
write a driver error or a broker URL into messages the same way for every broker, and never
with a password. (How a message is logged is in ``saga_log``.)
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["Message", "MessageHandler", "Subscription", "reason", "redacted"]


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


def redacted(url: str, *, bare_user_is_secret: bool = False) -> str:
    """A broker URL for messages: never its password (nor, for NATS, a bare token)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    keep_user = ":" in userinfo or not bare_user_is_secret
    user = userinfo.partition(":")[0] if keep_user else ""
    return f"{scheme}{sep}{user}{at if user else ''}{host}{slash}{path}"


def reason(exc: BaseException) -> str:
    """A driver error for a message: its text, or its class when it has none."""
    return str(exc) or type(exc).__name__
