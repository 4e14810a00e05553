"""What `durably list` costs on a database of 100,000 executions, end to end and in-process.

Builds the database in a temp dir (SQLite) and in a database of its own on a PostgreSQL
server (created here and dropped after): a handful of executions through the public API
(workflows that complete, fail, or wait queued; two sagas), then copies of their rows made by
SQL, each copy one second older than the last, until there are --executions workflow
executions and --sagas saga executions. Then prints, as Markdown:

- `import durably`, and `durably list --db ...` on each backend: the median wall time of
  --runs fresh processes (and of a bare interpreter), with durably compiled from source at
  each start (no bytecode cache, as under PYTHONDONTWRITEBYTECODE) and from cached bytecode
  (as an installed package runs);
- the floor under it (`list_floor.py`): the CLI's dependencies imported, one query on one
  connection and a rich table, without durably, so that the difference is durably's share;
- `Engine.list(limit=50)` (by time, status and workflow) and the lookup by idempotency key,
  the median of warm calls in one process, on each backend.

    .venv/bin/python bench/bench_list.py [--runs 5] [--executions 100000] [--sagas 1000]
        [--postgres URL | --no-postgres] [--importtime] [--keep DIR]

--importtime prints the 25 slowest imports (cumulative) of `python -X importtime -m durably
list` on the SQLite database; --keep builds the SQLite database in DIR and leaves it there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
ENV = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "120"}
# Two ways a process finds durably's modules: compiled from source on every start (as here,
# where PYTHONDONTWRITEBYTECODE is set, and in a source checkout without __pycache__), or read
# from cached bytecode (an installed package); each is measured. The cache goes to a temp dir.
MODES = {
    "no bytecode cache": {**ENV, "PYTHONDONTWRITEBYTECODE": "1"},
    "cached bytecode": {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"},
}

from durably import (  # noqa: E402
    Context,
    Engine,
    InMemoryBroker,
    NonRetryable,
    Saga,
    SagaContext,
    SagaExecutionRepository,
    SagaManager,
    Workflow,
)

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_DB = f"durably_bench_list_{os.getpid()}"

orders = Workflow("bench_orders")


@orders.task()
def check(ctx: Context) -> None:
    if ctx.get("fail"):
        raise NonRetryable("declined")
    ctx["checked"] = True


@orders.task(dependencies=[check])
def ship(ctx: Context) -> None:
    ctx["shipped"] = True


def reserve(ctx: SagaContext) -> None:
    ctx["reserved"] = True


def refuse(ctx: SagaContext) -> None:
    if ctx.get("fail"):
        raise RuntimeError("refused")


billing = Saga("bench_billing").local_step(reserve).local_step(refuse).commit()


def seed(url: str) -> None:
    """The handful of executions the public API makes: the templates of the copies."""
    logging.disable(logging.CRITICAL)  # the failures are on purpose
    with Engine(url) as engine:
        for i in range(4):
            engine.run(orders, Context(order=i, fail=i == 3), key=f"order-{i}")
        engine.start(orders, Context(order=4), key="order-4")  # stays pending
    repo = SagaExecutionRepository(url)
    try:
        manager = SagaManager(storage=repo, broker_pool=InMemoryBroker())

        async def both() -> None:
            for fail in (False, True):
                context = SagaContext(fail=fail)
                await manager.run(definition=billing, context=context, raise_on_error=False)

        asyncio.run(both())
    finally:
        repo.close()
        logging.disable(logging.NOTSET)


# -- copying rows by SQL -----------------------------------------------------------------------

SQLITE_UUID = (
    "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
    "substr(hex(randomblob(2)), 2) || '-' || substr('89AB', 1 + abs(random()) % 4, 1) || "
    "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
)
# A copy's times move back by its number of seconds (stored as the stores write them).
SQLITE_TIME = "strftime('%Y-%m-%dT%H:%M:%f', t.{col}, '-' || g.i || ' seconds') || '000+00:00'"
PG_TIME = "t.{col} - g.i * interval '1 second'"
TIMES = {"created_at", "updated_at", "started_at", "completed_at"}


def copy_sql(table: str, columns: list[str], copies: int, backend: str) -> str:
    """One INSERT ... SELECT that adds ``copies`` rows of ``table``, each a copy of one of
    its rows (round robin) with a new id and older times (and no idempotency key)."""
    values = []
    for col in columns:
        if col == "id":
            values.append(SQLITE_UUID if backend == "sqlite" else "gen_random_uuid()")
        elif col == "idempotency_key":
            values.append("NULL")
        elif col in TIMES:
            values.append((SQLITE_TIME if backend == "sqlite" else PG_TIME).format(col=col))
        else:
            values.append(f"t.{col}")
    series = (
        f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {copies})"
        if backend == "sqlite"
        else f"WITH g(i) AS (SELECT generate_series(1, {copies}))"
    )
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"{series}, t AS (SELECT *, row_number() OVER (ORDER BY created_at, id) - 1 AS k, "
        f"count(*) OVER () AS total FROM {table}) "
        f"SELECT {', '.join(values)} FROM g JOIN t ON t.k = g.i % t.total"
    )


def fill_sqlite(path: str, executions: int, sagas: int) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    for table, target in (("pipeline_executions", executions), ("saga_executions", sagas)):
        (have,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        conn.execute(copy_sql(table, columns, target - have, "sqlite"))
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, executions: int, sagas: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table, target in (("pipeline_executions", executions), ("saga_executions", sagas)):
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert row is not None
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
            ]
            conn.execute(copy_sql(table, columns, target - row[0], "postgres").encode())
            conn.execute(f"VACUUM ANALYZE {table}".encode())


# -- measuring ---------------------------------------------------------------------------------


def fresh(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, float, str]:
    """The median wall and CPU (user + system) seconds of ``runs`` fresh processes (after one
    that fills any bytecode cache), and the last one's output. On a shared machine the CPU
    time is the steadier of the two: it leaves out the waits for a core."""
    times, cpus, out = [], [], ""
    for run in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if run:
            times.append(wall)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
        out = done.stdout
    return statistics.median(times), statistics.median(cpus), out


def warm(call: Callable[[], Any], runs: int = 50) -> float:
    """The median seconds of ``runs`` calls, after one that warms caches."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def by_key(engine: Engine, key: str) -> list[Any]:
    from durably.listing import ListFilter

    with engine.store.read() as tx:
        return engine.runtime.repo.page_executions(tx, ListFilter(key=key), 50)


