"""One run of bench/bench_queues.py, in the benchmark venv; prints one JSON line.

    python queues_run.py run SYSTEM WORKLOAD --jobs N --workers W --postgres URL
    python queues_run.py storage --backend postgres|sqlite --executions N --list-at M
    python queues_run.py serve SYSTEM URL INDEX CONCURRENCY      (a worker process)

A run gets a fresh database on the server. Worker processes import their system, connect and
print a ready line, then wait for a line on stdin ("go") before they start consuming:
imports are never timed, each system's own start-up call (QueueManager.run, run_worker_async,
Worker.run, DBOS.launch) is. Workloads:

- trickle: the workers run (started, then 2 s to settle); JOBS jobs are enqueued one call at
  a time, timed from the first enqueue until the database shows every job done.
- drain: JOBS jobs are enqueued with no worker running; timed from "go" until all are done
  (with --analyze, the database is ANALYZEd between the fill and the workers' start).
- fanout (durably): JOBS executions of 1 -> 100 -> 1 started while the workers run.

Commits are ``xact_commit`` of the run's database in ``pg_stat_database``, read before the
workers start and again once they and every connection of ours have closed (a backend flushes
its counters when it exits), minus the polls that looked for completion; autovacuum and
anything else on that database is in it too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common

HERE = Path(__file__).resolve().parent
MODULES = {
    "durably": "queues_durably",
    "pgqueuer": "queues_pgqueuer",
    "procrastinate": "queues_procrastinate",
    "dbos": "queues_dbos",
}
READY = "__bench_worker_ready__"
POLL = 0.02  # seconds between looks for completion
SETTLE = 2.0  # trickle: seconds between "go" and the first enqueue


def peer(system: str) -> Any:
    return importlib.import_module(MODULES[system])


# --- the server's counters -------------------------------------------------------------------


def commits(server_url: str, database: str) -> int:
    """xact_commit of ``database``, read over a connection to another database (so that the
    read is not counted), once every backend of ours has had time to exit."""
    import psycopg

    time.sleep(1.0)
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0])


class Poller:
    """Counts finished jobs every POLL seconds over one autocommit connection, and how many
    transactions that took (one per poll)."""

    def __init__(self, url: str, sql: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.sql = sql
        self.polls = 0

    def done(self) -> int:
        self.polls += 1
        return int(self.conn.execute(self.sql).fetchone()[0])

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (done := self.done()) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {count} jobs done after {timeout:.0f}s")
            time.sleep(POLL)

    def close(self) -> None:
        self.conn.close()


# --- worker processes ------------------------------------------------------------------------


class Workers:
    """``count`` worker processes of ``system``, each waiting for "go" once it is ready."""

    def __init__(self, system: str, url: str, count: int, concurrency: int) -> None:
        # Each worker's stderr, for the error message when it fails; closed by stop().
        self.logs = [tempfile.TemporaryFile(mode="w+") for _ in range(count)]  # noqa: SIM115
        cmd = [sys.executable, str(HERE / "queues_run.py"), "serve", system, url]
        self.procs = [
            subprocess.Popen(
                [*cmd, str(i), str(concurrency)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=HERE,
            )
            for i, log in enumerate(self.logs)
        ]
        for i, proc in enumerate(self.procs):
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == READY:
                    break
            else:
                raise SystemExit(f"worker {i} exited before it was ready: {self.tail(i)}")
            # Drain whatever else it prints, so that a full pipe never blocks it.
            threading.Thread(target=proc.stdout.read, daemon=True).start()

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def tail(self, i: int) -> str:
        self.logs[i].seek(0)
        return " | ".join(self.logs[i].read().strip().splitlines()[-5:])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for i, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"worker {i} ignored SIGTERM for 60 s: killed", file=sys.stderr)
            if proc.returncode not in (0, -signal.SIGTERM):
                print(f"worker {i} exited {proc.returncode}: {self.tail(i)}", file=sys.stderr)
        for log in self.logs:
            log.close()


def serve(system: str, url: str, index: int, concurrency: int) -> None:
    def go() -> None:
        print(READY, flush=True)
        if not sys.stdin.readline():
            raise SystemExit("no go: the runner went away")

    peer(system).serve(url, index, concurrency, go)


# --- one run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    mod = peer(args.system)
    if args.workload == "fanout" and args.system != "durably":
        raise SystemExit("fanout is a durably workload")
    jobs, timeout = args.jobs, 900.0
    with _common.temp_postgres_database(args.postgres) as url:
        database = url.rpartition("/")[2]
        mod.setup(url)
        enqueue_s = None
        if args.workload == "drain":
            with mod.enqueuer(url) as enqueue:
                began = time.perf_counter()
                for i in range(jobs):
                    enqueue(i)
                enqueue_s = time.perf_counter() - began
            if args.analyze:
                import psycopg

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("ANALYZE")
        before = commits(args.postgres, database)
        workers = Workers(args.system, url, args.workers, args.concurrency)
        poller = Poller(url, mod.DONE_SQL)
        try:
            if args.workload == "drain":
                start = time.perf_counter()
                workers.go()
                poller.wait(jobs, timeout)
            else:
                workers.go()
                time.sleep(SETTLE)
                with contextlib.ExitStack() as stack:
                    if args.workload == "fanout":
                        from queues_durably import WORKFLOWS

                        from durably import Engine

                        engine = stack.enter_context(Engine(url, workflows=WORKFLOWS))
                        start = time.perf_counter()
                        for i in range(jobs):
                            engine.start(WORKFLOWS[1], {"i": i})
                    else:
                        enqueue = stack.enter_context(mod.enqueuer(url))
                        start = time.perf_counter()
                        for i in range(jobs):
                            enqueue(i)
                    enqueue_s = time.perf_counter() - start
                    poller.wait(jobs, timeout)
            wall = time.perf_counter() - start
        finally:
            polls = poller.polls
            poller.close()
            workers.stop()
        after = commits(args.postgres, database)
        durability = _common.postgres_settings(url)
    units = jobs * (102 if args.workload == "fanout" else 1)
    return {
        "system": args.system,
        "workload": args.workload,
        "workers": args.workers,
        "jobs": jobs,
        "units": units,
        "wall_s": wall,
        "enqueue_s": enqueue_s,
        "per_s": units / wall,
        "commits": after - before - polls,
        "polls": polls,
        "commits_per_unit": (after - before - polls) / units,
        "analyzed": bool(args.analyze and args.workload == "drain"),
        "how": mod.HOW.format(concurrency=args.concurrency),
        "durability": durability,
    }


# --- durably's storage and listing -----------------------------------------------------------


def chain_workflow(tasks: int) -> Any:
    """A chain of ``tasks`` tasks, each adding one key (also storage_layout.py's)."""
    from durably import Workflow

    wf = Workflow(f"bench_chain{tasks}")
    for i in range(tasks):

        def task(ctx: Any, i: int = i) -> None:
            ctx[f"k{i}"] = i

        wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else ())(task)
    return wf


