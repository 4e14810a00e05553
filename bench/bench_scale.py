"""Per-task cost of one in-process execution as it grows (issue 14): wall time, Python memory
and statements per task of `engine.run` for 100, 1,000 and 10,000 tasks, in four shapes, and
the ratio of the per-task cost at the largest size to that at the smallest.

    .venv/bin/python bench/bench_scale.py [--sizes 100,1000,10000] [--shapes chain,...]
        [--postgres [URL]] [--json FILE]

Shapes, each task a trivial `def t(ctx): ctx[key] = value`:

- `chain-same`: N tasks, each depending on the one before, each setting the same key `k`:
  the context stays one key, so whatever grows per task is the engine's own overhead.
- `chain`: the same chain, task i setting `k{i}`: task i's input holds i keys, so encoding and
  storing its output is O(i) and the whole execution O(N^2) in the context's size. That work
  is inherent to a context that grows (every output is a whole context, SPEC §3.1); this row
  shows it, and `chain-same` is the one that separates the engine's overhead from it.
- `fanout`: start -> N tasks -> end (the end merges N outputs: O(N) once, not per task).
- `wide`: N independent tasks (the final context merges the N leaves).

Each (shape, size) runs on a fresh SQLite file (or a fresh PostgreSQL database with
--postgres), in two fresh processes that each first run one unmeasured 100-task execution of
the same shape (imports, statement caches). The first times the first execution of N tasks
apart (what the definition costs once per process: its task rows' template, its version
hash), then more, until at least 3,000 tasks ran (their median is shown). The second measures
how much one execution raises the process's peak RSS, then, under tracemalloc, another's peak
of Python allocations before the run reads its result back (the run's own: its state, the
outputs it holds) and with that read, and the part the returned result still holds (every
task's outcome and saved output text: the API returns them). Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
from run import fmt

from durably import Context, Engine, Workflow

SHAPES = ("chain-same", "chain", "fanout", "wide")
DEFAULT_POSTGRES = os.environ.get(
    "DURABLY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MIN_TASKS = 3000  # timed per (shape, size): a 100-task execution runs 30 times
TIMEOUT = 1800.0


def _setter(key: str, value: int) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx[key] = value

    return task


def workflow(shape: str, n: int, prefix: str = "scale") -> tuple[Workflow, int]:
    """The workflow of ``shape`` with ``n`` tasks of its own (fan-out: plus start and end),
    and how many tasks it runs."""
    wf = Workflow(f"{prefix}_{shape}_{n}")
    if shape in ("chain", "chain-same"):
        for i in range(n):
            key = "k" if shape == "chain-same" else f"k{i}"
            wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else ())(_setter(key, i))
        return wf, n
    if shape == "fanout":
        wf.task(name="start")(_setter("start", 0))
        middles = [f"m{i}" for i in range(n)]
        for i, name in enumerate(middles):
            wf.task(name=name, dependencies=["start"])(_setter(name, i))
        wf.task(name="end", dependencies=middles)(_setter("end", n))
        return wf, n + 2
    if shape == "wide":
        for i in range(n):
            wf.task(name=f"w{i}")(_setter(f"w{i}", i))
        return wf, n
    raise SystemExit(f"unknown shape {shape!r}")


def rss_kib() -> int:
    """This process's resident set now (KiB), from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _engine(url: str, shape: str, n: int) -> tuple[Engine, Callable[[], Any], int]:
    """An engine on ``url`` that ran one 100-task execution of ``shape`` (imports, statement
    caches), and a call running the ``n``-task one."""
    wf, tasks = workflow(shape, n)
    warm, _ = workflow(shape, 100, "warm")  # its own name: wf's first run stays its first
    engine = Engine(url, workflows=[wf, warm])
    engine.run(warm, {})

    def run_one() -> Any:
        result = engine.run(wf, {})
        if result.status != "completed":
            raise SystemExit(f"{shape} {n}: {result.status}: {result.error}")
        return result

    return engine, run_one, tasks


def measure_time(url: str, shape: str, n: int) -> dict[str, Any]:
    """Per-task wall time and statements: the first execution, then the median of more."""
    engine, run_one, tasks = _engine(url, shape, n)
    with engine:

        def timed() -> float:
            started = time.perf_counter()
            run_one()
            return time.perf_counter() - started

        stats = engine.store.stats
        statements = stats.statements
        first = timed()  # the definition's first execution: what it costs once per process
        walls = [timed()]
        while (len(walls) + 1) * tasks < MIN_TASKS:
            walls.append(timed())
        statements = (stats.statements - statements) / ((len(walls) + 1) * tasks)
    return {
        "shape": shape,
        "size": n,
        "tasks": tasks,
        "executions": len(walls) + 1,
        "first_us_per_task": 1e6 * first / tasks,
        "us_per_task": 1e6 * statistics.median(walls) / tasks,
        "statements_per_task": statements,
    }


