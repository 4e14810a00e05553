"""Fixtures shared by the suite: one test body, both storage backends.

Ask for ``store_url`` (or ``any_store``) and the test runs once on SQLite and once on PostgreSQL,
each time against a fresh, migrated database::

    def test_resume(store_url):
        with Engine(store_url) as engine:
            ...

    def test_raw_queries(any_store):          # an opened Store, closed after the test
        with any_store.transaction() as tx:
            ...

Fixtures
    ``backend``          "sqlite" or "postgres"; every test that needs it, directly or through
                         the fixtures below, is parametrized over the selected backends. The
                         PostgreSQL case carries the ``postgres`` marker (``-m "not postgres"``).
    ``store_url``        a fresh database with the current schema: ``sqlite:///<tmp>/t.db``, or
                         a PostgreSQL database created from a migrated template (cheap: a file
                         copy on the server) and dropped after the test.
    ``empty_store_url``  the same, but empty: no tables yet (migration tests).
    ``any_store``        ``open_store(store_url)``, closed after the test.
    ``engine``           ``Engine(store_url)``, closed after the test.
    ``postgres_url``     a fresh migrated PostgreSQL database for PostgreSQL-only tests
                         (workers, LISTEN/NOTIFY); not parametrized.
    ``pg_server``        (session) the server: ``.conn`` an autocommit admin connection,
                         ``.url_for(dbname)`` a URL on it; skips/fails when unreachable.
    ``make_pg_database`` a factory: ``make_pg_database(migrated=True) -> url``, for tests that
                         need several databases; each is dropped after the test.

Choosing backends: ``pytest --backend=sqlite|postgres|all`` or ``DURABLY_TEST_BACKEND``
(default ``all``); ``sqlite`` also deselects the tests marked ``postgres``.

The server is ``DURABLY_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``;
it must be allowed to create databases). When it is unreachable the PostgreSQL cases skip with
the reason, except under ``CI=true`` (or ``CI=1``), where they fail: CI must not go green
without PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from durably import Engine
from durably.backends import open_store
from durably.store import Store

BACKENDS = ("sqlite", "postgres")
PG_URL = os.environ.get("DURABLY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default=os.environ.get("DURABLY_TEST_BACKEND", "all"),
        help="storage backends to test: sqlite, postgres or all (env DURABLY_TEST_BACKEND)",
    )


def selected_backends(config: pytest.Config) -> tuple[str, ...]:
    choice = str(config.getoption("--backend")).strip().lower()
    if choice == "all":
        return BACKENDS
    if choice not in BACKENDS:
        raise pytest.UsageError(
            f"--backend / DURABLY_TEST_BACKEND must be sqlite, postgres or all, not {choice!r}"
        )
    return (choice,)


def pytest_configure(config: pytest.Config) -> None:
    selected_backends(config)  # a typo is a usage error at once, not a silent empty run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test chose its backends itself
    metafunc.parametrize(
        "backend",
        [
            pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [])
            for name in selected_backends(metafunc.config)
        ],
        indirect=True,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "postgres" in selected_backends(config):
        return
    # --backend=sqlite: PostgreSQL-only tests are not wanted either.
    kept = [item for item in items if item.get_closest_marker("postgres") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The storage backend of this test case: "sqlite" or "postgres"."""
    name: str = request.param
    return name


# -- PostgreSQL server -------------------------------------------------------------------------


def pg_unavailable(reason: str) -> None:
    """Skip the test here; fail it under CI, where PostgreSQL is required."""
    message = f"PostgreSQL tests need a server: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI={os.environ['CI']} requires it)", pytrace=False)
    pytest.skip(f"{message}; set DURABLY_TEST_PG_URL or start PostgreSQL")


def pg_url_for(database: str) -> str:
    """``DURABLY_TEST_PG_URL`` pointing at another database."""
    return urlsplit(PG_URL)._replace(path=f"/{database}").geturl()


class PgServer:
    """An admin connection (``conn``, autocommit) that creates and drops the test databases."""

    url = PG_URL
    url_for = staticmethod(pg_url_for)

    def __init__(self) -> None:
        import psycopg

        self.conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
        self.names = (f"durably_test_{os.getpid()}_{n}" for n in itertools.count())
        self.template = f"durably_template_{os.getpid()}"

    def create(self, template: str = "template0") -> str:
        from psycopg import sql

        name = next(self.names)
        self.drop(name)
        self.conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        return name

    def drop(self, name: str) -> None:
        from psycopg import sql

        # FORCE: a test that leaked a connection must not leak its database too.
        self.conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server, with a migrated template database (built once per session)."""
    try:
        import psycopg
    except ImportError:
        pg_unavailable("psycopg is not installed (pip install 'durably[postgres]')")
        raise  # unreachable: pg_unavailable raises
    try:
        server = PgServer()
    except psycopg.Error as exc:
        where = re.sub(r":[^:@/]*@", ":***@", PG_URL)  # never print a password
        pg_unavailable(f"cannot connect to {where}: {' '.join(str(exc).split())}")
        raise  # unreachable
    try:
        server.drop(server.template)
        server.conn.execute(
            psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                psycopg.sql.Identifier(server.template)
            )
        )
        open_store(pg_url_for(server.template)).close()
        yield server
    finally:
        server.drop(server.template)
        server.conn.close()


@pytest.fixture
def make_pg_database(pg_server: PgServer) -> Iterator[Callable[..., str]]:
    """``make_pg_database(migrated=True) -> url``: a fresh database, dropped after the test."""
    created: list[str] = []

    def make(migrated: bool = True) -> str:
        name = pg_server.create(pg_server.template if migrated else "template0")
        created.append(name)
        return pg_url_for(name)

    yield make
    for name in created:
        pg_server.drop(name)


@pytest.fixture
def postgres_url(make_pg_database: Callable[..., str]) -> str:
    """A fresh PostgreSQL database with the current schema (PostgreSQL-only tests)."""
    return make_pg_database()


# -- both backends -----------------------------------------------------------------------------


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database with the current schema, on this test case's backend."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/t.db"
        open_store(url).close()
        return url
    pg_url: str = request.getfixturevalue("postgres_url")
    return pg_url


@pytest.fixture
def empty_store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database without any table yet, on this test case's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/empty.db"
    make: Callable[..., str] = request.getfixturevalue("make_pg_database")
    return make(migrated=False)


@pytest.fixture
def any_store(store_url: str) -> Iterator[Store]:
    """An opened store on this test case's backend, closed after the test."""
    store = open_store(store_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """An Engine on this test case's backend, closed after the test."""
    with Engine(store_url) as opened:
        yield opened


def unique(prefix: str = "wf") -> str:
    """A workflow name no other test uses (workflow names are a process-wide registry)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
