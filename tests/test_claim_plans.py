"""The claims' plans walk the ready rows in claim order through their index, reading about a
batch's worth of rows, on a database of 100,000 finished executions with 2,000 queued (and,
ahead of them in claim order, 20,000 awaiting a retry later and a few whose retry is due),
with no planner statistics, with statistics from before the queue filled, and with fresh ones.

The database is filled with bulk inserts (this module's own SQL): the point is the plan.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durably import sql

from .conftest import unique
from .workers import running

pytestmark = pytest.mark.slow

FINISHED = 100_000
QUEUED = 2_000
RETRYING = 20_000  # ready, their retry a day after the claim
DUE = 3  # ready, their retry due at the claim
LIMIT = 10
KEY = "claim_plan@shape"
EXECUTION_COLUMNS = (
    "id, pipeline_name, pipeline_version, status, context_id, created_at, updated_at"
)
TASK_COLUMNS = (
    "id, pipeline_execution_id, task_name, position, status, pipeline_key, flow_limited,"
    " concurrency_key, retry_at, created_at, updated_at"
)
STATISTICS = ["none", "stale", "fresh"]


def _rows(
    start: int, count: int, status: str, at: datetime, retry_at: datetime | None = None
) -> Iterator[tuple[Any, ...]]:
    """(execution row, task row) pairs; of the ready ones every other is flow-limited."""
    retry = None if retry_at is None else retry_at.isoformat()
    for i in range(start, start + count):
        stamp = (at + timedelta(microseconds=i)).isoformat()
        execution = str(uuid.uuid4())
        running = "running" if status == "ready" else "completed"
        limited = int(status == "ready" and i % 2 == 1)
        yield (
            (execution, "claim_plan", "v1", running, CONTEXT_ID, stamp, stamp),
            (
                str(uuid.uuid4()), execution, "only", 0, status, KEY, limited,
                "lane" if limited else None, retry, stamp, stamp,
            ),
        )  # fmt: skip


CONTEXT_ID = str(uuid.uuid4())
CONTEXT = "INSERT INTO contexts (id, value, created_at, updated_at) VALUES ({})"


def _params(limited: bool) -> dict[str, Any]:
    now = datetime.now(UTC) + timedelta(days=1)
    params: dict[str, Any] = {
        "worker": "w",
        "now": now.isoformat(),
        "limit": LIMIT,
        "versions": json.dumps({KEY: "v1"}),
        "limited": json.dumps([KEY] if limited else []),
        "roots": json.dumps({KEY: ["only"]}),  # so the claim reads the initial context too
    }
    if limited:
        params |= {
            "task_limits": json.dumps({"lane": 1_000_000}),
            "flow_limits": "{}",
            "rate_limits": "{}",
            "clock": now.timestamp(),
            "window": LIMIT * 4 + 16,
        }
    return params


def _fill(
    put: Callable[[Iterator[tuple[Any, ...]]], None],
    analyze: Callable[[], object],
    statistics: str,
    now: datetime,
) -> None:
    """The finished executions, then the queued ones, with the planner's statistics taken
    before the queue filled (stale), after it (fresh), or never (none). The rows awaiting a
    retry are older than the queued ones: a walk that skipped them would read them first."""
    put(_rows(0, FINISHED, "completed", now - timedelta(days=2)))
    if statistics == "stale":
        analyze()
    queued_at = now - timedelta(days=1)
    put(_rows(FINISHED, RETRYING, "ready", queued_at - timedelta(hours=2), now + timedelta(days=2)))
    put(_rows(FINISHED + RETRYING, DUE, "ready", queued_at - timedelta(hours=1), now))
    put(_rows(FINISHED + RETRYING + DUE, QUEUED, "ready", queued_at))
    if statistics == "fresh":
        analyze()


# --- SQLite ------------------------------------------------------------------------------------


def _sqlite_fill(path: str, statistics: str) -> None:
    from durably.sqlite_store import SQLiteStore

    store = SQLiteStore(path)
    store.migrate()
    store.close()
    conn = sqlite3.connect(path)
    now = datetime.now(UTC)
    conn.execute(CONTEXT.format("?, '{}', ?, ?"), (CONTEXT_ID, now.isoformat(), now.isoformat()))

    def put(rows: Iterator[tuple[Any, ...]]) -> None:
        pairs = list(rows)
        marks = ", ".join("?" * 7)
        conn.executemany(
            f"INSERT INTO pipeline_executions ({EXECUTION_COLUMNS}) VALUES ({marks})",
            [e for e, _ in pairs],
        )
        marks = ", ".join("?" * 11)
        conn.executemany(
            f"INSERT INTO task_executions ({TASK_COLUMNS}) VALUES ({marks})", [t for _, t in pairs]
        )

    _fill(put, lambda: conn.execute("ANALYZE"), statistics, now)
    conn.commit()
    conn.close()


# The rows awaiting a retry, each with whether it is due at the claim's time.
RETRY_ROWS = (
    "SELECT id, retry_at <= ? AS due FROM task_executions"
    " WHERE status = 'ready' AND retry_at IS NOT NULL"
)


def _subtree(plan: list[tuple[int, int, int, str]], root: int) -> list[str]:
    """The details of a node of EXPLAIN QUERY PLAN and everything under it."""
    ids, found = {root}, []
    for node, parent, _, detail in plan:
        if parent in ids:
            ids.add(node)
            found.append(detail)
    return found


@pytest.mark.parametrize("statistics", STATISTICS)
@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("claim_tasks", "task_executions_claim"),
        ("claim_limited_tasks", "task_executions_limited_claim"),
    ],
)
def test_sqlite_claims_walk_their_index_whatever_the_statistics(
    tmp_path: Any, statistics: str, name: str, index: str
) -> None:
    path = str(tmp_path / "claims.db")
    _sqlite_fill(path, statistics)
    conn = sqlite3.connect(path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN " + sql.queries("sqlite")[name], _params(name != "claim_tasks")
    ).fetchall()
    walk = [node for node, _, _, detail in plan if detail == f"SCAN t USING INDEX {index}"]
    assert len(walk) == 1, plan
    # The walk sits in a co-routine of its own that nothing sorts: ordered by the index, it
    # stops at the batch (a sort would have read every ready row first).
    parent = next(parent for node, parent, _, _ in plan if node == walk[0])
    inside = _subtree(plan, parent)
    assert not any("TEMP B-TREE" in detail for detail in inside), plan
    assert "SEARCH p USING INDEX sqlite_autoindex_pipeline_executions_1 (id=?)" in inside, plan
    params = _params(name != "claim_tasks")
    due = {row[0] for row in conn.execute(RETRY_ROWS, (params["now"],)) if row[1]}
    claimed = conn.execute(sql.queries("sqlite")[name], params).fetchall()
    assert len(claimed) == LIMIT
    # The rows whose retry is due are the oldest: claimed first. The later ones stay.
    assert len(due) == DUE
    assert due <= {row[0] for row in claimed}
    later = conn.execute(RETRY_ROWS, (params["now"],)).fetchall()
    assert len(later) == RETRYING
    assert not any(row[1] for row in later)
    conn.rollback()
    conn.close()


# --- PostgreSQL --------------------------------------------------------------------------------


def _postgres_fill(url: str, statistics: str, *, alter: bool = True) -> None:
    """``alter=False``: the caller turned autovacuum off (an ALTER TABLE here would make
    every connection plan its prepared statements again)."""
    import psycopg

    now = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("pipeline_executions", "task_executions") if alter else ():
            # The statistics are the test's to set: autovacuum must not analyze meanwhile.
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.execute(CONTEXT.format("%s, '{}', %s, %s"), (CONTEXT_ID, now, now))

        def put(rows: Iterator[tuple[Any, ...]]) -> None:
            pairs = list(rows)
            with conn.cursor() as cur:
                with cur.copy(f"COPY pipeline_executions ({EXECUTION_COLUMNS}) FROM STDIN") as c:
                    for execution, _ in pairs:
                        c.write_row(execution)
                with cur.copy(f"COPY task_executions ({TASK_COLUMNS}) FROM STDIN") as c:
                    for _, task in pairs:
                        c.write_row(task)

        _fill(put, lambda: conn.execute("ANALYZE"), statistics, now)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.parametrize("statistics", STATISTICS)
@pytest.mark.parametrize(
    ("name", "cte", "index"),
    [
        ("claim_tasks", "ready", "task_executions_claim"),
        ("claim_limited_tasks", "ready_open", "task_executions_limited_claim"),
    ],
)
def test_postgres_claims_walk_their_index_whatever_the_statistics(
    make_pg_database: Callable[..., str], statistics: str, name: str, cte: str, index: str
) -> None:
    import psycopg

    from durably.postgres_store import to_psycopg

    url = make_pg_database()
    _postgres_fill(url, statistics)
    query = to_psycopg(sql.queries("postgres")[name])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")  # as the worker's claim transaction begins (keyed=True)
        conn.execute("SET LOCAL enable_bitmapscan = off")
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + query, _params(name != "claim_tasks")
        ).fetchone()
        conn.execute("ROLLBACK")
    assert row is not None
    plan = row[0][0]["Plan"]
    ready = next(n for n in _nodes(plan) if n.get("Subplan Name") == f"CTE {cte}")
    inside = list(_nodes(ready))
    scans = [n for n in inside if n.get("Index Name") == index]
    assert [n["Node Type"] for n in scans] == ["Index Scan"], json.dumps(ready, indent=1)
    assert not [n for n in inside if n["Node Type"] in ("Sort", "Bitmap Heap Scan")], ready
    # About a batch's rows read, not the 2,000 ready (the limited claim looks at a window).
    window = _params(True)["window"] if name != "claim_tasks" else LIMIT
    assert scans[0]["Actual Rows"] <= window, ready
    # Nothing reads either table whole (the 100,000 finished executions, their tasks).
    whole = [n for n in _nodes(plan) if n["Node Type"] == "Seq Scan"
             and n["Relation Name"] in ("pipeline_executions", "task_executions")]  # fmt: skip
    assert not whole, plan
    assert plan["Actual Rows"] == LIMIT
    # No node reads the rows awaiting a retry later (20,000), nor the queue: the rows a
    # node returns or filters out, per loop, stay about a batch's.
    read = [(n["Node Type"], n["Actual Rows"] + n.get("Rows Removed by Filter", 0))
            for n in _nodes(plan)]  # fmt: skip
    assert max(rows for _, rows in read) <= window + DUE, read


@pytest.mark.parametrize("statistics", STATISTICS)
def test_postgres_lone_completions_find_their_rows_by_key(
    make_pg_database: Callable[..., str], statistics: str
) -> None:
    """complete_lone_tasks (a worker's batch of single-task completions, each ending its
    execution) looks its task and execution rows up by key on the same database, instead of
    scanning either table to join them to its items."""
    import psycopg

    from durably.postgres_store import to_psycopg

    url = make_pg_database()
    _postgres_fill(url, statistics)
    query = to_psycopg(sql.queries("postgres")["complete_lone_tasks"])
    now = datetime.now(UTC).isoformat()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        claimed = conn.execute(
            "UPDATE task_executions SET status = 'running', claimed_by = 'w', attempt = 1"
            " WHERE id IN (SELECT id FROM task_executions WHERE status = 'ready' LIMIT 5)"
            " RETURNING id, pipeline_execution_id, task_name"
        ).fetchall()
        items = [
            {
                "task_id": str(task), "execution_id": str(execution), "name": name,
                "worker": "w", "attempt": 1, "logs": None, "now": now,
                "link_id": str(uuid.uuid4()), "context_id": str(uuid.uuid4()),
                "saved_id": None, "base_id": CONTEXT_ID, "value": "{}", "full": "{}",
            }
            for task, execution, name in claimed
        ]  # fmt: skip
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + query, {"items": json.dumps(items)}
        ).fetchone()
        conn.execute("ROLLBACK")
    assert row is not None
    plan = row[0][0]["Plan"]
    assert plan["Actual Rows"] == 5
    nodes = list(_nodes(plan))
    whole = [n for n in nodes if n["Node Type"] == "Seq Scan"
             and n["Relation Name"] in ("pipeline_executions", "task_executions")]  # fmt: skip
    assert not whole, json.dumps(plan, indent=1)
    updates = [n for n in nodes if n["Node Type"] == "ModifyTable" and n["Operation"] == "Update"]
    assert sorted(n["Relation Name"] for n in updates) == ["pipeline_executions", "task_executions"]


# --- PostgreSQL: the worker's prepared plans ---------------------------------------------------


def _cached_plans(store: Any) -> dict[str, list[dict[str, Any]]]:
    """The generic plan each idle pooled connection of ``store`` keeps for each statement it
    prepared (psycopg prepares a statement on its 5th run; PostgreSQL keeps a generic plan
    from its 6th), by the statement's first words. EXPLAIN EXECUTE with every parameter NULL
    shows the plan the next run would use, without running it."""
    pool = store.connections._pool
    held = [store.connections.get() for _ in range(pool.get_stats()["pool_available"])]
    plans: dict[str, list[dict[str, Any]]] = {}
    try:
        for conn in held:
            prepared = conn.execute(
                "SELECT name, statement, coalesce(cardinality(parameter_types), 0) AS n"
                " FROM pg_prepared_statements WHERE generic_plans > 0"
            ).fetchall()
            for row in prepared:
                nulls = ", ".join(["NULL"] * row["n"])
                call = f"EXPLAIN (FORMAT JSON) EXECUTE {row['name']}"
                call += f"({nulls})" if nulls else ""
                found = conn.execute(call).fetchone()["QUERY PLAN"]  # type: ignore[index]
                [plan] = json.loads(found) if isinstance(found, str) else found
                plans.setdefault(" ".join(row["statement"].split()[:4]), []).append(plan["Plan"])
    finally:
        for conn in held:
            store.connections.put(conn)
    return plans


def test_postgres_worker_plans_stay_keyed_as_the_tables_grow(
    make_pg_database: Callable[..., str],
) -> None:
    """A worker's first turns on a new database prepare its statements while the tables hold
    a few rows, and PostgreSQL keeps their generic plans for the connection's life (until an
    ANALYZE, none here). Those plans must still find rows by key once the tables are large:
    no plan the worker kept (for single-task executions and for a chain) reads the execution,
    task or context table whole, nor finds an execution through an index of the list's."""
    import psycopg

    from durably import Engine, Workflow

    url = make_pg_database()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("pipeline_executions", "task_executions", "contexts"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    lone, chain = Workflow(unique("plans_lone")), Workflow(unique("plans_chain"))
    lone.task(name="only")(lambda ctx: ctx.update(done=True))
    chain.task(name="first")(lambda ctx: ctx.update(first=True))
    chain.task(name="second", dependencies=["first"])(lambda ctx: ctx.update(second=True))
    with Engine(url, workflows=[lone, chain]) as engine:
        with running(engine.worker(concurrency=2, poll_interval=0.01)):
            for i in range(80):  # on the empty tables, one execution at a time
                execution_id = engine.start(chain if i % 2 else lone, {"i": i})
                assert engine.wait(execution_id, timeout=60).status == "completed"
        _postgres_fill(url, "none", alter=False)  # 100,000 finished, 22,003 queued
        plans = _cached_plans(engine.runtime.store)
    assert {"WITH item AS (", "WITH ready AS ("} <= set(plans), sorted(plans)
    for statement, kept in plans.items():
        for plan in kept:
            shown = (statement, json.dumps(plan, indent=1))
            for node in _nodes(plan):
                table, index = node.get("Relation Name"), node.get("Index Name") or ""
                whole = node["Node Type"] == "Seq Scan"
                assert not whole or table not in ("pipeline_executions", "task_executions",
                                                  "contexts"), shown  # fmt: skip
                assert not index.startswith("pipeline_executions") or index.endswith("_pkey"), shown
