"""The SQLite store: embedded, no server, one file (or memory for tests)."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from . import sql
from .exceptions import MigrationError, StoreConnectionError, StoreError
from .store import Params, Row, Store, Tx, iter_statements

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
)
# busy_timeout is a C int of milliseconds.
MAX_TIMEOUT = 2**31 // 1000
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL", "extra": "EXTRA", "off": "OFF"}


class _SQLiteTx(Tx):
    __slots__ = ("_conn", "_queries", "_stats")

    def __init__(self, store: SQLiteStore) -> None:
        self._conn = store._conn
        self._queries = store._queries
        self._stats = store.stats

    def _count(self) -> None:
        self._stats.statements += 1
        self._stats.round_trips += 1  # one call into SQLite (StoreStats)

    def execute(self, name: str, params: Params | None = None) -> int:
        self._count()
        return self._conn.execute(self._queries[name], params or {}).rowcount

    def execute_many(self, name: str, params: Iterable[Params]) -> None:
        self._count()
        self._conn.executemany(self._queries[name], params)

    def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        self._count()
        row: Row | None = self._conn.execute(self._queries[name], params or {}).fetchone()
        return row

    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        self._count()
        return self._conn.execute(self._queries[name], params or {}).fetchall()


class SQLiteStore(Store):
    """One connection per store, shared by its threads under a lock.

    The engine does its database work on one thread anyway, and a single connection is what
    ``:memory:`` needs; other processes on the same file are serialized by SQLite's own lock.
    """

    dialect = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "normal", timeout: Any = 30.0) -> None:
        super().__init__()
        sync = SYNCHRONOUS.get(str(synchronous).lower())
        if sync is None:
            raise StoreError(
                f"synchronous must be one of {sorted(SYNCHRONOUS)}, not {synchronous!r}"
            )
        self.path = path
        self.synchronous = sync
        self._queries = sql.queries(self.dialect)
        self._lock = threading.RLock()
        try:
            seconds = float(timeout)
        except (TypeError, ValueError):
            seconds = math.nan
        if not 0 <= seconds <= MAX_TIMEOUT:
            raise StoreError(
                f"timeout must be a number of seconds from 0 to {MAX_TIMEOUT}, not {timeout!r}"
            )
        try:
            # isolation_level=None: we issue BEGIN ourselves, so every transaction is explicit.
            self._conn = sqlite3.connect(
                path,
                timeout=seconds,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise StoreConnectionError(f"cannot open SQLite database {path!r}: {exc}") from exc
        try:
            self._configure(sync, seconds)
        except BaseException as exc:
            # The caller never gets this store to close: its file descriptor would leak (and
            # stay referenced from the traceback) until the garbage collector found it.
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreConnectionError(f"cannot open SQLite database {path!r}: {exc}") from exc
            raise

    def _configure(self, sync: str, seconds: float) -> None:
        self._conn.row_factory = sqlite3.Row
        if self.path != ":memory:":
            # WAL: readers never block the writer, and a commit appends to the log instead of
            # rewriting pages.
            self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL survives a killed process (a commit is in the log before it returns);
        # FULL also fsyncs each commit, so it survives a power loss.
        self._conn.execute(f"PRAGMA synchronous={sync}")
        # Another process holding the write lock is a short wait, not an error.
        self._conn.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
        self._conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _begin(self, mode: str) -> Iterator[Tx]:
        with self._lock:
            conn = self._conn
            stats = self.stats
            stats.round_trips += 1  # the BEGIN; the COMMIT or ROLLBACK below, one more
            try:
                conn.execute(mode)
            except sqlite3.Error as exc:
                raise StoreConnectionError(f"SQLite database {self.path!r}: {exc}") from exc
            try:
                yield _SQLiteTx(self)
            except BaseException:
                if conn.in_transaction:
                    stats.round_trips += 1
                    conn.execute("ROLLBACK")
                raise
            try:
                stats.round_trips += 1
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    stats.round_trips += 1
                    conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc
            stats.transactions += 1

    @contextmanager
    def transaction(self, *, keyed: bool = False) -> Iterator[Tx]:
        # ``keyed`` changes nothing here: the claims name their index (INDEXED BY).
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads first and
        # writes later can fail with SQLITE_BUSY without waiting, because its snapshot is stale.
        try:
            with self._begin("BEGIN IMMEDIATE") as tx:
                yield tx
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[Tx]:
        try:
            with self._begin("BEGIN") as tx:
                yield tx
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite error: {exc}") from exc

    def schema_version(self) -> int:
        with self._lock:
            return _version(self._conn)

    def migrate(self) -> int:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    applied = _migrate(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise MigrationError(f"cannot migrate {self.path!r}: {exc}") from exc
            return applied

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _migrate(conn: sqlite3.Connection) -> int:
    """Apply what is missing, inside the caller's transaction."""
    scripts, versions = sql.plan("sqlite", _version(conn))
    if not versions:
        return 0
    conn.execute(VERSION_TABLE)
    for script in scripts:
        _run_script(conn, script)
    now = datetime.now(UTC).isoformat()
    conn.executemany(
        "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
        [(version, now) for version in versions],
    )
    return len(versions)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in iter_statements(script):
        conn.execute(statement)


def apply_migrations_only(conn: sqlite3.Connection) -> None:
    """Build the schema from the migrations alone (the schema-equals-migrations test)."""
    conn.execute(VERSION_TABLE)
    for _version_number, script in sql.migrations("sqlite"):
        _run_script(conn, script)
