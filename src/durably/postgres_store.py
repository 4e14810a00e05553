"""The PostgreSQL store: psycopg 3 and a connection pool, for many workers on many machines.

Transactions, named queries (a few of them sent together: pipeline mode), migrations and the
LISTEN connection live here; the pool, its options and the driver's errors in
:mod:`durably.postgres_connections`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import DictRow

from . import sql
from .exceptions import MigrationError, StoreConnectionError, StoreError
from .logs import fields
from .postgres_connections import Connection, Connections, wrap_error
from .store import Params, Row, Statement, Store, Tx, iter_statements

logger = logging.getLogger(__name__)

WORK_CHANNEL = "durably_work"
# A transaction whose BEGIN fails on a dead connection ran nothing: it is safe to retry on
# another connection. These are the pauses between tries.
RETRY_DELAYS = (0.05, 0.2, 0.5)

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


class _PostgresTx(Tx):
    __slots__ = ("_conn", "_cursor", "_pending", "_queries", "_store")

    def __init__(self, store: PostgresStore, conn: Connection, pending: list[Statement]) -> None:
        self._store = store
        self._queries = store._queries
        self._conn = conn
        self._cursor = conn.cursor()
        # Writes sent with the next statement or the COMMIT (send); the list is the
        # transaction's, which commits what is left in it.
        self._pending = pending

    def _run(self, name: str, params: Params | None) -> psycopg.Cursor[DictRow]:
        self._store._count(statements=1, round_trips=1)
        if self._pending:
            return self._carry(name, params)
        try:
            return self._cursor.execute(self._queries[name], params or {})
        except psycopg.Error as exc:
            raise wrap_error(self._conn, f"query {name!r} failed", exc) from exc

    def _carry(self, name: str, params: Params | None) -> psycopg.Cursor[DictRow]:
        """The writes held back, then this statement: one pipeline, one wait."""
        statements = [*self._pending, (name, params)]
        self._pending.clear()
        try:
            with self._conn.pipeline():
                for held, held_params in statements[:-1]:
                    self._conn.execute(self._queries[held], held_params or {})
                self._cursor.execute(self._queries[name], params or {})
        except psycopg.Error as exc:
            raise wrap_error(self._conn, f"query batch ({_names(statements)}) failed", exc) from exc
        return self._cursor

    def send(self, name: str, params: Params | None = None) -> None:
        self._store._count(statements=1)
        self._pending.append((name, params))

    def send_many(self, name: str, params: Iterable[Params]) -> None:
        # In a pipeline, executemany sends one Bind/Execute per set: so do these.
        self._store._count(statements=1)
        self._pending.extend((name, one) for one in params)

    def execute(self, name: str, params: Params | None = None) -> int:
        return self._run(name, params).rowcount

    def execute_many(self, name: str, params: Iterable[Params]) -> None:
        # One round trip: psycopg sends every parameter set in pipeline mode (with the
        # writes held back before them).
        self._store._count(statements=1, round_trips=1)
        held = list(self._pending)
        self._pending.clear()
        try:
            with self._conn.pipeline():
                for name_, params_ in held:
                    self._conn.execute(self._queries[name_], params_ or {})
                self._cursor.executemany(self._queries[name], params)
        except psycopg.Error as exc:
            names = _names([*held, (name, None)])
            raise wrap_error(self._conn, f"query batch ({names}) failed", exc) from exc

    def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        cursor = self._run(name, params)
        try:
            return cursor.fetchone()
        except psycopg.Error as exc:
            raise wrap_error(self._conn, f"query {name!r} failed", exc) from exc

    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        cursor = self._run(name, params)
        try:
            return list(cursor.fetchall())
        except psycopg.Error as exc:
            raise wrap_error(self._conn, f"query {name!r} failed", exc) from exc

    def fetch_batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """The statements in one pipeline: sent together, then one Sync, so the client waits
        once. The server still runs them one after the other, each with its own snapshot
        taken when it starts (READ COMMITTED), inside the open transaction."""
        if len(statements) < 2:
            return super().fetch_batch(statements)
        self._store._count(statements=len(statements), round_trips=1)
        held = list(self._pending)
        self._pending.clear()
        cursors = [self._conn.cursor() for _ in statements]
        try:
            with self._conn.pipeline():
                for name, params in held:
                    self._conn.execute(self._queries[name], params or {})
                for cursor, (name, params) in zip(cursors, statements, strict=True):
                    cursor.execute(self._queries[name], params or {})
            # After the Sync every result is in: reading them sends nothing.
            return [list(c.fetchall()) if c.description is not None else [] for c in cursors]
        except psycopg.Error as exc:
            names = _names([*held, *statements])
            raise wrap_error(self._conn, f"query batch ({names}) failed", exc) from exc


def _names(statements: Sequence[Statement]) -> str:
    return ", ".join(repr(name) for name, _ in statements)


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
        self._queries = {name: to_psycopg(q) for name, q in sql.queries(self.dialect).items()}
        self._stats_lock = threading.Lock()
        self._listen_lock = threading.Lock()
        self._listener: Connection | None = None
        self._closed = False
        self._connections = Connections(
            url, schema=schema, min_size=min_size, max_size=max_size, timeout=timeout, **options
        )
        self.schema = schema
        self.where = self._connections.where

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _begin(
        self,
        *,
        read_only: bool = False,
        counted: bool = False,
        claiming: bool = False,
        pending: list[Statement] | None = None,
    ) -> Iterator[Connection]:
        """A transaction on a pooled connection: committed when the block exits, rolled back
        on an error. ``counted``: its BEGIN and COMMIT (or ROLLBACK) go to the stats.
        ``pending``: writes held back (``Tx.send``), sent with the COMMIT."""
        begin = _BEGIN_READ if read_only else _BEGIN_CLAIM if claiming else _BEGIN_WRITE
        conn = self._start(begin, counted)
        trips = 1 if counted else 0
        try:
            try:
                yield conn
            except BaseException as exc:
                self._count(round_trips=trips)
                try:
                    conn.execute("ROLLBACK", prepare=False)
                except psycopg.Error as rollback_exc:
                    logger.warning(
                        "rollback failed: %s",
                        rollback_exc,
                        extra=fields("rollback_failed"),
                    )
                if isinstance(exc, psycopg.Error):
                    raise wrap_error(conn, "PostgreSQL error", exc) from exc
                raise
            self._count(round_trips=trips)
            if pending:
                self._commit_with(conn, pending)
                return
            try:
                conn.execute("COMMIT", prepare=False)
            except psycopg.Error as exc:
                raise wrap_error(conn, "commit failed", exc) from exc
        finally:
            self._connections.put(conn)

    def _commit_with(self, conn: Connection, pending: list[Statement]) -> None:
        """The writes held back and the COMMIT, in one pipeline. If one fails, the COMMIT
        after it does not run (the pipeline is aborted) and the transaction rolls back."""
        try:
            with conn.pipeline():
                for name, params in pending:
                    conn.execute(self._queries[name], params or {})
                conn.execute("COMMIT", prepare=False)
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK", prepare=False)
            names = _names(pending)
            raise wrap_error(conn, f"query batch ({names}) failed at commit", exc) from exc

    def _start(self, begin: LiteralString, counted: bool) -> Connection:
        """A pooled connection with a transaction begun; dead connections are replaced."""
        for attempt in range(len(RETRY_DELAYS) + 1):
            conn = self._connections.get()
            if counted:
                self._count(round_trips=1)  # each BEGIN sent, also one that fails
            try:
                # A read sees one snapshot for the whole block; REPEATABLE READ READ ONLY
                # cannot fail with a serialization error.
                conn.execute(begin, prepare=False)
            except psycopg.Error as exc:
                self._connections.put(conn)  # a broken connection is discarded by the pool
                if not conn.broken or attempt == len(RETRY_DELAYS):
                    raise wrap_error(
                        conn, f"cannot begin a transaction ({self.where})", exc
                    ) from exc
                logger.warning(
                    "PostgreSQL connection lost, retrying: %s",
                    exc,
                    extra=fields("reconnect", attempt=attempt + 1),
                )
                # Other idle connections probably died with this one (a server restart).
                self._connections.check()
                time.sleep(RETRY_DELAYS[attempt])
                continue
            return conn
        raise AssertionError("unreachable")

    def _count(self, *, transactions: int = 0, statements: int = 0, round_trips: int = 0) -> None:
        with self._stats_lock:
            self.stats.transactions += transactions
            self.stats.statements += statements
            self.stats.round_trips += round_trips

    # -- the Store interface -------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, claiming: bool = False) -> Iterator[Tx]:
        pending: list[Statement] = []
        with self._begin(counted=True, claiming=claiming, pending=pending) as conn:
            yield _PostgresTx(self, conn, pending)
        self._count(transactions=1)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        pending: list[Statement] = []  # a write sent here fails at its commit (READ ONLY)
        with self._begin(read_only=True, counted=True, pending=pending) as conn:
            yield _PostgresTx(self, conn, pending)
        self._count(transactions=1)

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
                self._listener = self._connections.connect()
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
        self._connections.close()


_BEGIN_WRITE: LiteralString = "BEGIN"
# A claim walks the ready rows in its index's order and stops after its batch. With stale
# or no statistics (a queue filled since the last ANALYZE) the planner believes only a row
# or two are ready and prefers a bitmap scan that sorts every ready row: 54 ms a claim at
# 2,000 queued, against 0.1 ms. Without bitmap scans the ordered index walk is its cheapest
# plan whatever the statistics. Sent with the BEGIN, in the same round trip.
_BEGIN_CLAIM: LiteralString = "BEGIN; SET LOCAL enable_bitmapscan = off"
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
