"""A PostgreSQL transaction that waits on the server as few times as it can.

Three things travel together in one pipeline (psycopg's pipeline mode: the statements sent,
then one Sync, so the client waits once):

- the BEGIN, sent with the transaction's first statement rather than on its own (or not at
  all: a transaction of one held write sends just that statement, atomic on its own);
- the writes held back by :meth:`~durably.store.Tx.send`, sent before the next statement
  that returns something, or with the COMMIT;
- the statements of a :meth:`~durably.store.Tx.fetch_batch`.

The server still runs them one after the other, each under its own READ COMMITTED snapshot
taken when it starts. A transaction that sent nothing commits without a word to the server.

A pooled connection can be dead (a server restart, a failover): the first pipeline of a
transaction, the one that carries its BEGIN, then fails with nothing of the transaction on
the server, and it is sent again on a fresh connection. Not one that also carries the COMMIT
(a transaction that only held writes back): if the connection broke after the server
committed, sending it again would apply it twice. Before that one, the connection is looked
at without a round trip (a closed one has its goodbye waiting to be read) and replaced if
dead; one that dies during it fails the transaction with an unknown outcome, as any COMMIT
that loses its connection does.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Iterable, Sequence
from typing import LiteralString, Protocol

import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import DictRow

from .logs import fields
from .postgres_connections import Connection, Connections, wrap_error
from .store import Params, Row, Statement, Tx

logger = logging.getLogger("durably.postgres_store")

# A transaction whose BEGIN fails on a dead connection ran nothing: it is safe to retry on
# another connection. These are the pauses between tries.
RETRY_DELAYS = (0.05, 0.2, 0.5)
Cursor = psycopg.Cursor[DictRow]
# A plain write transaction's BEGIN (PostgresStore's): the one whose lone write may run alone.
BEGIN_WRITE: LiteralString = "BEGIN"


class Host(Protocol):
    """What a transaction takes from its store (PostgresStore): the queries, the pool, where
    it connects (for messages) and the counters it adds to."""

    queries: dict[str, str]
    connections: Connections
    where: str

    def tally(self, *, transactions: int = 0, statements: int = 0, round_trips: int = 0) -> None:
        """Add to the store's counters (StoreStats)."""


def _has_rows(cursor: Cursor) -> bool:
    result = cursor.pgresult
    return result is not None and result.status == ExecStatus.TUPLES_OK


