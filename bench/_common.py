"""Shared by the three benchmark workers: arguments, timing, a temp database, one JSON line.

A worker runs in the benchmark venv as `python bench_<system>.py WORKLOAD [options]` and prints
exactly one JSON object on its last stdout line. Timings cover the executions only: opening the
store, migrations and workflow definitions happen before the clock starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Result = dict[str, Any]


def parse_args(workloads: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=[*workloads, "import"])
    parser.add_argument("--tasks", type=int, default=10, help="chain length or fan-out width")
    parser.add_argument("--executions", type=int, default=1)
    parser.add_argument("--keys", type=int, default=100, help="keys each merge branch writes")
    parser.add_argument("--sync", choices=["default", "full"], default="default")
    parser.add_argument("--mode", choices=["concurrent", "sequential"], default="concurrent")
    parser.add_argument("--postgres", metavar="URL", help="run on a fresh database on this server")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (workers)")
    return parser.parse_args()


def timed(run_one: Callable[[int], None], executions: int) -> float:
    """Wall seconds for `executions` calls of run_one(i)."""
    start = time.perf_counter()
    for i in range(executions):
        run_one(i)
    return time.perf_counter() - start


def rates(tasks_per_execution: int, executions: int, wall: float) -> Result:
    tasks = tasks_per_execution * executions
    return {
        "tasks": tasks,
        "executions": executions,
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "ms_per_execution": 1000 * wall / executions,
        "us_per_task": 1e6 * wall / tasks,
    }


def import_time(module: str, rounds: int = 7) -> Result:
    """Median wall time of `python -c "import MODULE"` minus that of `python -c "pass"`."""
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)  # warm .pyc files
    with_import, bare = [], []
    for _ in range(rounds):
        for code, into in ((f"import {module}", with_import), ("pass", bare)):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            into.append(time.perf_counter() - start)
    ms = 1000 * (statistics.median(with_import) - statistics.median(bare))
    return {"import_ms": ms, "how": f"python -c 'import {module}' minus python -c 'pass'"}


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="durably-bench-") as name:
        yield Path(name)


@contextlib.contextmanager
def temp_postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server `server_url` points at, dropped afterwards."""
    import psycopg  # in the bench venv through dbos

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_settings(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        values = [
            conn.execute(f"SHOW {name}").fetchone()[0] for name in ("fsync", "synchronous_commit")
        ]
    return f"PostgreSQL, fsync={values[0]}, synchronous_commit={values[1]}"


def sqlite_pragmas(path: str | Path) -> str:
    """journal_mode as stored in the file and the synchronous level a new connection gets."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
            conn.execute("PRAGMA synchronous").fetchone()[0]
        ]
    finally:
        conn.close()
    return f"journal_mode={journal}, synchronous={sync}"


def emit(system: str, args: argparse.Namespace, result: Result) -> None:
    """Print the measurements, with this process's peak resident memory, as one JSON line."""
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    line = {"system": system, "workload": args.workload, **result, "peak_rss_mib": peak_kib / 1024}
    print(json.dumps(line), flush=True)


def main(system: str, workloads: dict[str, Callable[[argparse.Namespace], Result]], module: str):
    args = parse_args(list(workloads))
    if args.workload == "import":
        emit(system, args, import_time(module))
    else:
        emit(system, args, workloads[args.workload](args))
