"""Whether a worker's claim costs the same with 100 or 100,000 tasks queued (issue 14): the
latency of ``Worker.claim(1)`` (median, p95) against the queue's depth, on PostgreSQL with no
planner statistics and after ``ANALYZE``, and on SQLite (which durably never analyzes).

Each depth gets a fresh database: one execution of a one-task workflow is started through the
engine, then copied in SQL as many times as the depth asks (its rows as the engine wrote them,
each copy a little younger), so that filling 100,000 takes seconds. On PostgreSQL autovacuum
is turned off for the two tables, so "no statistics" stays true while it runs.

    .venv/bin/python bench/bench_claim_scale.py [--postgres URL] [--depths 100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator

import _common

from durably import Context, Engine, Workflow

DEFAULT_URL = os.environ.get("DURABLY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 10  # claims before measuring: psycopg prepares a statement on its 5th run
CLAIMS = 200
EXECUTION = "pipeline_executions"
TASK = "task_executions"


def task(ctx: Context) -> None:
    pass


def workflow() -> Workflow:
    wf = Workflow("bench_claim_scale")
    wf.task(name="work")(task)
    return wf


def _columns(conn: object, table: str, backend: str) -> list[str]:
    if backend == "sqlite":
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()  # type: ignore[attr-defined]
        return [row[1] for row in rows]
    rows = conn.execute(  # type: ignore[attr-defined]
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
        " AND table_schema = current_schema() ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return [row["column_name"] if isinstance(row, dict) else row[0] for row in rows]


def _copies(columns: list[str], fixed: dict[str, str]) -> tuple[str, str]:
    """The column list, and the select list that copies the source row but ``fixed``."""
    return ", ".join(columns), ", ".join(fixed.get(c, f"s.{c}") for c in columns)


def fill_postgres(url: str, execution_id: str, copies: int, analyze: bool) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in (EXECUTION, TASK):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        later = "s.created_at + g.n * interval '1 microsecond'"
        names, values = _copies(
            _columns(conn, EXECUTION, "postgres"),
            {"id": "g.e", "created_at": later, "updated_at": later},
        )
        task_names, task_values = _copies(
            _columns(conn, TASK, "postgres"),
            {"id": "g.t", "pipeline_execution_id": "g.e", "created_at": later},
        )
        conn.execute(
            f"CREATE TEMP TABLE g AS SELECT n, gen_random_uuid() AS e, gen_random_uuid() AS t"
            f" FROM generate_series(1, {copies}) n"
        )
        conn.execute(
            f"INSERT INTO {EXECUTION} ({names}) SELECT {values} FROM {EXECUTION} s, g"
            f" WHERE s.id = %s",
            [execution_id],
        )
        conn.execute(
            f"INSERT INTO {TASK} ({task_names}) SELECT {task_values} FROM {TASK} s, g"
            f" WHERE s.pipeline_execution_id = %s",
            [execution_id],
        )
        if analyze:
            conn.execute("ANALYZE")


def fill_sqlite(path: str, execution_id: str, copies: int) -> None:
    conn = sqlite3.connect(path)
    try:
        # Ids made from the copy's number: the execution's and its task's agree.
        ids = "printf('%08x-0000-4000-8000-%012x', g.n, {})"
        later = "strftime('%Y-%m-%dT%H:%M:%f', s.created_at, '+' || (g.n / 1000.0) || ' seconds')"
        names, values = _copies(
            _columns(conn, EXECUTION, "sqlite"), {"id": ids.format(0), "created_at": later}
        )
        task_names, task_values = _copies(
            _columns(conn, TASK, "sqlite"),
            {"id": ids.format(1), "pipeline_execution_id": ids.format(0), "created_at": later},
        )
        series = (
            f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {copies})"
        )
        conn.execute(
            f"INSERT INTO {EXECUTION} ({names}) {series} SELECT {values} FROM {EXECUTION} s, g"
            " WHERE s.id = ?",
            [execution_id],
        )
        conn.execute(
            f"INSERT INTO {TASK} ({task_names}) {series} SELECT {task_values} FROM {TASK} s, g"
            " WHERE s.pipeline_execution_id = ?",
            [execution_id],
        )
        conn.commit()
    finally:
        conn.close()


@contextlib.contextmanager
def queue(backend: str, server: str, depth: int, analyze: bool) -> Iterator[Engine]:
    """An engine on a fresh database with ``depth`` single-task executions queued."""
    wf = workflow()
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            folder = stack.enter_context(_common.temp_dir())
            url = f"sqlite:///{folder}/claims.db"
        else:
            url = stack.enter_context(_common.temp_postgres_database(server))
        engine = stack.enter_context(Engine(url, workflows=[wf], lease=3600))
        first = str(engine.start(wf, {"payload": "x" * 200}))
        if backend == "sqlite":
            fill_sqlite(url.removeprefix("sqlite:///"), first, depth - 1)
        else:
            fill_postgres(url, first, depth - 1, analyze)
        yield engine


def measure(engine: Engine) -> tuple[float, float]:
    worker = engine.worker()
    for _ in range(WARM_UP):
        worker.claim(1)
    times = []
    for _ in range(CLAIMS):
        began = time.perf_counter()
        if len(worker.claim(1)) != 1:
            raise SystemExit("a claim came back empty")
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=DEFAULT_URL, metavar="URL")
    parser.add_argument("--depths", default="100,1000,10000,100000")
    args = parser.parse_args()
    depths = [int(depth) for depth in args.depths.split(",")]
    if min(depths) < WARM_UP + CLAIMS:
        parser.error(f"every depth must cover the {WARM_UP + CLAIMS} claims taken")
    cases = [("postgres", False), ("postgres", True), ("sqlite", False)]
    print(f"Worker.claim(1) latency in ms (median / p95 of {CLAIMS}) by tasks queued")
    header = "".join(f"{depth:>16,}" for depth in depths)
    print(f"{'backend':<10} {'statistics':<11}{header}   max/min")
    for backend, analyze in cases:
        medians, cells = [], []
        for depth in depths:
            with queue(backend, args.postgres, depth, analyze) as engine:
                p50, p95 = measure(engine)
            medians.append(p50)
            cells.append(f"{p50:>8.2f} / {p95:<5.2f}")
        label = ("analyzed" if analyze else "none") if backend == "postgres" else "none"
        spread = max(medians) / min(medians)
        row = "".join(f"{cell:>16}" for cell in cells)
        print(f"{backend:<10} {label:<11}{row}   {spread:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
