"""The storage interface: a few execute verbs over named queries.

The repositories turn domain operations into named queries (``sql/``); a store only executes
them inside transactions. SQLite (``sqlite_store``) and PostgreSQL (``postgres_store``)
implement it; :mod:`durably.backends` opens the one a URL names.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

Params = Mapping[str, Any]
# A named query and its parameters, as Tx.fetch_batch takes them.
Statement = tuple[str, Params | None]


class Row(Protocol):
    """A result row: ``row["column"]`` (sqlite3.Row on SQLite, a dict on PostgreSQL)."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


@dataclass
class StoreStats:
    """Counters of the work a store did through ``transaction()`` and ``read()``: the
    machine-independent cost figure.

    ``transactions`` counts those committed, ``statements`` the named queries run (an
    ``execute_many`` is one, a ``send`` too). ``round_trips`` counts the times the store sent
    something to the database and waited for its answer. On PostgreSQL what travels together
    counts once (pipeline mode): a transaction's BEGIN goes with its first statement, the
    writes held back by ``send`` with the next statement or the COMMIT, a ``fetch_batch``
    as one; a ROLLBACK counts one, and so does each try of a first statement that failed on
    a dead connection and was sent again. SQLite has no network: there a round trip is one
    call into the library (the BEGIN and the COMMIT too), so its batches count one per
    statement. Not counted: ``migrate``,
    ``schema_version``, the LISTEN connection, and psycopg's own statement preparation (one
    more exchange on a query's 5th run on a connection, outside a batch, and a DEALLOCATE
    when its cache of prepared statements overflows).
    """

    transactions: int = 0
    statements: int = 0
    round_trips: int = 0

    def reset(self) -> None:
        self.transactions = self.statements = self.round_trips = 0


class Tx(abc.ABC):
    """An open transaction: run named queries in it."""

    # Whether a write spanning several tables can be sent as one statement (PostgreSQL's
    # data-modifying WITH): the repository then sends the combined query (named in the
    # dialect's file only) instead of its parts. One statement costs the server and the
    # driver less than several, whatever the round trips.
    combined: ClassVar[bool] = False

    @abc.abstractmethod
    def execute(self, name: str, params: Params | None = None) -> int:
        """Run a statement; return the number of rows it changed."""

    def send(self, name: str, params: Params | None = None) -> None:
        """Run a write whose result nobody reads (an insert under an id made here, a status
        set where the caller needs no row count). The store may hold it back and send it with
        the next statement that returns something, or with the COMMIT: on PostgreSQL one
        round trip then carries them all. It runs before anything run after it, and an error
        it raises still fails this transaction (at the latest when it commits). This default
        runs it at once (SQLite: there is no network to save)."""
        self.execute(name, params)

    def send_many(self, name: str, params: Iterable[Params]) -> None:
        """:meth:`send` for a statement run once per parameter set (one statement, as
        :meth:`execute_many`)."""
        self.execute_many(name, params)

    @abc.abstractmethod
    def execute_many(self, name: str, params: Iterable[Params]) -> None:
        """Run a statement once per parameter set."""

    @abc.abstractmethod
    def fetch_one(self, name: str, params: Params | None = None) -> Row | None:
        """Run a query; return its first row, or None."""

    @abc.abstractmethod
    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        """Run a query; return every row."""

    def fetch_batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """Run a few statements in order, in one round trip where the database allows it;
        return each one's rows (``[]`` for a statement that returns none).

        For statements whose parameters do not depend on each other's results. Each one
        still runs after those before it finished, and sees what they did: under
        PostgreSQL's READ COMMITTED it takes its snapshot only then, so a lock the first one
        takes holds for what the next one counts. A failing statement fails the batch (the
        ones after it do not run). This default runs them one by one (SQLite, in process);
        PostgreSQL sends them together (pipeline mode).
        """
        return [self.fetch_all(name, params) for name, params in statements]


class Store(abc.ABC):
    """A database holding executions, tasks, contexts and saga state."""

    dialect: ClassVar[str]

    def __init__(self) -> None:
        self.stats = StoreStats()

    @abc.abstractmethod
    def transaction(self, *, keyed: bool = False) -> AbstractContextManager[Tx]:
        """A write transaction: committed when the block exits, rolled back on an error.
        ``keyed``: the worker's claims and records, each statement meant to find its rows by
        key or through the index made for it; the store plans them so."""

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


_last: tuple[float, str] = (0.0, "")


def timestamp(at: float | None = None) -> str:
    """A stored time: ISO-8601 UTC with fixed microseconds, so text comparison orders it."""
    global _last
    if at is None:
        return datetime.now(UTC).isoformat(timespec="microseconds")
    seen, text = _last
    if at != seen or not text:
        # One transaction stamps many rows with the same time: format it once.
        text = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
        _last = (at, text)
    return text


def parse_timestamp(value: Any) -> datetime | None:
    """A stored time back as an aware datetime (SQLite returns text, PostgreSQL datetimes)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def iter_statements(script: str) -> Iterator[str]:
    """Split a SQL script into statements (no procedural bodies in our schema files)."""
    for statement in script.split(";"):
        lines = [ln for ln in statement.splitlines() if not ln.strip().startswith("--")]
        text = "\n".join(lines).strip()
        if text:
            yield text
