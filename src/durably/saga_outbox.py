"""The transactional outbox of saga requests, and the relay that publishes it.

A step that sends a request does not publish it: it saves its paused state and the request
(an :class:`OutboxEntry`) in one transaction, then hands the entry to its manager's
:class:`OutboxRelay`. The relay publishes it and deletes the row; when the broker fails (any
exception a driver raises), the row stays, and the relay tries again with exponential backoff
for as long as its process lives. So a request goes out if and only if the state that awaits
its reply was saved, a broker outage only delays it, and no saga is compensated because a
broker was down.

Each row is leased to the relay that wrote it. A relay that finds rows whose lease ran out
(their writer died) takes them over: ``durably worker`` (``SagaManager.serve_replies``) does
that continuously. A request written by a manager that waited for the reply in memory names
that manager's private reply queue; a relay taking it over sends it to the shared reply topic
instead (``fallback_reply_to``), where the reply listener resumes the execution from disk.

Delivery is at least once: a relay that dies between publishing and deleting the row leaves it
to be published again after the lease, under the same idempotency key and token, so the
participant's inbox and the saga's applied-reply keys absorb the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from .broker_base import Broker
from .saga_messages import HEADER_REPLY_TO
from .saga_threads import off_loop
from .store import Row, Store, timestamp
from .wire import Message

__all__ = ["OutboxEntry", "OutboxRelay"]

logger = logging.getLogger(__name__)

LEASE = 30.0  # seconds a row stays with the relay that wrote or last tried it
FLUSH_DELAY = 0.05  # seconds published rows wait to be deleted together


@dataclass(frozen=True)
class OutboxEntry:
    """One request waiting to be published."""

    saga: str  # the execution uuid
    key: str  # the request's idempotency key
    topic: str
    body: str
    headers: dict[str, str]
    creator: str  # the relay that wrote it
    fallback_reply_to: str | None = None
    attempts: int = 0
    id: str = field(default_factory=lambda: str(uuid4()))

    def message(self, relay: str) -> Message:
        """The message ``relay`` publishes: a row taken over from a dead writer gets the
        shared reply topic, since nobody consumes the writer's private one any more."""
        headers = dict(self.headers)
        if relay != self.creator and self.fallback_reply_to:
            headers[HEADER_REPLY_TO] = self.fallback_reply_to
        # The row's id names the message: NATS JetStream drops a second publish of it.
        return Message(self.topic, self.body, headers, id=self.id)

    def row(self, now: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "saga_execution_id": self.saga,
            "idempotency_key": self.key,
            "topic": self.topic,
            "body": self.body,
            "headers": json.dumps(self.headers, separators=(",", ":")),
            "fallback_reply_to": self.fallback_reply_to,
            "creator": self.creator,
            "lease_until": timestamp(time.time() + LEASE),
            "now": now,
        }

    @classmethod
    def from_row(cls, row: Row) -> OutboxEntry:
        return cls(
            saga=str(row["saga_execution_id"]),
            key=row["idempotency_key"],
            topic=row["topic"],
            body=row["body"],
            headers=dict(json.loads(row["headers"])),
            creator=row["creator"],
            fallback_reply_to=row["fallback_reply_to"],
            attempts=int(row["attempts"]),
            id=str(row["id"]),
        )


