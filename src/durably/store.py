"""The storage interface: a few execute verbs over named queries, and one way to open a store.

The engine and the saga manager turn their domain operations into named queries (``sql/``);
a store only executes them inside transactions. SQLite (``sqlite_store``) and PostgreSQL
(``postgres_store``) implement it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs, urlsplit

from .exceptions import StoreError

DEFAULT_URL = "sqlite:///durably.db"
URL_ENV = "DURABLY_DATABASE_URL"

Params = Mapping[str, Any]


class Row(Protocol):
    """A result row: ``row["column"]`` (sqlite3.Row on SQLite, a dict on PostgreSQL)."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


@dataclass
class StoreStats:
    """Counters of the work a store did: the machine-independent cost figure."""

    transactions: int = 0
    statements: int = 0

    def reset(self) -> None:
        self.transactions = self.statements = 0


class Tx(abc.ABC):
    """An open transaction: run named queries in it."""

    @abc.abstractmethod
    def execute(self, name: str, params: Params | None = None) -> int:
        """Run a statement; return the number of rows it changed."""

    @abc.abstractmethod
    def execute_many(self, name: str, params: Iterable[Params]) -> None:
        """Run a statement once per parameter set."""

    @abc.abstractmethod
    def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        """Run a query; return its first row, or None."""

    @abc.abstractmethod
    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        """Run a query; return every row."""


class Store(abc.ABC):
    """A database holding executions, tasks, contexts and saga state."""

    dialect: ClassVar[str]

    def __init__(self) -> None:
        self.stats = StoreStats()

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction: committed when the block exits, rolled back on an error."""

    @abc.abstractmethod
    def read(self) -> AbstractContextManager[Tx]:
        """A read-only transaction with a consistent snapshot."""

    @abc.abstractmethod
    def migrate(self) -> int:
        """Bring the schema to the current version; return how many migrations ran."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The schema version the database is at (0 for an empty database)."""

    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds or until another process signals new work.

        The default only sleeps; PostgreSQL wakes early on LISTEN/NOTIFY."""
        import time

        time.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def timestamp(at: float | None = None) -> str:
    """A stored time: ISO-8601 UTC with fixed microseconds, so text comparison orders it."""
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return moment.isoformat(timespec="microseconds")


def parse_timestamp(value: Any) -> datetime | None:
    """A stored time back as an aware datetime (SQLite returns text, PostgreSQL datetimes)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def resolve_url(url: str | None) -> str:
    """The URL given, else ``$DURABLY_DATABASE_URL``, else ``./durably.db``."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def open_store(url: str | None = None, *, migrate: bool = True, **options: Any) -> Store:
    """Open (and, unless ``migrate=False``, migrate) the store a URL names:
    ``sqlite:///path.db``, ``sqlite://:memory:``, ``postgresql://user@host/db``. Query
    parameters and ``options`` tune it (``synchronous=full`` on SQLite, ``schema=tenant`` on
    PostgreSQL)."""
    url = resolve_url(url)
    if not isinstance(url, str):
        raise StoreError(f"database URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    merged = {**query, **{k: v for k, v in options.items() if v is not None}}
    store: Store
    if parts.scheme == "sqlite":
        from .sqlite_store import SQLiteStore

        if "schema" in merged:
            raise StoreError("schema= selects a PostgreSQL schema; SQLite has none")

        path = _sqlite_path(url, parts.netloc, parts.path)
        try:
            store = SQLiteStore(path, **merged)
        except TypeError as exc:
            raise StoreError(f"unknown SQLite option in {url!r}: {exc}") from exc
    elif parts.scheme in ("postgresql", "postgres"):
        from .postgres_store import PostgresStore

        store = PostgresStore(url.split("?", 1)[0], **merged)
    else:
        raise StoreError(
            f"unsupported database URL {url!r}: use sqlite:///path.db, sqlite://:memory: "
            "or postgresql://user@host/dbname"
        )
    if not migrate:
        return store
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


SQLITE_FORMS = "sqlite:///relative.db, sqlite:////absolute/path.db or sqlite://:memory:"


def _sqlite_path(url: str, netloc: str, path: str) -> str:
    """The file a SQLite URL names, as SQLAlchemy spells them. Anything else is an error, not
    a guess: ``sqlite:/x`` or ``sqlite://host/x`` would otherwise create a stray file."""
    if not url.partition(":")[2].startswith("//") or netloc not in ("", ":memory:"):
        raise StoreError(f"invalid SQLite URL {url!r}: use {SQLITE_FORMS}")
    if netloc == ":memory:":
        if path:
            raise StoreError(f"invalid SQLite URL {url!r}: use {SQLITE_FORMS}")
        return ":memory:"
    if not path.removeprefix("/"):
        raise StoreError(f"database URL {url!r} names no file: use {SQLITE_FORMS}")
    return path.removeprefix("/")


def iter_statements(script: str) -> Iterator[str]:
    """Split a SQL script into statements (no procedural bodies in our schema files)."""
    for statement in script.split(";"):
        lines = [ln for ln in statement.splitlines() if not ln.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            yield text