def in_process(url: str) -> dict[str, float]:
    with Engine(url) as engine:
        assert by_key(engine, "order-2"), "the seeded execution of key order-2"
        return {
            "Engine.list(limit=50)": warm(lambda: engine.list(limit=50)),
            "Engine.list(status='failed', limit=50)": warm(
                lambda: engine.list(status="failed", limit=50)
            ),
            "Engine.list(workflow='bench_orders', limit=50)": warm(
                lambda: engine.list(workflow="bench_orders", limit=50)
            ),
            "by idempotency key (the repository's page_executions)": warm(
                lambda: by_key(engine, "order-2")
            ),
        }


def importtime(url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "durably", "list", "--db", url],
        capture_output=True,
        text=True,
        env=MODES["no bytecode cache"],
    )
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, own, total, name = (part.strip() for part in line.replace(":", "|", 1).split("|"))
            rows.append((int(total), int(own), name))
    print(
        "\n`python -X importtime -m durably list` (no bytecode cache), the 25 slowest imports"
        " (cumulative):\n"
    )
    print("| module | cumulative ms | own ms |\n|---|---|---|")
    for total, own, name in sorted(rows, reverse=True)[:25]:
        print(f"| `{name}` | {total / 1000:.1f} | {own / 1000:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--sagas", type=int, default=1_000)
    parser.add_argument("--postgres", metavar="URL", default=PG_SERVER, help="the server")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--keep", metavar="DIR")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "list.db"
        path.unlink(missing_ok=True)
        urls = {"SQLite": f"sqlite:///{path}"}
        admin = None
        if not args.no_postgres:
            import psycopg

            admin = psycopg.connect(args.postgres, autocommit=True)
            admin.execute(f"CREATE DATABASE {BENCH_DB}".encode())
            base = args.postgres.rsplit("/", 1)[0]
            urls["PostgreSQL"] = f"{base}/{BENCH_DB}"
        # The processes import a copy of the source without any __pycache__ (a test run that
        # spawned processes with another environment may have left some in the tree): with
        # PYTHONDONTWRITEBYTECODE the copy stays without; the cache goes to its own folder.
        copy = Path(tmp) / "src"
        shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
        for env in MODES.values():
            env["PYTHONPATH"] = str(copy)
        MODES["cached bytecode"]["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        try:
            return measure(args, urls, str(path))
        finally:
            if admin is not None:
                admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)".encode())
                admin.close()


def measure(args: argparse.Namespace, urls: dict[str, str], path: str) -> int:
    for name, url in urls.items():
        started = time.perf_counter()
        seed(url)
        if name == "SQLite":
            fill_sqlite(path, args.executions, args.sagas)
        else:
            fill_postgres(url, args.executions, args.sagas)
        took = time.perf_counter() - started
        print(f"{name}: {args.executions:,} executions and {args.sagas:,} sagas in {took:.1f} s")

    commands = {"`import durably`": [sys.executable, "-c", "import durably"]}
    floor = str(Path(__file__).with_name("list_floor.py"))
    for name, url in urls.items():
        commands[f"`durably list` on {name}"] = [
            sys.executable,
            "-m",
            "durably",
            "list",
            "--db",
            url,
        ]
        commands[f"its floor on {name} (`list_floor.py`: no durably)"] = [
            sys.executable,
            floor,
            url,
        ]
    print(f"\nMedians of {args.runs} fresh processes, wall time (and CPU time):\n")
    print(f"| what | {' | '.join(MODES)} |\n|---|{'---|' * len(MODES)}")
    outputs = {}
    for what, argv in [("a bare interpreter", [sys.executable, "-c", "pass"]), *commands.items()]:
        cells = []
        for env in MODES.values():
            wall, cpu, outputs[what] = fresh(argv, args.runs, env)
            cells.append(f"{wall * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU)")
        print(f"| {what} | {' | '.join(cells)} |")

    print(f"\nIn-process, warm, at {args.executions:,} executions (median of 50 calls):\n")
    print(f"| call | {' | '.join(urls)} |\n|---|{'---|' * len(urls)}")
    found = {name: in_process(url) for name, url in urls.items()}
    for call in found["SQLite"]:
        cells = " | ".join(f"{found[name][call] * 1000:.2f} ms" for name in urls)
        print(f"| `{call}` | {cells} |")

    first = outputs["`durably list` on SQLite"].splitlines()
    print(f"\n`durably list` on SQLite printed {len(first)} lines; its first three:\n")
    print("\n".join(first[:3]))
    if args.importtime:
        importtime(urls["SQLite"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
