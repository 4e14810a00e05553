"""The floor under `durably list`: what its dependencies alone cost in a fresh process.

Imports what the CLI is built on (click, rich, and psycopg for PostgreSQL), reads the newest
50 workflow executions with one query on one connection, and prints them as a rich table: no
durably, no pool, no migration check, no sagas. bench_list.py times it beside `durably list`,
so that the difference is durably's own share, whatever the machine's speed.

    python bench/list_floor.py URL    (sqlite:////path.db or postgresql://...)
"""

from __future__ import annotations

import sys

import click  # noqa: F401  (imported for its cost: the CLI is a click application)
from rich.console import Console
from rich.table import Table

QUERY = (
    "SELECT id, pipeline_name, status, created_at, completed_at FROM pipeline_executions "
    "ORDER BY created_at DESC, id DESC LIMIT 50"
)


def rows(url: str) -> list[tuple[object, ...]]:
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return list(conn.execute(QUERY))
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(QUERY))


def main() -> None:
    table = Table(box=None)
    for name in ("id", "workflow", "status", "created", "completed"):
        table.add_column(name, no_wrap=True)
    for row in rows(sys.argv[1]):
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


if __name__ == "__main__":
    main()
