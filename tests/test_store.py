"""The storage contract, on every backend: transactions, fetch verbs, counters and errors."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from durably import sql
from durably.backends import open_store
from durably.exceptions import StoreConnectionError, StoreError
from durably.listing import ListFilter
from durably.store import Store, timestamp


class Boom(Exception):
    pass


def new_id() -> str:
    return str(uuid.uuid4())


def insert_context(store: Store, value: str = '{"a": 1}') -> str:
    context_id = new_id()
    with store.transaction() as tx:
        tx.execute("insert_context", {"id": context_id, "value": value, "now": timestamp()})
    return context_id


def read_context(store: Store, context_id: str) -> str | None:
    with store.read() as tx:
        row = tx.fetch_one("get_context", {"id": context_id})
    return None if row is None else row["value"]


def unmigrated(url: str, **options: Any) -> Store:
    """A store on ``url`` that has not migrated yet (open_store would)."""
    if url.startswith("sqlite:"):
        from durably.sqlite_store import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), **options)
    from durably.postgres_store import PostgresStore

    return PostgresStore(url, **options)


# -- transactions and fetch verbs --------------------------------------------------------------


def test_transaction_commits(any_store: Store) -> None:
    context_id = insert_context(any_store, '{"k": "v"}')
    assert read_context(any_store, context_id) == '{"k": "v"}'


def insert_then_raise(store: Store, context_id: str, error: Exception) -> None:
    with store.transaction() as tx:
        tx.execute("insert_context", {"id": context_id, "value": "{}", "now": timestamp()})
        raise error


def test_transaction_rolls_back_on_error(any_store: Store) -> None:
    context_id = new_id()
    with pytest.raises(Boom):
        insert_then_raise(any_store, context_id, Boom())
    assert read_context(any_store, context_id) is None
    # The connection is usable afterwards.
    assert read_context(any_store, insert_context(any_store)) == '{"a": 1}'


def test_database_error_is_store_error_and_rolls_back(any_store: Store) -> None:
    taken = insert_context(any_store)
    fresh = new_id()

    def insert_twice() -> None:
        with any_store.transaction() as tx:
            tx.execute("insert_context", {"id": fresh, "value": "{}", "now": timestamp()})
            tx.execute("insert_context", {"id": taken, "value": "{}", "now": timestamp()})

    with pytest.raises(StoreError):
        insert_twice()
    assert read_context(any_store, fresh) is None


def test_fetch_verbs(any_store: Store) -> None:
    now = timestamp()
    ids = [new_id() for _ in range(3)]
    with any_store.transaction() as tx:
        tx.execute_many(
            "insert_context",
            [{"id": i, "value": json.dumps({"n": n}), "now": now} for n, i in enumerate(ids)],
        )
    with any_store.read() as tx:
        row = tx.fetch_one("get_context", {"id": ids[2]})
        assert row is not None
        assert row["value"] == '{"n": 2}'
        assert row["base_id"] is None  # a full row, resting on none
        assert tx.fetch_one("get_context", {"id": new_id()}) is None
        assert tx.fetch_all("get_tasks", {"id": new_id()}) == []
        listed = tx.fetch_all("list_executions", ListFilter().params(5))
        assert listed == []


def test_execute_returns_changed_rows(any_store: Store) -> None:
    execution_id, task_ids = seed_execution(any_store, tasks=2)
    now = timestamp()
    with any_store.transaction() as tx:
        first = json.dumps([task_ids[0]])
        assert tx.execute("mark_ready", {"ids": first, "now": now}) == 1
        assert tx.execute("mark_ready", {"ids": first, "now": now}) == 0
        assert tx.execute("mark_ready", {"ids": json.dumps([new_id()]), "now": now}) == 0
    with any_store.read() as tx:
        rows = tx.fetch_all("get_tasks", {"id": execution_id})
    assert [r["status"] for r in rows] == ["ready", "not_started"]
    # Ids come back as str on every backend, JSON as its text.
    assert [r["id"] for r in rows] == task_ids
    assert json.loads(rows[0]["task_configuration"]) == {"timeout": None}


def test_round_trip_of_times(any_store: Store) -> None:
    from durably.store import parse_timestamp

    execution_id, _ = seed_execution(any_store)
    with any_store.read() as tx:
        row = tx.fetch_one("get_execution", {"id": execution_id})
    assert row is not None
    created = parse_timestamp(row["created_at"])
    assert created is not None
    assert created.utcoffset() is not None
    assert abs(created.timestamp() - time.time()) < 60


def seed_execution(store: Store, tasks: int = 1) -> tuple[str, list[str]]:
    """An execution with ``tasks`` not-started tasks, inserted through the named queries."""
    now = timestamp()
    context_id, execution_id = new_id(), new_id()
    task_ids = [new_id() for _ in range(tasks)]
    with store.transaction() as tx:
        tx.execute("insert_context", {"id": context_id, "value": "{}", "now": now})
        tx.execute(
            "insert_execution",
            {
                "id": execution_id,
                "name": "wf",
                "version": "v1",
                "status": "running",
                "context_id": context_id,
                "claimed_by": None,
                "parent_id": None,
                "parent_task": None,
                "key": None,
                "shape": "v1",
                "priority": 0,
                "concurrency_key": None,
                "configuration_id": None,
                "now": now,
            },
        )
        tx.execute_many(
            "insert_task",
            [
                {
                    "id": task_id,
                    "execution_id": execution_id,
                    "name": f"t{position}",
                    "position": position,
                    "status": "not_started",
                    "attempt": 0,
                    "max_attempts": 1,
                    "trigger_rules": '{"rule": "all_success"}',
                    "configuration": '{"timeout": null}',
                    "claimed_by": None,
                    "heartbeat_at": None,
                    "started_at": None,
                    "completed_at": None,
                    "concurrency_key": None,
                    "rate_key": None,
                    "priority": 0,
                    "flow_limited": 0,
                    "pipeline_key": "wf@v1",
                    "now": now,
                }
                for position, task_id in enumerate(task_ids)
            ],
        )
    return execution_id, task_ids


# -- counters ----------------------------------------------------------------------------------


def test_stats_count_transactions_and_statements(any_store: Store, backend: str) -> None:
    # PostgreSQL sends a transaction's BEGIN with its first statement; SQLite counts each
    # call into the library, the BEGIN too.
    begin = 0 if backend == "postgres" else 1
    stats = any_store.stats
    stats.reset()
    now = timestamp()
    with any_store.transaction() as tx:
        tx.execute("insert_context", {"id": new_id(), "value": "{}", "now": now})
        tx.execute_many(
            "insert_context", [{"id": new_id(), "value": "{}", "now": now} for _ in range(3)]
        )
        tx.fetch_all("get_tasks", {"id": new_id()})
    # (BEGIN,) three statements (execute_many is one, sent in one go), COMMIT.
    assert (stats.transactions, stats.statements, stats.round_trips) == (1, 3, 4 + begin)
    with any_store.read() as tx:
        tx.fetch_one("get_context", {"id": new_id()})
    assert (stats.transactions, stats.statements, stats.round_trips) == (2, 4, 6 + 2 * begin)
    with pytest.raises(Boom):
        insert_then_raise(any_store, new_id(), Boom())
    # A rolled-back transaction did not commit; its statement still ran, and its ROLLBACK.
    assert (stats.transactions, stats.statements, stats.round_trips) == (2, 5, 8 + 3 * begin)
    with any_store.transaction():
        pass  # nothing sent: on PostgreSQL, no word to the server
    assert (stats.transactions, stats.round_trips) == (3, 8 + 5 * begin)
    stats.reset()
    assert (stats.transactions, stats.statements, stats.round_trips) == (0, 0, 0)


def test_a_batch_runs_in_order_and_in_one_round_trip_on_postgres(
    any_store: Store, backend: str
) -> None:
    """fetch_batch: each statement sees the ones before it; every one's rows come back
    ([] for one that returns none). PostgreSQL sends them together (one round trip),
    SQLite runs them one by one."""
    context_id, now = new_id(), timestamp()
    any_store.stats.reset()
    with any_store.transaction() as tx:
        results = tx.fetch_batch(
            [
                ("insert_context", {"id": context_id, "value": '{"b": 1}', "now": now}),
                ("get_context", {"id": context_id}),
                ("get_tasks", {"id": new_id()}),
            ]
        )
        assert tx.fetch_batch([]) == []
        assert [[r["value"] for r in rows] for rows in results[1:]] == [['{"b": 1}'], []]
        assert results[0] == []
    stats = any_store.stats
    # PostgreSQL: the batch (with the BEGIN), COMMIT. SQLite: BEGIN, each, COMMIT.
    trips = 2 if backend == "postgres" else 5
    assert (stats.statements, stats.round_trips) == (3, trips)


def test_a_failing_statement_fails_its_batch(any_store: Store) -> None:
    context_id, now = new_id(), timestamp()
    insert = ("insert_context", {"id": context_id, "value": "{}", "now": now})
    with pytest.raises(StoreError, match=r"(?i)unique"), any_store.transaction() as tx:
        tx.fetch_batch([insert, ("get_context", {"id": context_id}), insert, insert])
    assert read_context(any_store, context_id) is None  # rolled back
    assert read_context(any_store, insert_context(any_store)) == '{"a": 1}'  # the store works


# -- every named query runs --------------------------------------------------------------------

PARAM = re.compile(r"(?<!:):([A-Za-z_]\w*)")
# A sample value for each parameter name the queries use; extend it for new names.
SAMPLES: dict[str, Callable[[], Any]] = {
    "limit": lambda: 10,
    "missed": lambda: 0,
    "recovered": lambda: 1,
    "attempt": lambda: 1,
    "max_attempts": lambda: 3,
    "position": lambda: 0,
    "status": lambda: "running",
    "value": lambda: "{}",
    "state": lambda: "{}",
    "trigger_rules": lambda: '{"rule": "all_success"}',
    "configuration": lambda: "{}",
    "error": lambda: "boom",
    "names": lambda: '["wf@v1"]',
    "terminal": lambda: '["completed", "failed"]',
    "reply_status": lambda: 200,
    "lease_until": timestamp,
    "ids": lambda: json.dumps([new_id()]),
    "executions": lambda: json.dumps([new_id()]),
    "with_context": lambda: json.dumps([new_id()]),
    "consumed_by": new_id,
    "index": lambda: 0,
    "seq": lambda: 1,
    "reopened": lambda: 1,
    "total": lambda: 3,
    "failed": lambda: 0,
    "logs": lambda: "[]",
    "low": lambda: "00000000-0000-0000-0000-000000000000",
    "high": lambda: "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "since": timestamp,
    "until": timestamp,
    "versions": lambda: '{"wf@v1": "v1"}',
    "limited": lambda: '["wf@v2"]',
    "roots": lambda: '{"wf@v1": ["a"]}',
    "flow_limited": lambda: 0,
    "served": lambda: '["wf@v1"]',
    "priority": lambda: 0,
    "task_limits": lambda: '{"wf/t": 2}',
    "flow_limits": lambda: '{"wf": 2}',
    "rate_limits": lambda: '{"r": [5.0, 1.0]}',
    "locks": lambda: '["t:wf/t", "r:r"]',
    "clock": lambda: 1.0e9,
    "window": lambda: 20,
    "count": lambda: 1,
    "rate": lambda: 5.0,
    "capacity": lambda: 1.0,
    "lease": lambda: 30.0,
    "tasks": lambda: json.dumps(
        [
            {
                "id": new_id(),
                "name": "t",
                "position": 0,
                "status": "ready",
                "attempt": 0,
                "max_attempts": 1,
                "flow_limited": 0,
            }
        ]
    ),
    "notify": lambda: True,
    "waits": lambda: '[["t", ["a", "b"]]]',
    "items": lambda: json.dumps(
        [
            {
                "task_id": new_id(),
                "execution_id": new_id(),
                "name": "t",
                "worker": "w",
                "attempt": 1,
                "logs": None,
                "now": timestamp(),
                "link_id": new_id(),
                "context_id": new_id(),
                "saved_id": None,
                "base_id": None,
                "value": "{}",
                "full": "{}",
            }
        ]
    ),
}


def sample(name: str) -> Any:
    if name in SAMPLES:
        return SAMPLES[name]()
    if name == "id" or name.endswith("_id"):
        return new_id()
    if name in ("now", "cutoff") or name.endswith("_at"):
        return timestamp()
    return "x"


def test_every_named_query_runs(any_store: Store, backend: str) -> None:
    """Each query of queries.sql and saga.sql (or its dialect override) parses, binds its
    parameters and executes; only a foreign key may refuse the random ids it is given."""
    queries = sql.queries(backend)
    assert queries, "no queries loaded"
    for name, query in queries.items():
        params = {p: sample(p) for p in PARAM.findall(query)}
        try:
            with any_store.transaction() as tx:
                if query.lstrip().upper().startswith("SELECT"):
                    tx.fetch_all(name, params)
                else:
                    tx.execute(name, params)
        except StoreError as exc:
            if "foreign key" not in str(exc).lower():
                raise AssertionError(f"query {name!r} fails on {backend}: {exc}") from exc


# -- opening -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/db",
        "sqlite:///tmp/x.db?synchronous=sometimes",
        "postgresql://postgres@127.0.0.1:5432/postgres?bogus_option=1",
        "postgresql://postgres@127.0.0.1:5432/postgres?synchronous=full",
        "postgresql://postgres@127.0.0.1:5432/postgres?max_size=0",
        "postgresql://postgres@127.0.0.1:5432/postgres?min_size=many",
    ],
)
def test_bad_url_is_store_error(url: str) -> None:
    if url.startswith("postgresql"):
        pytest.importorskip("psycopg")
    with pytest.raises(StoreError):
        open_store(url)


def test_unreachable_server_fails_fast() -> None:
    pytest.importorskip("psycopg")
    started = time.monotonic()
    with pytest.raises(StoreConnectionError, match=r"127\.0\.0\.1") as info:
        open_store("postgresql://postgres@127.0.0.1:1/postgres")
    assert time.monotonic() - started < 5
    assert "\n" not in str(info.value)


@pytest.mark.postgres
def test_missing_database_is_connection_error(pg_server: Any) -> None:
    from .conftest import pg_url_for

    with pytest.raises(StoreConnectionError, match="durably_no_such_db"):
        open_store(pg_url_for("durably_no_such_db"))


def test_close_then_use_is_store_error(store_url: str) -> None:
    store = open_store(store_url)
    store.close()
    with pytest.raises(StoreError), store.transaction() as tx:
        tx.fetch_one("get_context", {"id": new_id()})


# -- migrate -----------------------------------------------------------------------------------


def test_migrate_is_idempotent(empty_store_url: str) -> None:
    latest = sql.migrations("sqlite" if empty_store_url.startswith("sqlite") else "postgres")
    with open_store(empty_store_url) as store:
        assert store.schema_version() == latest[-1][0]
        assert store.migrate() == 0


def test_concurrent_migrate_runs_once(empty_store_url: str) -> None:
    migrate_concurrently([unmigrated(empty_store_url) for _ in range(4)])


@pytest.mark.postgres
def test_concurrent_migrate_of_a_new_tenant_runs_once(make_pg_database: Any) -> None:
    url = make_pg_database(migrated=False)
    migrate_concurrently([unmigrated(url, schema="tenant_race") for _ in range(4)])


def migrate_concurrently(stores: list[Store]) -> None:
    barrier = threading.Barrier(len(stores))
    applied: list[int] = []
    errors: list[BaseException] = []

    def migrate(store: Store) -> None:
        barrier.wait()
        try:
            applied.append(store.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        steps = sql.migrations(stores[0].dialect)
        assert sorted(applied) == [0] * (len(stores) - 1) + [len(steps)]
        assert {s.schema_version() for s in stores} == {steps[-1][0]}
    finally:
        for s in stores:
            s.close()


# -- PostgreSQL specifics ----------------------------------------------------------------------

postgres = pytest.mark.postgres


@postgres
def test_schema_isolates_tenants(postgres_url: str) -> None:
    with (
        open_store(postgres_url, schema="tenant_a") as a,
        open_store(postgres_url, schema="tenant_b") as b,
        open_store(postgres_url) as public,
    ):
        in_a = insert_context(a, '{"tenant": "a"}')
        in_b = insert_context(b, '{"tenant": "b"}')
        assert read_context(a, in_a) == '{"tenant": "a"}'
        assert read_context(b, in_a) is None
        assert read_context(public, in_a) is None
        assert read_context(b, in_b) == '{"tenant": "b"}'
        assert read_context(a, in_b) is None
        assert a.schema_version() == b.schema_version() == public.schema_version() >= 1


@postgres
def test_schema_from_url_query(postgres_url: str) -> None:
    with open_store(f"{postgres_url}?schema=from_url&application_name=durably_t") as store:
        context_id = insert_context(store)
    with open_store(postgres_url, schema="from_url") as store:
        assert read_context(store, context_id) == '{"a": 1}'


@pytest.mark.parametrize(
    "name", ["a;b", "1tenant", "pg_tenant", "PG_x", "", "x" * 64, 'a"b', "tenant a", "é"]
)
def test_invalid_schema_name_rejected(name: str) -> None:
    pytest.importorskip("psycopg")
    from durably.postgres_store import PostgresStore

    # Rejected before any connection: the port is closed, yet the error is the name.
    with pytest.raises(StoreError, match="invalid schema name"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/postgres", schema=name)


@postgres
def test_read_is_read_only(postgres_url: str) -> None:
    def write_in_read(store: Store) -> None:
        with store.read() as tx:
            tx.execute("insert_context", {"id": new_id(), "value": "{}", "now": timestamp()})

    with open_store(postgres_url) as store, pytest.raises(StoreError, match="read-only"):
        write_in_read(store)


@postgres
def test_a_write_held_back_in_a_read_is_refused_too(postgres_url: str) -> None:
    """A write held back (send) travels with the COMMIT: alone, it must still be refused by
    the read-only transaction, not run on its own (autocommit)."""
    context_id = new_id()
    with open_store(postgres_url) as store:
        with pytest.raises(StoreError, match="read-only"), store.read() as tx:
            tx.send("insert_context", {"id": context_id, "value": "{}", "now": timestamp()})
        with store.read() as tx:
            assert tx.fetch_one("get_context", {"id": context_id}) is None


def terminate(pg_server: Any, application_name: str) -> int:
    """Kill the server processes of every connection with that application_name."""
    rows = pg_server.conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        [application_name],
    ).fetchall()
    return len(rows)


@postgres
def test_dead_pooled_connections_are_replaced(postgres_url: str, pg_server: Any) -> None:
    with open_store(postgres_url, application_name="durably_kill1", min_size=3) as store:
        context_id = insert_context(store)
        assert terminate(pg_server, "durably_kill1") >= 1
        # Nothing ran on the dead connections: the store retries on fresh ones.
        assert read_context(store, context_id) == '{"a": 1}'
        assert read_context(store, insert_context(store)) == '{"a": 1}'


@postgres
def test_connection_lost_mid_transaction(postgres_url: str, pg_server: Any) -> None:
    with open_store(postgres_url, application_name="durably_kill2") as store:
        context_id = new_id()

        def killed_midway() -> None:
            with store.transaction() as tx:
                tx.execute("insert_context", {"id": context_id, "value": "{}", "now": now})
                terminate(pg_server, "durably_kill2")
                tx.execute("insert_context", {"id": new_id(), "value": "{}", "now": now})

        now = timestamp()
        with pytest.raises(StoreConnectionError):
            killed_midway()
        assert read_context(store, context_id) is None


@postgres
def test_wait_for_work_wakes_on_notify(postgres_url: str) -> None:
    with open_store(postgres_url) as waiter, open_store(postgres_url) as notifier:
        waiter.wait_for_work(5)  # the first call starts listening and returns at once
        started = time.monotonic()
        waiter.wait_for_work(0.3)
        assert 0.25 < time.monotonic() - started < 2

        def notify() -> None:
            time.sleep(0.2)
            with notifier.transaction() as tx:
                tx.execute("notify_work")

        thread = threading.Thread(target=notify)
        thread.start()
        started = time.monotonic()
        waiter.wait_for_work(10)
        thread.join()
        assert time.monotonic() - started < 3
        # Signals sent while nobody waited wake the next wait, all of them at once.
        for _ in range(3):
            with notifier.transaction() as tx:
                tx.execute("notify_work")
        time.sleep(0.1)
        started = time.monotonic()
        waiter.wait_for_work(10)
        assert time.monotonic() - started < 1
        started = time.monotonic()
        waiter.wait_for_work(0.3)
        assert time.monotonic() - started > 0.25


@postgres
def test_wait_for_work_survives_a_lost_listener(postgres_url: str, pg_server: Any) -> None:
    with open_store(postgres_url, application_name="durably_kill3") as store:
        store.wait_for_work(1)
        terminate(pg_server, "durably_kill3")
        started = time.monotonic()
        store.wait_for_work(0.3)  # falls back to sleeping
        assert time.monotonic() - started < 2
        store.wait_for_work(0.1)  # listens again
        assert read_context(store, insert_context(store)) == '{"a": 1}'


def test_sqlite_wait_for_work_sleeps(tmp_path: Any) -> None:
    with open_store(f"sqlite:///{tmp_path}/w.db") as store:
        started = time.monotonic()
        store.wait_for_work(0.1)
        assert time.monotonic() - started >= 0.09


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT * FROM t WHERE id = :id", "SELECT * FROM t WHERE id = %(id)s"),
        ("SELECT :a, :a, :b_2", "SELECT %(a)s, %(a)s, %(b_2)s"),
        ("SELECT x::text, CAST(:v AS TEXT)", "SELECT x::text, CAST(%(v)s AS TEXT)"),
        ("SELECT 'a:b', 'it''s :x', \"c:d\"", "SELECT 'a:b', 'it''s :x', \"c:d\""),
        ("SELECT 5 % 2 WHERE s LIKE 'a%'", "SELECT 5 %% 2 WHERE s LIKE 'a%%'"),
        ("SELECT '12:30'::time", "SELECT '12:30'::time"),
        ("SELECT 1 -- don't :x 100%\n, :y", "SELECT 1 -- don't :x 100%%\n, %(y)s"),
    ],
)
def test_parameters_rewritten_for_psycopg(query: str, expected: str) -> None:
    pytest.importorskip("psycopg")
    from durably.postgres_store import to_psycopg

    assert to_psycopg(query) == expected


def test_new_ids_are_random_version_4_uuids() -> None:
    import uuid as uuid_module

    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:200]:
        parsed = uuid_module.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid_module.RFC_4122
