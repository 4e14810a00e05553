"""A participant's inbox: the replies it sent, by the idempotency key of the request.

A request reaches its participant more than once when a broker redelivers it (the process
died between the handler and the acknowledgement) or a resumed saga sends it again. With an
inbox (``durably worker``, or ``broker.serve(..., store=...)``) the first reply is recorded
before it is published, and every later delivery of that key gets the recorded reply: the
handler runs once per key, unless the process dies between the handler's return and the
record (then it runs again; ``current_request().idempotency_key`` lets a handler guard that
window inside its own transaction).
"""

from __future__ import annotations

from .saga_messages import SagaResponseStatus
from .saga_threads import off_loop
from .store import Store, timestamp

__all__ = ["ParticipantInbox"]


class ParticipantInbox:
    """The ``saga_inbox`` table of ``store``; the calls run off the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, target: str, key: str) -> tuple[SagaResponseStatus, str] | None:
        """The reply recorded for ``key`` at ``target``: its status and JSON body."""
        return await off_loop(self.store, self._get, target, key)

    async def put(
        self, target: str, key: str, status: SagaResponseStatus, body: str
    ) -> tuple[SagaResponseStatus, str]:
        """Record the reply; return the one recorded for ``key`` (an earlier one wins, when
        two deliveries of one request ran at once)."""
        return await off_loop(self.store, self._put, target, key, status, body)

    def _get(self, target: str, key: str) -> tuple[SagaResponseStatus, str] | None:
        with self.store.read() as tx:
            row = tx.fetch_one("saga_inbox_get", {"target": target, "key": key})
        return None if row is None else (SagaResponseStatus(int(row["status"])), row["body"])

    def _put(
        self, target: str, key: str, status: SagaResponseStatus, body: str
    ) -> tuple[SagaResponseStatus, str]:
        params = {"target": target, "key": key, "reply_status": int(status), "body": body}
        with self.store.transaction() as tx:
            if tx.execute("saga_inbox_put", {**params, "now": timestamp()}):
                return status, body
            row = tx.fetch_one("saga_inbox_get", params)
        assert row is not None  # the insert conflicted with it
        return SagaResponseStatus(int(row["status"])), row["body"]
