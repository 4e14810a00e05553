"""Brokers carry saga requests to participants and their replies back.

A broker edge (RabbitMQ, NATS JetStream) implements three methods, ``publish``, ``subscribe``
and ``close``; everything else is built on them and is the same for every broker
(:class:`~durably.broker_base.Broker`). Participants register with ``@broker.service(target)``;
``start_services()`` subscribes each to its queue and :meth:`Broker.serve` turns a request into
a reply (``participants``). Messages are JSON text from the context codec plus string headers
(``saga_messages.HEADER_*``): nothing is ever pickled (``wire``). :class:`InMemoryBroker` is the
embedded default (``memory_broker``); :func:`broker_from_url` picks one by URL.

Every name brokers had here is still importable from this module.
"""

from __future__ import annotations

from .broker_base import Broker
from .exceptions import BrokerError
from .memory_broker import InMemoryBroker
from .saga_log import log_rejected as log_rejected  # importable from here, as before
from .saga_messages import request_message as request_message  # importable from here, as before
from .wire import Message, MessageHandler, Subscription
from .wire import redacted as redacted  # importable from here, as before

__all__ = [
    "Broker",
    "InMemoryBroker",
    "Message",
    "MessageHandler",
    "Subscription",
    "broker_from_url",
]

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
    # Imported here: a network broker's module (and its driver) loads only for its URL.
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