def measure_memory(url: str, shape: str, n: int) -> dict[str, Any]:
    """In a process of its own (peak RSS only grows): how much the first execution raises
    the peak RSS, untraced; then, under tracemalloc, a second one's peak and what its
    result still holds."""
    engine, run_one, tasks = _engine(url, shape, n)
    with engine:
        gc.collect()
        rss_before = rss_kib()
        run_one()
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        read = engine.get
        run_peak = []

        def get(execution_id: Any) -> Any:  # run() reads its result back last: the peak so far
            run_peak.append(tracemalloc.get_traced_memory()[1])
            return read(execution_id)

        engine.get = get  # type: ignore[method-assign]
        gc.collect()
        tracemalloc.start()
        result = run_one()
        kept, peak = tracemalloc.get_traced_memory()  # kept: what the result holds
        tracemalloc.stop()
        del result
    return {
        "run_peak_bytes_per_task": run_peak[-1] / tasks,
        "traced_peak_bytes_per_task": peak / tasks,
        "result_bytes_per_task": kept / tasks,
        "rss_growth_bytes_per_task": max(0, rss_growth) * 1024 / tasks,
    }


MEASURES = {"time": measure_time, "memory": measure_memory}


def run_one(url: str, shape: str, n: int) -> dict[str, Any]:
    """Each measure in a fresh interpreter (one JSON line back from each)."""
    out: dict[str, Any] = {}
    for kind in MEASURES:
        code = [sys.executable, __file__, "--one", kind, shape, str(n), "--url", url]
        proc = subprocess.run(code, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"{shape} {n}: exit {proc.returncode}: " + " | ".join(tail))
        out.update(json.loads(lines[-1]))
    return out


def database(backend: str, server: str | None, stack: Any) -> str:
    if backend == "postgres":
        assert server is not None
        return str(stack.enter_context(_common.temp_postgres_database(server)))
    return f"sqlite:///{stack.enter_context(_common.temp_dir()) / 'durably.db'}"


def report(rows: list[dict[str, Any]], sizes: list[int]) -> None:
    print(
        "| backend | shape | tasks | us/task, first run | us/task, next runs | statements/task "
        "| run peak B/task | peak with the result read | result | RSS growth B/task |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['backend']} | {row['shape']} | {row['tasks']:,} "
            f"| {fmt(row['first_us_per_task'])} | {fmt(row['us_per_task'])} "
            f"| {row['statements_per_task']:.2f} | {fmt(row['run_peak_bytes_per_task'])} "
            f"| {fmt(row['traced_peak_bytes_per_task'])} "
            f"| {fmt(row['result_bytes_per_task'])} | {fmt(row['rss_growth_bytes_per_task'])} |"
        )
    small, large = min(sizes), max(sizes)
    print(f"\nPer-task cost at {large:,} tasks against {small:,} (1.00 = flat):")
    by_key = {(r["backend"], r["shape"], r["size"]): r for r in rows}
    for backend, shape in dict.fromkeys((r["backend"], r["shape"]) for r in rows):
        low, high = by_key.get((backend, shape, small)), by_key.get((backend, shape, large))
        if low is None or high is None:
            continue
        ratios = ", ".join(
            f"{label} {high[key] / low[key]:.2f}x"
            for label, key in (
                ("first run", "first_us_per_task"),
                ("next runs", "us_per_task"),
                ("run's peak memory", "run_peak_bytes_per_task"),
                ("with the result read", "traced_peak_bytes_per_task"),
            )
        )
        note = " (its context grows with N: O(N) per task is inherent)" if shape == "chain" else ""
        print(f"- {backend} {shape}: {ratios}{note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated task counts")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_POSTGRES,
        metavar="URL",
        help=f"also run on PostgreSQL (default server: {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows here")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # MEASURE SHAPE SIZE
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, shape, size = args.one
        print(json.dumps(MEASURES[kind](args.url, shape, int(size))), flush=True)
        return 0
    sizes = [int(size) for size in args.sizes.split(",")]
    shapes = [shape for shape in SHAPES if shape in args.shapes.split(",")]
    backends = ["sqlite"] + (["postgres"] if args.postgres else [])
    rows = []
    for backend in backends:
        for shape in shapes:
            for n in sizes:
                with contextlib.ExitStack() as stack:
                    url = database(backend, args.postgres, stack)
                    started = time.perf_counter()
                    row = {"backend": backend, **run_one(url, shape, n)}
                rows.append(row)
                print(
                    f"{backend:8} {shape:10} {n:>6} tasks: {fmt(row['us_per_task'])} us/task "
                    f"({time.perf_counter() - started:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    report(rows, sizes)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
