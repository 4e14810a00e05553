"""What a worker's claim costs, with and without flow limits (SPEC §3.5, issue 11): round
trips, statements and transactions per claim (the store's own counters, StoreStats), and the
claim's latency (median, p95), on PostgreSQL and on SQLite.

Each case gets a fresh database with --ready executions of one single-task workflow queued,
then a worker claims --claims times (after a few unmeasured ones), --batch tasks a time,
through ``Worker.claim``: the claim transaction, with what it loads for each task. The cases
of one backend claim in turn, so that other load on the machine weighs on them alike. The limits
never bind (the task's concurrency, the workflow's Concurrency and the bucket are far larger
than what is claimed): what is measured is the cost of checking them. Claimed tasks are not
run; they stay running (and counted under their key). On PostgreSQL the tables are analyzed
once the executions are queued, as autovacuum soon would on a live database (--no-analyze
measures a database without planner statistics yet); durably never analyzes SQLite.

    .venv/bin/python bench/bench_claims.py [--postgres URL] [--ready 2000] [--claims 300]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import _common

from durably import Concurrency, Context, Engine, RateLimit, StoreConnectionError, Workflow

DEFAULT_URL = os.environ.get("DURABLY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 10  # claims before measuring: psycopg prepares a statement on its 5th run


def task(ctx: Context) -> None:
    pass


def unlimited() -> Workflow:
    wf = Workflow("bench_claims_unlimited")
    wf.task(name="work")(task)
    return wf


def task_concurrency() -> Workflow:
    wf = Workflow("bench_claims_task_concurrency")
    wf.task(name="work", concurrency=100_000)(task)
    return wf


def workflow_concurrency() -> Workflow:
    wf = Workflow("bench_claims_workflow_concurrency", concurrency=Concurrency(100_000))
    wf.task(name="work")(task)
    return wf


def rate_limited() -> Workflow:
    wf = Workflow("bench_claims_rate_limited")
    wf.task(name="work", rate_limit=RateLimit("bench_claims_bucket", 1_000_000))(task)
    return wf


KINDS: dict[str, Callable[[], Workflow]] = {
    "unlimited": unlimited,
    "task concurrency=N": task_concurrency,
    "workflow Concurrency": workflow_concurrency,
    "rate_limit": rate_limited,
}


@contextlib.contextmanager
def database(backend: str, server: str) -> Iterator[str]:
    if backend == "sqlite":
        with _common.temp_dir() as folder:
            yield f"sqlite:///{folder}/claims.db"
    else:
        with _common.temp_postgres_database(server) as url:
            yield url


def analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def measure(backend: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every kind on its own database, its claims taken in turn with the other kinds' (so
    that a noisy neighbour on the machine slows them all alike)."""
    with contextlib.ExitStack() as stack:
        workers, stats = {}, {}
        for kind, make in KINDS.items():
            url = stack.enter_context(database(backend, args.postgres))
            wf = make()
            # A long lease: no heartbeat transaction in the middle of the counts.
            engine = stack.enter_context(Engine(url, workflows=[wf], lease=3600))
            for _ in range(args.ready):
                engine.start(wf, {})
            if backend == "postgres" and args.analyze:
                analyze(url)
            workers[kind], stats[kind] = engine.worker(), engine.store.stats
        for _ in range(WARM_UP):
            for worker in workers.values():
                worker.claim(args.batch)
        for counters in stats.values():
            counters.reset()
        latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(args.claims):
            for kind, worker in workers.items():
                began = time.perf_counter()
                claimed = worker.claim(args.batch)
                latencies[kind].append((time.perf_counter() - began) * 1000)
                if len(claimed) != args.batch:
                    raise SystemExit(f"{kind}: a claim took {len(claimed)}, not {args.batch}")
        n = args.claims
        rows = {}
        for kind, times in latencies.items():
            times.sort()
            rows[kind] = {
                "round_trips": stats[kind].round_trips / n,
                "statements": stats[kind].statements / n,
                "transactions": stats[kind].transactions / n,
                "p50": statistics.median(times),
                "p95": times[int(0.95 * (len(times) - 1))],
            }
        return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=DEFAULT_URL, metavar="URL")
    parser.add_argument("--ready", type=int, default=2000, help="executions queued per case")
    parser.add_argument("--claims", type=int, default=300, help="claims measured per case")
    parser.add_argument("--batch", type=int, default=1, help="tasks per claim")
    parser.add_argument(
        "--no-analyze", dest="analyze", action="store_false", help="no ANALYZE on PostgreSQL"
    )
    args = parser.parse_args()
    if args.ready < WARM_UP * args.batch + args.claims * args.batch:
        parser.error("--ready must cover the warm-up and measured claims")
    print(
        f"claim cost per Worker.claim({args.batch}), {args.claims} claims after {WARM_UP}, "
        f"{args.ready} ready tasks{'' if args.analyze else ', PostgreSQL not analyzed'}"
    )
    header = f"{'backend':<9} {'workflow':<21} {'round trips':>11} {'statements':>10} "
    print(header + f"{'transactions':>12} {'p50 ms':>7} {'p95 ms':>7}")
    for backend in ("postgres", "sqlite"):
        try:
            rows = measure(backend, args)
        except StoreConnectionError as exc:  # no server: say so, measure SQLite
            if backend != "postgres":
                raise
            print(f"postgres: skipped, PostgreSQL unreachable ({' '.join(str(exc).split())})")
            continue
        for kind, row in rows.items():
            print(
                f"{backend:<9} {kind:<21} {row['round_trips']:>11.2f} {row['statements']:>10.2f} "
                f"{row['transactions']:>12.2f} {row['p50']:>7.2f} {row['p95']:>7.2f}"
            )
    print(
        "round trips: what is sent together counts once (PostgreSQL's pipeline mode: the BEGIN "
        "with the first statement, a batch, held writes with the next statement or COMMIT). "
        "SQLite runs in process: there each call into it counts, BEGIN and COMMIT too."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
