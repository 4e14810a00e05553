"""A database of 100,000 executions, and the plans of the queries that list them: what the
list tests at scale share (``test_listing_scale.py``, ``test_dashboard_scale.py``).

The database is filled directly with bulk inserts (this module's own SQL): the point is the
read side, and 100,000 runs of the engine would take minutes.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from durably import sql
from durably.listing import ListFilter

N = 100_000
SAGAS = 5_000
STATUSES = ["completed"] * 7 + ["failed", "running", "cancelled"]
# A filter of each list query: one status, one of four workflows, one idempotency key.
WHERE = ListFilter(status="failed", workflow="wf1", key="order-3")


def _rows(now: datetime, context_id: str) -> Iterator[tuple[Any, ...]]:
    for i in range(N):
        at = (now - timedelta(seconds=N - i)).isoformat(timespec="microseconds")
        key = f"order-{i}" if i % 3 == 0 else None
        yield (str(uuid.uuid4()), f"wf{i % 4}", "v1", STATUSES[i % 10], context_id, at, at, key)


def _sagas(now: datetime, context_id: str) -> Iterator[tuple[Any, ...]]:
    for i in range(SAGAS):
        at = (now - timedelta(seconds=SAGAS - i, milliseconds=500)).isoformat()
        status = "finished" if i % 5 else "errored"
        yield (str(uuid.uuid4()), "order_saga", "f1", status, context_id, '{"steps": []}', at, at)


EXECUTION = (
    "INSERT INTO pipeline_executions (id, pipeline_name, pipeline_version, status, context_id,"
    " created_at, updated_at, idempotency_key) VALUES ({})"
)
SAGA = (
    "INSERT INTO saga_executions (id, saga_name, fingerprint, status, context_id, state,"
    " created_at, updated_at) VALUES ({})"
)
CONTEXT = "INSERT INTO contexts (id, value, created_at, updated_at) VALUES ({})"


def fill(url: str, backend: str) -> None:
    """N workflow executions, one a second up to now (a third of them with a key, four
    workflows, STATUSES in turn), and SAGAS saga executions, into a migrated database."""
    now = datetime.now(UTC)
    context_id = str(uuid.uuid4())
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(
            CONTEXT.format("?, '{}', ?, ?"), (context_id, now.isoformat(), now.isoformat())
        )
        conn.executemany(EXECUTION.format(", ".join("?" * 8)), _rows(now, context_id))
        conn.executemany(SAGA.format(", ".join("?" * 8)), _sagas(now, context_id))
        conn.commit()
        conn.execute("ANALYZE")
        conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CONTEXT.format("%s, '{}', %s, %s"), (context_id, now, now))
        with conn.cursor() as cur:
            with cur.copy(
                "COPY pipeline_executions (id, pipeline_name, pipeline_version, status,"
                " context_id, created_at, updated_at, idempotency_key) FROM STDIN"
            ) as copy:
                for row in _rows(now, context_id):
                    copy.write_row(row)
            with cur.copy(
                "COPY saga_executions (id, saga_name, fingerprint, status, context_id, state,"
                " created_at, updated_at) FROM STDIN"
            ) as copy:
                for row in _sagas(now, context_id):
                    copy.write_row(row)
        conn.execute("VACUUM ANALYZE pipeline_executions")
        conn.execute("VACUUM ANALYZE saga_executions")


LIST_QUERIES = [
    "list_executions", "list_executions_by_status", "list_executions_by_workflow",
    "list_executions_by_key", "count_executions", "count_executions_of_workflow",
    "count_executions_by_key", "saga_list_executions", "saga_list_executions_by_status",
    "saga_list_executions_by_name", "saga_count_executions", "saga_count_executions_of_name",
]  # fmt: skip


def plans(url: str, backend: str, names: list[str] = LIST_QUERIES) -> dict[str, str]:
    """Each named query's plan (EXPLAIN) with WHERE's parameters, one line per step."""
    queries = sql.queries(backend)
    params = WHERE.params(51)
    found = {}
    for name in names:
        text = queries[name]
        if backend == "sqlite":
            conn = sqlite3.connect(url.removeprefix("sqlite:///"))
            rows = conn.execute("EXPLAIN QUERY PLAN " + text, params).fetchall()
            conn.close()
            found[name] = " | ".join(str(row[3]) for row in rows)
        else:
            import psycopg

            from durably.postgres_store import to_psycopg

            with psycopg.connect(url) as conn:
                rows = conn.execute("EXPLAIN " + to_psycopg(text), params).fetchall()
            found[name] = " | ".join(str(row[0]) for row in rows)
    return found


def assert_walks_an_index(name: str, plan: str, backend: str) -> None:
    """The plan reads an index, and neither scans the table nor sorts what it read (but a
    list by key, whose few rows are sorted after the key's index found them)."""
    assert "index" in plan.lower(), f"{name} on {backend}: {plan}"
    if backend == "sqlite":
        # A table scan, or a sort of what an index did not order, would read every row
        # (counting scans a covering index: the smallest read that counts them all).
        assert not re.search(r"SCAN \w+_executions(?! USING COVERING)", plan), plan
        if name.startswith(("list_", "saga_list_")) and "by_key" not in name:
            assert "TEMP B-TREE" not in plan, f"{name}: {plan}"
    else:
        assert "Seq Scan on pipeline_executions" not in plan, f"{name}: {plan}"
        assert "Seq Scan on saga_executions" not in plan, f"{name}: {plan}"
