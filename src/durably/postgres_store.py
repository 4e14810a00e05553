"""The PostgreSQL store: psycopg 3 and a connection pool, for many workers on many machines."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, LiteralString, Self

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg import sql as pgsql
from psycopg.adapt import AdaptersMap
from psycopg.rows import DictRow, dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from . import sql
from .exceptions import MigrationError, StoreConflictError, StoreConnectionError, StoreError
from .logs import fields
from .store import Params, Row, Store, Tx, iter_statements

logger = logging.getLogger(__name__)

Connection = psycopg.Connection[DictRow]

WORK_CHANNEL = "durably_work"
# A schema name we accept: a plain identifier; pg_* names are reserved by PostgreSQL.
SCHEMA_NAME = re.compile(r"(?![Pp][Gg]_)[A-Za-z_][A-Za-z0-9_]{0,62}")
# Options that are SQLite's: a clear error beats silently ignoring them.
SQLITE_ONLY = frozenset({"synchronous"})
# A transaction whose BEGIN fails on a dead connection ran nothing: it is safe to retry on
# another connection. These are the pauses between tries.
RETRY_DELAYS = (0.05, 0.2, 0.5)

# ids come back as str (the engine compares them with str ids) and JSON as its text (the engine
# json.loads it); timestamptz stays a datetime, which store.parse_timestamp accepts.
ADAPTERS = AdaptersMap(psycopg.adapters)
for _type in ("uuid", "json", "jsonb"):
    ADAPTERS.register_loader(_type, TextLoader)

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
    __slots__ = ("_conn", "_cursor", "_queries", "_store")

    def __init__(self, store: PostgresStore, conn: Connection) -> None:
        self._store = store
        self._queries = store._queries
        self._conn = conn
        self._cursor = conn.cursor()

    def _run(self, name: str, params: Params | None) -> psycopg.Cursor[DictRow]:
        self._store._count(statements=1)
        try:
            return self._cursor.execute(self._queries[name], params or {})
        except psycopg.Error as exc:
            raise _wrap(self._conn, f"query {name!r} failed", exc) from exc

    def execute(self, name: str, params: Params | None = None) -> int:
        return self._run(name, params).rowcount

    def execute_many(self, name: str, params: Iterable[Params]) -> None:
        self._store._count(statements=1)
        try:
            self._cursor.executemany(self._queries[name], params)
        except psycopg.Error as exc:
            raise _wrap(self._conn, f"query {name!r} failed", exc) from exc

    def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        cursor = self._run(name, params)
        try:
            return cursor.fetchone()
        except psycopg.Error as exc:
            raise _wrap(self._conn, f"query {name!r} failed", exc) from exc

    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        cursor = self._run(name, params)
        try:
            return list(cursor.fetchall())
        except psycopg.Error as exc:
            raise _wrap(self._conn, f"query {name!r} failed", exc) from exc


def _wrap(conn: Connection | None, what: str, exc: psycopg.Error) -> StoreError:
    """A driver error as ours: a lost connection is a StoreConnectionError."""
    lost = isinstance(exc, psycopg.OperationalError) and (conn is None or conn.broken)
    kind = StoreConnectionError if lost else StoreError
    if isinstance(exc, psycopg.errors.DeadlockDetected):
        kind = StoreConflictError
    return kind(f"{what}: {_oneline(exc)}")


def _oneline(exc: BaseException) -> str:
    # libpq messages span lines ("...failed: Connection refused\n\tIs the server running").
    return " ".join(str(exc).split())


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
            raise StoreError(f"invalid PostgreSQL URL or option: {_oneline(exc)}") from exc
        self.where = _describe(self.conninfo)
        self._queries = {name: to_psycopg(q) for name, q in sql.queries(self.dialect).items()}
        self._stats_lock = threading.Lock()
        self._listen_lock = threading.Lock()
        self._listener: Connection | None = None
        self._closed = False
        # What tells a dead server from a busy pool when no connection comes within timeout:
        # how many pooled connections we hold, and the last connect attempt's error (None
        # once one succeeds).
        self._in_use = 0
        self.last_connect_error: str | None = None
        self._connection_class = _recording_connection_class(self)
        # One direct connection first: a dead server, a bad password or a missing database
        # fails here at once with libpq's own message, instead of after the pool's wait.
        self._connect().close()
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

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> Connection:
        """A connection outside the pool (the probe, the LISTEN connection)."""
        try:
            conn = self._connection_class.connect(
                self.conninfo, autocommit=True, row_factory=dict_row, context=ADAPTERS
            )
        except psycopg.Error as exc:
            raise StoreConnectionError(
                f"cannot connect to PostgreSQL ({self.where}): {_oneline(exc)}"
            ) from exc
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise _wrap(None, f"cannot configure the connection ({self.where})", exc) from exc
        return conn

    def _configure(self, conn: Connection) -> None:
        if self.schema is not None:
            conn.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(self.schema)))

    @contextmanager
    def _begin(self, *, read_only: bool = False) -> Iterator[Connection]:
        conn = self._start(read_only)
        try:
            try:
                yield conn
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK", prepare=False)
                except psycopg.Error as rollback_exc:
                    logger.warning(
                        "rollback failed: %s",
                        rollback_exc,
                        extra=fields("rollback_failed"),
                    )
                if isinstance(exc, psycopg.Error):
                    raise _wrap(conn, "PostgreSQL error", exc) from exc
                raise
            try:
                conn.execute("COMMIT", prepare=False)
            except psycopg.Error as exc:
                raise _wrap(conn, "commit failed", exc) from exc
        finally:
            self._putconn(conn)

    def _start(self, read_only: bool) -> Connection:
        """A pooled connection with a transaction begun; dead connections are replaced."""
        for attempt in range(len(RETRY_DELAYS) + 1):
            conn = self._getconn()
            try:
                # A read sees one snapshot for the whole block; REPEATABLE READ READ ONLY
                # cannot fail with a serialization error.
                conn.execute(_BEGIN_READ if read_only else _BEGIN_WRITE, prepare=False)
            except psycopg.Error as exc:
                self._putconn(conn)  # a broken connection is discarded by the pool
                if not conn.broken or attempt == len(RETRY_DELAYS):
                    raise _wrap(conn, f"cannot begin a transaction ({self.where})", exc) from exc
                logger.warning(
                    "PostgreSQL connection lost, retrying: %s",
                    exc,
                    extra=fields("reconnect", attempt=attempt + 1),
                )
                # Other idle connections probably died with this one (a server restart).
                self._pool.check()
                time.sleep(RETRY_DELAYS[attempt])
                continue
            return conn
        raise AssertionError("unreachable")

    def _getconn(self) -> Connection:
        try:
            conn = self._pool.getconn()
        except PoolClosed as exc:
            raise StoreError("the store is closed") from exc
        except PoolTimeout as exc:
            raise self._no_connection() from exc
        with self._stats_lock:
            self._in_use += 1
        return conn

    def _putconn(self, conn: Connection) -> None:
        with self._stats_lock:
            self._in_use -= 1
        self._pool.putconn(conn)

    def _no_connection(self) -> StoreConnectionError:
        """Why the pool gave no connection within the timeout: all of them are ours and busy,
        or the pool cannot open any (the server is down, or unreachable)."""
        error = self.last_connect_error
        with self._stats_lock:
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

    def _count(self, *, transactions: int = 0, statements: int = 0) -> None:
        with self._stats_lock:
            self.stats.transactions += transactions
            self.stats.statements += statements

    # -- the Store interface -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._begin() as conn:
            yield _PostgresTx(self, conn)
        self._count(transactions=1)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._begin(read_only=True) as conn:
            yield _PostgresTx(self, conn)
        self._count(transactions=1)

    def schema_version(self) -> int:
        with self._begin(read_only=True) as conn:
            try:
                return _version(conn)
            except psycopg.Error as exc:
                raise _wrap(conn, "cannot read the schema version", exc) from exc

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
                self._listener = self._connect()
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
        self._pool.close()


_BEGIN_WRITE: LiteralString = "BEGIN"
_BEGIN_READ: LiteralString = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


def _recording_connection_class(store: PostgresStore) -> type[Connection]:
    """A connection class that tells ``store`` how its last connect attempt went: the pool
    retries in its own threads and keeps the driver's error to itself (it only logs it)."""

    class RecordingConnection(Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                store.last_connect_error = _oneline(exc)
                raise
            store.last_connect_error = None
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