class PostgresTx(Tx):
    __slots__ = ("_begin", "_pending", "_queries", "_store", "conn")
    combined = True

    def __init__(self, store: Host, conn: Connection, begin: Sequence[LiteralString]) -> None:
        self._store = store
        self._queries = store.queries
        self.conn = conn
        self._begin = tuple(begin)  # not sent yet: it goes with the first statement
        self._pending: list[Statement] = []  # writes held back (send)

    # -- the Tx verbs -----------------------------------------------------------------------

    def send(self, name: str, params: Params | None = None) -> None:
        self._store.tally(statements=1)
        self._pending.append((name, params))

    def send_many(self, name: str, params: Iterable[Params]) -> None:
        # In a pipeline, executemany sends one Bind/Execute per set: so do these.
        self._store.tally(statements=1)
        self._pending.extend((name, one) for one in params)

    def execute(self, name: str, params: Params | None = None) -> int:
        return self._pipeline([(name, params)])[0].rowcount

    def execute_many(self, name: str, params: Iterable[Params]) -> None:
        self._pipeline([(name, None)], many=list(params))

    def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        cursor = self._pipeline([(name, params)])[0]
        try:
            return cursor.fetchone()
        except psycopg.Error as exc:
            raise wrap_error(self.conn, f"query {name!r} failed", exc) from exc

    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        cursor = self._pipeline([(name, params)])[0]
        try:
            return list(cursor.fetchall())
        except psycopg.Error as exc:
            raise wrap_error(self.conn, f"query {name!r} failed", exc) from exc

    def fetch_batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        if not statements:
            return []
        cursors = self._pipeline(statements)
        # After the Sync every result is in: reading them sends nothing. (Not asked through
        # ``description``: it builds a Column object per column of every result.)
        return [list(c.fetchall()) if _has_rows(c) else [] for c in cursors]

    # -- the round trips --------------------------------------------------------------------

    def _pipeline(
        self, statements: Sequence[Statement], *, many: list[Params] | None = None
    ) -> list[Cursor]:
        """Send the BEGIN if it is still due, the writes held back, then ``statements`` (the
        one statement run once per set of ``many``), and wait once; a cursor per statement."""
        held = list(self._pending)
        self._pending.clear()
        self._store.tally(statements=len(statements))
        for attempt in range(len(RETRY_DELAYS) + 1):
            self._store.tally(round_trips=1)
            cursors = [self.conn.cursor() for _ in statements]
            try:
                if not self._begin and not held and len(statements) == 1 and many is None:
                    name, params = statements[0]
                    cursors[0].execute(self._queries[name], params or {})  # nothing to pipe
                    return cursors
                with self.conn.pipeline():
                    self._send_ahead(self._begin, held)
                    for cursor, (name, params) in zip(cursors, statements, strict=True):
                        if many is not None:
                            cursor.executemany(self._queries[name], many)
                        else:
                            cursor.execute(self._queries[name], params or {})
            except psycopg.Error as exc:
                if self._begin and self.conn.broken and attempt < len(RETRY_DELAYS):
                    self._reconnect(exc, attempt)  # it never began: begin it elsewhere
                    continue
                if self.conn.info.transaction_status != TransactionStatus.IDLE:
                    self._begin = ()  # it began, then failed: the rollback must be sent
                names = ", ".join(repr(name) for name, _ in [*held, *statements])
                one = len(held) + len(statements) == 1
                what = f"query {names}" if one else f"query batch ({names})"
                if self._begin:
                    what += f" (the transaction's first, {self._store.where})"
                raise wrap_error(self.conn, f"{what} failed", exc) from exc
            self._begin = ()
            return cursors
        raise AssertionError("unreachable")

    def _send_ahead(self, begin: Sequence[LiteralString], held: Sequence[Statement]) -> None:
        """Into the open pipeline: the BEGIN still due, then the writes held back."""
        for statement in begin:
            self.conn.execute(statement, prepare=False)
        for name, params in held:
            self.conn.execute(self._queries[name], params or {})

    def _reconnect(self, exc: psycopg.Error, attempt: int) -> None:
        logger.warning(
            "PostgreSQL connection lost, retrying: %s",
            exc,
            extra=fields("reconnect", attempt=attempt + 1),
        )
        connections = self._store.connections
        connections.put(self.conn)  # a broken connection is discarded by the pool
        # Other idle connections probably died with this one (a server restart).
        connections.check()
        time.sleep(RETRY_DELAYS[attempt])
        self.conn = connections.get()

    def commit(self) -> None:
        """What is held back, then COMMIT: one round trip (with the BEGIN too, when the
        transaction only held writes back)."""
        if self._begin and not self._pending:
            return  # nothing was sent: nothing to commit
        if self._begin:
            self._drop_if_dead()
        held = list(self._pending)
        self._pending.clear()
        self._store.tally(round_trips=1)
        begin, self._begin = self._begin, ()
        try:
            if not held:
                self.conn.execute("COMMIT", prepare=False)
                return
            # One statement is atomic alone (autocommit), in a plain write transaction: a read
            # one must refuse it (READ ONLY), a keyed one plan it with its SET LOCALs.
            if begin == (BEGIN_WRITE,) and len(held) == 1:
                name, params = held[0]
                self.conn.execute(self._queries[name], params or {})
                return
            with self.conn.pipeline():
                self._send_ahead(begin, held)
                self.conn.execute("COMMIT", prepare=False)
        except psycopg.Error as exc:
            # A write that failed stopped the pipeline before the COMMIT: roll back.
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("ROLLBACK", prepare=False)
            names = ", ".join(repr(name) for name, _ in held)
            what = f"query batch ({names}) failed at commit" if held else "commit failed"
            raise wrap_error(self.conn, what, exc) from exc

    def _drop_if_dead(self) -> None:
        """Before a pipeline that begins and commits at once: a pooled connection the server
        closed has its goodbye (an error, or the end of the stream) waiting to be read, while
        an idle live one has nothing. Found so, without a round trip, it is replaced; found
        only by the pipeline, it could not be (the COMMIT might have been applied)."""
        try:
            readable, _, _ = select.select([self.conn.fileno()], [], [], 0)
        except (OSError, ValueError, psycopg.Error):
            readable = [True]
        if readable:
            self.conn.close()  # the pool discards a closed connection
            self._reconnect(psycopg.OperationalError("the server closed the connection"), 0)

    def rollback(self) -> None:
        """Undo what was sent (nothing to undo when nothing was: no round trip)."""
        self._pending.clear()
        if self._begin:
            return
        self._store.tally(round_trips=1)
        try:
            self.conn.execute("ROLLBACK", prepare=False)
        except psycopg.Error as exc:
            logger.warning("rollback failed: %s", exc, extra=fields("rollback_failed"))
