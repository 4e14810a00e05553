"""The PostgreSQL store: psycopg 3 and a connection pool, for many workers on many machines.

Transactions, migrations and the LISTEN connection live here; what a transaction sends, and
when, in :mod:`durably.postgres_tx`; the pool, its options and the driver's errors in
:mod:`durably.postgres_connections`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import sql as pgsql

from . import sql
from .exceptions import MigrationError, StoreConnectionError, StoreError
from .logs import fields
from .postgres_connections import Connection, Connections, wrap_error
from .postgres_tx import BEGIN_WRITE, RETRY_DELAYS, PostgresTx
from .store import Store, Tx, iter_statements

logger = logging.getLogger(__name__)

WORK_CHANNEL = "durably_work"

_TOKEN = re.compile(
    r"""
      (?P<text>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/)  # literals, identifiers, comments
    | (?P<cast>::)
    | :(?P<param>[A-Za-z_]\w*)
    | (?P<percent>%)
    """,
    re.VERBOSE | re.DOTALL,
)


def to_psycopg(query: str) -> str:
    """Rewrite ``:name`` parameters as psycopg's ``%(name)s``; ``::casts`` stay, ``%`` doubles.

    psycopg reads ``%`` everywhere, inside literals and comments too, so those double as well.
    """

    def replace(match: re.Match[str]) -> str:
        if match["text"] is not None:
            return match["text"].replace("%", "%%")
        if match["cast"] is not None:
            return "::"
        if match["param"] is not None:
            return f"%({match['param']})s"
        return "%%"

    return _TOKEN.sub(replace, query)


class PostgresStore(Store):
    """A pool of connections shared by the engine's threads; each transaction takes one.

    ``schema`` isolates a tenant: its tables live in that schema, created on migrate, and every
    pooled connection's ``search_path`` names only it. Other options are libpq connection
    parameters (``sslmode``, ``application_name``, ...), from the URL's query or as keywords.
    """

    dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: Any = 1,
        max_size: Any = 10,
        timeout: Any = 10.0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.queries = {name: to_psycopg(q) for name, q in sql.queries(self.dialect).items()}
        self._stats_lock = threading.Lock()
        self._listen_lock = threading.Lock()
        self._listener: Connection | None = None
        self._closed = False
        self.connections = Connections(
            url, schema=schema, min_size=min_size, max_size=max_size, timeout=timeout, **options
        )
        self.schema = schema
        self.where = self.connections.where

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _begin(self, *, read_only: bool = False) -> Iterator[Connection]:
        """A transaction begun at once on a pooled connection (migrations, the schema's
        version): committed when the block exits, rolled back on an error."""
        conn = self._start(_BEGIN_READ if read_only else BEGIN_WRITE)
        try:
            try:
                yield conn
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK", prepare=False)
                except psycopg.Error as rollback_exc:
                    logger.warning(
                        "rollback failed: %s", rollback_exc, extra=fields("rollback_failed")
                    )
                if isinstance(exc, psycopg.Error):
                    raise wrap_error(conn, "PostgreSQL error", exc) from exc
                raise
            try:
                conn.execute("COMMIT", prepare=False)
            except psycopg.Error as exc:
                raise wrap_error(conn, "commit failed", exc) from exc
        finally:
            self.connections.put(conn)

    @contextmanager
    def _transaction(self, begin: Sequence[LiteralString]) -> Iterator[PostgresTx]:
        """A transaction whose BEGIN goes with its first statement (postgres_tx.py)."""
        tx = PostgresTx(self, self.connections.get(), begin)
        try:
            try:
                yield tx
            except BaseException as exc:
                tx.rollback()
                if isinstance(exc, psycopg.Error):
                    raise wrap_error(tx.conn, "PostgreSQL error", exc) from exc
                raise
            tx.commit()
        finally:
            self.connections.put(tx.conn)
        self.tally(transactions=1)

    def _start(self, begin: LiteralString) -> Connection:
        """A pooled connection with a transaction begun; dead connections are replaced."""
        for attempt in range(len(RETRY_DELAYS) + 1):
            conn = self.connections.get()
            try:
                conn.execute(begin, prepare=False)
            except psycopg.Error as exc:
                self.connections.put(conn)  # a broken connection is discarded by the pool
                if not conn.broken or attempt == len(RETRY_DELAYS):
                    raise wrap_error(
                        conn, f"cannot begin a transaction ({self.where})", exc
                    ) from exc
                logger.warning(
                    "PostgreSQL connection lost, retrying: %s",
                    exc,
                    extra=fields("reconnect", attempt=attempt + 1),
                )
                self.connections.check()
                time.sleep(RETRY_DELAYS[attempt])
                continue
            return conn
        raise AssertionError("unreachable")

    def tally(self, *, transactions: int = 0, statements: int = 0, round_trips: int = 0) -> None:
        with self._stats_lock:
            self.stats.transactions += transactions
            self.stats.statements += statements
            self.stats.round_trips += round_trips

    # -- the Store interface -------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, keyed: bool = False) -> Iterator[Tx]:
        with self._transaction(_BEGIN_KEYED if keyed else (BEGIN_WRITE,)) as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        # One snapshot for the whole block; REPEATABLE READ READ ONLY cannot fail with a
        # serialization error. A write sent here fails at its commit.
        with self._transaction((_BEGIN_READ,)) as tx:
            yield tx

    def schema_version(self) -> int:
        with self._begin(read_only=True) as conn:
            try:
                return _version(conn)
            except psycopg.Error as exc:
                raise wrap_error(conn, "cannot read the schema version", exc) from exc

    def migrate(self) -> int:
        try:
            with self._begin() as conn:
                # One migrating process per schema at a time; the others then find it done.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    [f"durably.migrate:{self.schema or ''}"],
                )
                if self.schema is not None:
                    conn.execute(
                        pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            pgsql.Identifier(self.schema)
                        )
                    )
                return _migrate(conn)
        except (MigrationError, StoreConnectionError):
            raise
        except StoreError as exc:
            raise MigrationError(f"cannot migrate PostgreSQL ({self.where}): {exc}") from exc

    def wait_for_work(self, timeout: float) -> None:
        """Wait for a NOTIFY on ``durably_work`` (sent by the ``notify_work`` query)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        # Another thread already listens: its wake-up or timeout is as good as ours.
        if not self._listen_lock.acquire(timeout=max(timeout, 0.0)):
            return
        try:
            if self._closed:
                return
            if self._listener is None:
                self._listener = self.connections.connect()
                self._listener.execute(
                    pgsql.SQL("LISTEN {}").format(pgsql.Identifier(WORK_CHANNEL))
                )
                # Work queued before we listened sent no signal we could see: look first.
                return
            # Short slices, so that close() never waits long for this thread.
            while not self._closed and (left := deadline - time.monotonic()) > 0:
                if any(True for _ in self._listener.notifies(timeout=min(left, 0.5), stop_after=1)):
                    # Several signals are one reason to look for work.
                    for _ in self._listener.notifies(timeout=0):
                        pass
                    return
        except (psycopg.Error, StoreError) as exc:
            # Polling still finds the work; listening resumes on the next call.
            logger.warning("LISTEN connection failed: %s", exc, extra=fields("listen_failed"))
            self._drop_listener()
            time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            self._listen_lock.release()

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def close(self) -> None:
        self._closed = True
        locked = self._listen_lock.acquire(timeout=2.0)
        try:
            self._drop_listener()
        finally:
            if locked:
                self._listen_lock.release()
        self.connections.close()