# The bytes each table and index takes: SQLite's pages per b-tree (dbstat), PostgreSQL's
# relations (a table's own size includes its TOAST, its indexes are listed apart).
_SQLITE_PARTS = "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
_POSTGRES_PARTS = (
    "SELECT c.relname, pg_table_size(c.oid) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
)


@contextlib.contextmanager
def _backend(backend: str, server: str) -> Iterator[tuple[str, Any, Any, Any]]:
    """(url, the bytes durably's tables take now, a query's one value, the bytes by table
    and index)."""
    if backend == "sqlite":
        import sqlite3

        with _common.temp_dir() as folder:
            path = folder / "durably.db"

            def size() -> int:
                conn = sqlite3.connect(path)
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    return os.path.getsize(path)
                finally:
                    conn.close()

            def value(sql: str) -> Any:
                conn = sqlite3.connect(path)
                try:
                    return conn.execute(sql).fetchone()[0]
                finally:
                    conn.close()

            def parts() -> dict[str, int]:
                conn = sqlite3.connect(path)
                try:
                    return dict(conn.execute(_SQLITE_PARTS).fetchall())
                finally:
                    conn.close()

            yield f"sqlite:///{path}", size, value, parts
        return
    import psycopg

    tables = (
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r'"
    )
    with _common.temp_postgres_database(server) as url:

        def value(sql: str) -> Any:
            with psycopg.connect(url, autocommit=True) as conn:
                return conn.execute(sql).fetchone()[0]

        def parts() -> dict[str, int]:
            with psycopg.connect(url, autocommit=True) as conn:
                return dict(conn.execute(_POSTGRES_PARTS).fetchall())

        yield url, lambda: int(value(tables)), value, parts


