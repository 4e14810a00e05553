"""PostgreSQL connections for :mod:`durably.postgres_store`: the options a store is opened
with, the pool of configured connections and the direct ones beside it (the probe at open,
the LISTEN connection), and the driver's errors as durably's. Nothing here knows a query or a
transaction: the store begins, runs and ends those on the connections it gets from here.

What tells a dead server from a busy pool, when no connection comes within the timeout, is
kept here too: how many pooled connections are handed out, and how the last connect attempt
went (the pool retries in its own threads and only logs the driver's error).
"""

from __future__ import annotations

import re
import threading
from typing import Any, Self

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg import sql as pgsql
from psycopg.adapt import AdaptersMap
from psycopg.rows import DictRow, dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from .exceptions import StoreConflictError, StoreConnectionError, StoreError

Connection = psycopg.Connection[DictRow]

# A schema name we accept: a plain identifier; pg_* names are reserved by PostgreSQL.
SCHEMA_NAME = re.compile(r"(?![Pp][Gg]_)[A-Za-z_][A-Za-z0-9_]{0,62}")
# Options that are SQLite's: a clear error beats silently ignoring them.
SQLITE_ONLY = frozenset({"synchronous"})

# ids come back as str (the engine compares them with str ids) and JSON as its text (the engine
# json.loads it); timestamptz stays a datetime, which store.parse_timestamp accepts.
ADAPTERS = AdaptersMap(psycopg.adapters)
for _type in ("uuid", "json", "jsonb"):
    ADAPTERS.register_loader(_type, TextLoader)


class Connections:
    """A pool of connections, each configured for the store's schema, and direct ones.

    ``schema`` isolates a tenant: every connection's ``search_path`` names only it. Other
    options are libpq connection parameters (``sslmode``, ``application_name``, ...).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None,
        min_size: Any,
        max_size: Any,
        timeout: Any,
        **options: Any,
    ) -> None:
        if schema is not None and not (isinstance(schema, str) and SCHEMA_NAME.fullmatch(schema)):
            raise StoreError(
                f"invalid schema name {schema!r}: use letters, digits and underscores, "
                "not starting with a digit or pg_, at most 63 characters"
            )
        self.schema = schema
        self.min_size, self.max_size = _sizes(min_size, max_size)
        self.timeout = _positive("timeout", timeout)
        rejected = sorted(SQLITE_ONLY & options.keys())
        if rejected:
            raise StoreError(f"option {rejected[0]!r} applies to SQLite only, not PostgreSQL")
        options.setdefault("application_name", "durably")
        options.setdefault("connect_timeout", max(2, round(self.timeout)))
        try:
            self.conninfo = psycopg.conninfo.make_conninfo(url, **options)
        except psycopg.Error as exc:
            raise StoreError(f"invalid PostgreSQL URL or option: {one_line(exc)}") from exc
        self.where = _describe(self.conninfo)
        self._lock = threading.Lock()
        self._in_use = 0  # pooled connections handed out
        self.last_connect_error: str | None = None  # None once an attempt succeeds
        self._connection_class = _recording_connection_class(self)
        # One direct connection first: a dead server, a bad password or a missing database
        # fails here at once with libpq's own message, instead of after the pool's wait.
        self.connect().close()
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            self.conninfo,
            connection_class=self._connection_class,
            kwargs={"autocommit": True, "row_factory": dict_row, "context": ADAPTERS},
            min_size=self.min_size,
            max_size=self.max_size,
            configure=self._configure,
            timeout=self.timeout,
            name=f"durably:{self.where}",
            open=True,
        )
        try:
            self._pool.wait(timeout=self.timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreConnectionError(
                f"cannot connect to PostgreSQL ({self.where}) within {self.timeout:g} s"
            ) from exc

    def connect(self) -> Connection:
        """A configured connection outside the pool (autocommit; the caller closes it)."""
        try:
            conn = self._connection_class.connect(
                self.conninfo, autocommit=True, row_factory=dict_row, context=ADAPTERS
            )
        except psycopg.Error as exc:
            raise StoreConnectionError(
                f"cannot connect to PostgreSQL ({self.where}): {one_line(exc)}"
            ) from exc
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise wrap_error(None, f"cannot configure the connection ({self.where})", exc) from exc
        return conn

    def _configure(self, conn: Connection) -> None:
        if self.schema is not None:
            conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))

    def get(self) -> Connection:
        """A pooled connection (autocommit, no transaction open); give it back with put()."""
        try:
            conn = self._pool.getconn()
        except PoolClosed as exc:
            raise StoreError("the store is closed") from exc
        except PoolTimeout as exc:
            raise self._no_connection() from exc
        with self._lock:
            self._in_use += 1
        return conn

    def put(self, conn: Connection) -> None:
        """Back to the pool, which discards it if it is broken."""
        with self._lock:
            self._in_use -= 1
        self._pool.putconn(conn)

    def check(self) -> None:
        """Replace the idle connections that died (after one was found dead)."""
        self._pool.check()

    def close(self) -> None:
        self._pool.close()

    def _no_connection(self) -> StoreConnectionError:
        """Why the pool gave no connection within the timeout: all of them are ours and busy,
        or the pool cannot open any (the server is down, or unreachable)."""
        error = self.last_connect_error
        with self._lock:
            in_use = self._in_use
        if in_use < self.max_size or error is not None:
            cause = f"last connect error: {error}" if error else "no connect attempt finished"
            return StoreConnectionError(
                f"PostgreSQL is unreachable ({self.where}): no connection could be opened "
                f"within {self.timeout:g} s ({cause})"
            )
        return StoreConnectionError(
            f"all {self.max_size} PostgreSQL connections ({self.where}) are busy: none came "
            f"free within {self.timeout:g} s; raise max_size, or hold transactions shorter"
        )


def wrap_error(conn: Connection | None, what: str, exc: psycopg.Error) -> StoreError:
    """A driver error as ours: a lost connection is a StoreConnectionError, a deadlock a
    StoreConflictError (its transaction may simply run again)."""
    lost = isinstance(exc, psycopg.OperationalError) and (conn is None or conn.broken)
    kind = StoreConnectionError if lost else StoreError
    if isinstance(exc, psycopg.errors.DeadlockDetected):
        kind = StoreConflictError
    return kind(f"{what}: {one_line(exc)}")


def one_line(exc: BaseException) -> str:
    # libpq messages span lines ("...failed: Connection refused\n\tIs the server running").
    return " ".join(str(exc).split())


def _recording_connection_class(connections: Connections) -> type[Connection]:
    """A connection class that tells ``connections`` how its last connect attempt went: the
    pool retries in its own threads and keeps the driver's error to itself (it only logs it)."""

    class RecordingConnection(Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                connections.last_connect_error = one_line(exc)
                raise
            connections.last_connect_error = None
            return conn

    return RecordingConnection


def _sizes(min_size: Any, max_size: Any) -> tuple[int, int]:
    try:
        low, high = int(min_size), int(max_size)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"min_size and max_size must be integers: {exc}") from exc
    if not 0 <= low <= high or high < 1:
        raise StoreError(f"need 0 <= min_size <= max_size and max_size >= 1, not {low}, {high}")
    return low, high


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{name} must be a number of seconds, not {value!r}") from exc
    if not number > 0:
        raise StoreError(f"{name} must be positive, not {value!r}")
    return number


def _describe(conninfo: str) -> str:
    """Where we connect, for messages: never the password."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    return " ".join(
        f"{key}={params[key]}" for key in ("host", "port", "dbname", "user") if params.get(key)
    )