class OutboxRelay:
    """Publishes the outbox rows of ``store`` on ``broker``.

    ``publish(entry)`` is the fast path for a row just written; ``run()`` serves every due row
    (this relay's and those whose lease ran out) until cancelled; ``start()`` runs, in the
    background, the retries of this relay's own rows until none is left. ``prepare(entry)``
    runs before each publish of a row this relay wrote (the manager subscribes its private
    reply queue there, which needs the broker too). Backoff: ``initial_delay`` doubling up to
    ``max_delay`` seconds, with jitter."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        name: str | None = None,
        prepare: Callable[[OutboxEntry], Awaitable[None]] | None = None,
        initial_delay: float = 0.05,
        max_delay: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.broker = broker
        self.id = name or f"relay-{uuid4().hex[:12]}"
        self.prepare = prepare
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.poll_interval = poll_interval
        self.failures: dict[str, BaseException] = {}  # idempotency key -> last broker error
        self._wake: asyncio.Event | None = None
        self._wake_loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # Published rows whose deletion is batched (one transaction per FLUSH_DELAY): saved
        # a transaction per request on the saga's path. Until deleted, this relay skips them.
        self._published: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None

    async def publish(self, entry: OutboxEntry, *, batch_delete: bool = False) -> bool:
        """Publish ``entry`` and delete its row; on a broker failure keep the row for a retry
        (started in the background) and return False. With ``batch_delete`` the row is
        deleted a moment later with others, off the caller's path: for a request whose reply
        this process awaits, whose save deletes the row anyway."""
        try:
            if self.prepare is not None and entry.creator == self.id:
                await self.prepare(entry)
            await self.broker.publish(entry.message(self.id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the driver raises: the row is retried
            await self._retry_later(entry, exc)
            return False
        if batch_delete:
            self._published.add(entry.id)
            loop = asyncio.get_running_loop()
            if (
                self._flusher is None
                or self._flusher.done()
                or self._flusher.get_loop() is not loop
            ):
                self._flusher = loop.create_task(self._flush_soon())
        else:
            try:
                await off_loop(self.store, self._delete_published, [entry.id])
            except asyncio.CancelledError:
                # close() during the delete: the request is out, so close()'s flush deletes
                # its row (the delete's thread may not be done when close() returns).
                self._published.add(entry.id)
                raise
        if self.failures and not self._running():
            # Rows that failed earlier (in a loop since ended, say) go out now that the broker
            # answers again, instead of waiting for another relay to take them over.
            self.start()
        if self.failures.pop(entry.key, None) is not None:
            logger.info(
                "request %s published after %d failed attempt(s)",
                entry.key,
                entry.attempts,
                extra=_extra(entry, "saga_outbox_published"),
            )
        return True

    def start(self) -> None:
        """Retry this relay's unpublished rows in the background until none is left."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._serve(own_only=True))
        self._event().set()

    async def run(self) -> None:
        """Publish every due row, this relay's and abandoned ones, until cancelled."""
        await self._serve(own_only=False)

    async def close(self) -> None:
        """Stop the background retries; rows left go to another relay after their lease."""
        loop = asyncio.get_running_loop()
        for task in (self._task, self._flusher):
            # A task of an earlier event loop ended with that loop.
            if task is not None and not task.done() and task.get_loop() is loop:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Delete the rows published so far (a row left by a crash before this is published
        again after its lease: at least once)."""
        ids = sorted(self._published)
        if ids:
            await off_loop(self.store, self._delete_published, ids)
            self._published.difference_update(ids)

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await self.flush()

    def _delete_published(self, ids: list[str]) -> None:
        with self.store.transaction() as tx:
            tx.execute_many("saga_outbox_published", [{"id": row_id} for row_id in ids])

    # -- internals -------------------------------------------------------------------------

    def _running(self) -> bool:
        task = self._task
        return (
            task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()
        )

    def _event(self) -> asyncio.Event:
        # One per event loop: a manager may be used from one asyncio.run() after another, and
        # an Event stays bound to the loop it first waited on.
        loop = asyncio.get_running_loop()
        if self._wake is None or self._wake_loop is not loop:
            self._wake, self._wake_loop = asyncio.Event(), loop
        return self._wake

    async def _serve(self, *, own_only: bool) -> None:
        while True:
            wake = self._event()
            wake.clear()
            entries = await off_loop(self.store, self._due)
            for entry in entries:
                if entry.id in self._published or (own_only and entry.creator != self.id):
                    continue
                if await off_loop(self.store, self._claim, entry):
                    await self.publish(entry)
            if own_only and not entries and not await off_loop(self.store, self._owned):
                return
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the wait ends, and close() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._pause()):
                    await wake.wait()

    def _pause(self) -> float:
        if not self.failures:
            return self.poll_interval
        return min(self.poll_interval, self.initial_delay * 2)

    async def _retry_later(self, entry: OutboxEntry, exc: BaseException) -> None:
        attempts = entry.attempts + 1
        delay = min(self.max_delay, self.initial_delay * 2 ** (attempts - 1))
        delay *= random.uniform(0.75, 1.25)
        first = entry.key not in self.failures
        self.failures[entry.key] = exc
        if first:
            logger.warning(
                "cannot publish request %s to %r (%s: %s): it stays in the outbox and is "
                "retried with backoff",
                entry.key,
                entry.topic,
                type(exc).__name__,
                exc,
                extra=_extra(entry, "saga_outbox_retry"),
            )
        now = time.time()
        params = {
            "id": entry.id,
            "me": self.id,
            "next_attempt_at": timestamp(now + delay),
            "lease_until": timestamp(now + LEASE),
            "error": f"{type(exc).__name__}: {exc}"[:1000],
        }
        if not await off_loop(self.store, self._execute, "saga_outbox_retry", params):
            # The row is gone: its reply arrived meanwhile (the publish did get through) or
            # its execution was rolled back. Nothing is left to retry.
            self.failures.pop(entry.key, None)
            return
        self.start()

    def _due(self) -> list[OutboxEntry]:
        with self.store.read() as tx:
            rows = tx.fetch_all(
                "saga_outbox_due", {"now": timestamp(), "me": self.id, "limit": 100}
            )
        return [OutboxEntry.from_row(row) for row in rows]

    def _claim(self, entry: OutboxEntry) -> bool:
        now = time.time()
        params = {
            "id": entry.id,
            "me": self.id,
            "now": timestamp(now),
            "lease_until": timestamp(now + LEASE),
        }
        with self.store.transaction() as tx:
            return tx.execute("saga_outbox_claim", params) > 0

    def _owned(self) -> bool:
        with self.store.read() as tx:
            row = tx.fetch_one("saga_outbox_owned", {"me": self.id})
        return bool(row is not None and int(row["n"]))

    def _execute(self, name: str, params: dict[str, Any]) -> int:
        with self.store.transaction() as tx:
            return tx.execute(name, params)


def _extra(entry: OutboxEntry, action: str) -> dict[str, Any]:
    return {
        "execution_id": entry.saga,
        "workflow": None,
        "task": entry.headers.get("step"),
        "attempt": entry.attempts + 1,
        "action": action,
        "topic": entry.topic,
    }
