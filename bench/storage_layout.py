"""What a 10-task chain costs in storage today, and what it would cost with each task's output
link and delta kept in its task row: the figure behind issue 14's "<= 5 KB per execution",
which SPEC §5's three rows a task (task, link in `task_execution_metadata`, `contexts` row)
keep out of reach.

Runs --executions chains (~1 KB initial context, each task sets one key) through the Engine
into a fresh database, then copies the same rows by SQL into a second layout beside it: the
task rows with three more columns (the delta's text, its base, the link's time) and the same
indexes, `contexts` holding only the initial contexts, no `task_execution_metadata` rows
(which would be a view over the task rows). Both are compacted (PostgreSQL `VACUUM FULL`,
SQLite `VACUUM`: no dead row versions, no free space) and measured as tables plus indexes.
Nothing of the second layout is built in durably: this measures what the change would buy.

    .venv/bin/python bench/storage_layout.py [--executions 1000] [--postgres URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common
from queues_run import chain_workflow

from durably import Engine

TABLES = ("contexts", "pipeline_executions", "task_executions", "task_execution_metadata")
SERVER = os.environ.get(
    "DURABLY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

# The task rows with their output in them: the link's time, the delta and the row it rests on.
OUTPUT_COLUMNS = ("output_at", "output_value", "output_base")
FILL_TASKS = """
INSERT INTO alt.task_executions
SELECT t.*, m.created_at, c.value, c.base_id
FROM task_executions t
LEFT JOIN task_execution_metadata m
    ON m.pipeline_execution_id = t.pipeline_execution_id AND m.task_name = t.task_name
LEFT JOIN contexts c ON c.id = m.context_id
"""
FILL_CONTEXTS = """
INSERT INTO alt.contexts
SELECT * FROM contexts c
WHERE NOT EXISTS (SELECT 1 FROM task_execution_metadata m WHERE m.context_id = c.id)
"""


def run_chains(url: str, executions: int) -> None:
    wf = chain_workflow(10)
    with Engine(url, workflows=[wf]) as engine:
        for i in range(executions):
            result = engine.run(wf, {"payload": "x" * 1000, "i": i})
            if result.status != "completed":
                raise SystemExit(f"execution {i} {result.status}: {result.error}")


# -- PostgreSQL --------------------------------------------------------------------------------


def postgres(server: str, executions: int) -> tuple[dict[str, int], dict[str, int]]:
    import psycopg

    with _common.temp_postgres_database(server) as url:
        run_chains(url, executions)
        with psycopg.connect(url, autocommit=True) as conn:
            run = lambda sql: conn.execute(sql.encode())  # noqa: E731
            run("CREATE SCHEMA alt")
            for table in TABLES[:3]:
                run(f"CREATE TABLE alt.{table} (LIKE public.{table} INCLUDING ALL)")
            run(
                "ALTER TABLE alt.task_executions ADD COLUMN output_at TIMESTAMPTZ, "
                "ADD COLUMN output_value TEXT, ADD COLUMN output_base UUID"
            )
            run(FILL_TASKS)
            run(FILL_CONTEXTS)
            run("INSERT INTO alt.pipeline_executions SELECT * FROM pipeline_executions")
            run("VACUUM FULL")

            def sizes(schema: str) -> dict[str, int]:
                rows = conn.execute(
                    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname = ANY(%s)",
                    [schema, list(TABLES)],
                ).fetchall()
                return dict(rows)

            return sizes("public"), sizes("alt")


# -- SQLite ------------------------------------------------------------------------------------


def sqlite(executions: int) -> tuple[dict[str, int], dict[str, int]]:
    with _common.temp_dir() as folder:
        path, alt = folder / "durably.db", folder / "alt.db"
        run_chains(f"sqlite:///{path}", executions)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            ddl = dict(
                conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND "
                    "(tbl_name IN (?, ?, ?))",
                    TABLES[:3],
                ).fetchall()
            )
            conn.execute("ATTACH ? AS alt", [str(alt)])
            for sql in ddl.values():
                # Table first, then its indexes: CREATE TABLE x / CREATE INDEX i ON x.
                if sql.startswith("CREATE TABLE"):
                    conn.execute(sql.replace("CREATE TABLE ", "CREATE TABLE alt.", 1))
            for name, sql in ddl.items():
                if sql.startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")):
                    conn.execute(sql.replace(f"INDEX {name}", f"INDEX alt.{name}", 1))
            for column in OUTPUT_COLUMNS:
                conn.execute(f"ALTER TABLE alt.task_executions ADD COLUMN {column} TEXT")
            conn.execute(FILL_TASKS)
            conn.execute(FILL_CONTEXTS)
            conn.execute("INSERT INTO alt.pipeline_executions SELECT * FROM pipeline_executions")
            conn.execute("DETACH alt")
        sizes: list[dict[str, int]] = []
        for each in (path, alt):
            with contextlib.closing(sqlite3.connect(each, isolation_level=None)) as conn:
                conn.execute("VACUUM")
                parts = conn.execute(
                    "SELECT coalesce(m.tbl_name, d.name), sum(d.pgsize) FROM dbstat d "
                    "LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY 1"
                ).fetchall()
                sizes.append({name: size for name, size in parts if name in TABLES})
        return sizes[0], sizes[1]


def report(name: str, measure: Callable[[], tuple[dict[str, int], dict[str, int]]], n: int) -> None:
    today, alt = measure()
    print(f"\n{name}, {n:,} executions, compacted, bytes per execution (tables + indexes):\n")
    print("| table | today (SPEC §5) | outputs in the task rows |\n|---|---|---|")
    for table in TABLES:
        print(f"| `{table}` | {today.get(table, 0) / n:,.0f} | {alt.get(table, 0) / n:,.0f} |")
    print(f"| **total** | **{sum(today.values()) / n:,.0f}** | **{sum(alt.values()) / n:,.0f}** |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--postgres", default=SERVER)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    report("SQLite", lambda: sqlite(args.executions), args.executions)
    if not args.no_postgres:
        report("PostgreSQL", lambda: postgres(args.postgres, args.executions), args.executions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