# The worker's transactions (keyed=True), all of whose statements find rows by key or walk an
# index made for them, whatever the planner's statistics say:
# - A claim walks the ready rows in its index's order and stops after its batch. With stale
#   or no statistics (a queue filled since the last ANALYZE) the planner believes only a row
#   or two are ready and prefers a bitmap scan that sorts every ready row: 54 ms a claim at
#   2,000 queued, against 0.1 ms. Without bitmap scans the ordered walk is its cheapest plan.
# - A statement run often is prepared, and its generic plan kept for the connection's life.
#   Made while the tables were small (a new database, a worker's first turns), that plan
#   read them whole, then kept doing so as they grew: the records of a batch scanned every
#   task and execution row until an ANALYZE came (none in the first minute: 14.6 million
#   rows read in a run of 8,000 jobs). Without sequential scans a plan by key is chosen
#   from the first, and stays right.
# All go with the transaction's first statement, in its round trip.
_BEGIN_KEYED: tuple[LiteralString, ...] = (
    BEGIN_WRITE,
    "SET LOCAL enable_bitmapscan = off",
    "SET LOCAL enable_seqscan = off",
)
_BEGIN_READ: LiteralString = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


def _version(conn: Connection) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present").fetchone()
    if not row or not row["present"]:
        return 0
    row = conn.execute("SELECT max(version) AS version FROM schema_version").fetchone()
    return int(row["version"] or 0) if row else 0


def _migrate(conn: Connection) -> int:
    """Apply what is missing, inside the caller's transaction."""
    scripts, versions = sql.plan("postgres", _version(conn))
    if not versions:
        return 0
    conn.execute(_VERSION_TABLE)
    for script in scripts:
        _run_script(conn, script)
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO schema_version (version) VALUES (%s)", [(v,) for v in versions]
        )
    return len(versions)


def _run_script(conn: Connection, script: str) -> None:
    for statement in iter_statements(script):
        # No parameters: psycopg sends the text as it is (a % needs no doubling).
        conn.execute(statement)


def apply_migrations_only(conn: psycopg.Connection[Any]) -> None:
    """Build the schema from the migrations alone (the schema-equals-migrations test)."""
    conn.execute(_VERSION_TABLE)
    for _version_number, script in sql.migrations("postgres"):
        for statement in iter_statements(script):
            conn.execute(statement)