def storage(args: argparse.Namespace) -> dict[str, Any]:
    """Bytes per execution of a 10-task chain with a ~1 KB initial context, and
    ``Engine.list(limit=50)`` once the database holds ``--list-at`` executions."""
    from concurrent.futures import ThreadPoolExecutor

    from queues_durably import WORKFLOWS

    from durably import Engine

    chain = chain_workflow(10)
    single = WORKFLOWS[0]
    payload = "x" * 1000
    with _backend(args.backend, args.postgres) as (url, size, value, parts):
        with Engine(url, workflows=[chain, single]) as engine:

            def run_chains() -> None:
                for i in range(args.executions):
                    result = engine.run(chain, {"payload": payload, "i": i})
                    if result.status != "completed":
                        raise SystemExit(f"execution {i} {result.status}: {result.error}")

            empty = size()
            before = parts()
            began = time.perf_counter()
            run_chains()
            run_s = time.perf_counter() - began
            full = size()
            after = parts()
            settled, chains = None, args.executions
            if args.backend == "postgres":
                # As autovacuum would: the dead row versions of the runs' updates become free
                # space, and the same number of executions again fills it before growing.
                import psycopg

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("VACUUM")
                run_chains()
                settled, chains = (size() - full) / args.executions, 2 * args.executions
            rest = args.list_at - chains
            threads = 4 if args.backend == "postgres" else 1
            began = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(lambda i: engine.start(single, {"i": i}), range(rest)):
                    pass
            start_s = time.perf_counter() - began
            if args.backend == "postgres":
                import psycopg

                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("ANALYZE")
            total = value("SELECT count(*) FROM pipeline_executions")
            for _ in range(5):
                engine.list(limit=50)
            timings = []
            for _ in range(args.list_calls):
                t0 = time.perf_counter()
                engine.list(limit=50)
                timings.append(1000 * (time.perf_counter() - t0))
        timings.sort()
        return {
            "backend": args.backend,
            "executions": args.executions,
            "bytes_per_execution": (full - empty) / args.executions,
            "bytes_per_execution_after_vacuum": settled,
            "bytes_by_table": {
                name: (after[name] - before.get(name, 0)) / args.executions
                for name in sorted(after)
                if after[name] != before.get(name, 0)
            },
            "run_s": run_s,
            "listed_executions": total,
            "started": rest,
            "start_threads": threads,
            "starts_per_s": rest / start_s if start_s else None,
            "list_ms_median": statistics.median(timings),
            "list_ms_p95": timings[int(0.95 * (len(timings) - 1))],
            "list_calls": args.list_calls,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("system", choices=list(MODULES))
    one.add_argument("workload", choices=["trickle", "drain", "fanout"])
    one.add_argument("--jobs", type=int, default=2000)
    one.add_argument("--workers", type=int, default=1)
    one.add_argument("--concurrency", type=int, default=10)
    one.add_argument("--postgres", required=True)
    one.add_argument("--analyze", action="store_true", help="drain: ANALYZE after the fill")
    store = sub.add_parser("storage")
    store.add_argument("--backend", choices=["postgres", "sqlite"], required=True)
    store.add_argument("--executions", type=int, default=1000)
    store.add_argument("--list-at", type=int, default=100_000)
    store.add_argument("--list-calls", type=int, default=50)
    store.add_argument("--postgres", required=True)
    worker = sub.add_parser("serve")
    worker.add_argument("system", choices=list(MODULES))
    worker.add_argument("url")
    worker.add_argument("index", type=int)
    worker.add_argument("concurrency", type=int)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.system, args.url, args.index, args.concurrency)
        return 0
    result = run(args) if args.command == "run" else storage(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
