"""`make bench-postgres`: durably's workers against pgqueuer, procrastinate and DBOS queues.

Prints numbers, asserts nothing. Every run is a subprocess of the benchmark venv
(bench/queues_run.py) on a fresh PostgreSQL database, with its worker processes of its own;
the systems alternate within each round (durably, pgqueuer, procrastinate, DBOS, durably, ...)
and the table shows the medians over the rounds:

- trickle: JOBS trivial jobs enqueued one call at a time while the workers run, timed from
  the first enqueue until the database shows all of them done;
- drain: a queue filled with JOBS jobs and no worker running, timed from the workers' start
  (after their imports and connections) until all are done;
- fan-out (durably only): executions of 1 -> 100 -> 1 started while the workers run, tasks/s;

each with 1 and 2 worker processes, and commits per job: the run's database's
``pg_stat_database.xact_commit`` delta (read once everything has disconnected) over the jobs.
Then, once, durably's bytes per execution and ``Engine.list(limit=50)`` latency at 100,000
executions, on PostgreSQL and on SQLite.

The peers (bench/requirements-queues.txt) go into .bench-venv only, on top of what
bench/run.py installs there; they are never project dependencies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as bench_run  # noqa: E402  (bench/run.py: the venv it builds)

REQUIREMENTS = BENCH / "requirements-queues.txt"
SYSTEMS = {"durably": "durably", "pgqueuer": "pgqueuer", "procrastinate": "procrastinate"}
SYSTEMS["dbos"] = "DBOS"
RUN_TIMEOUT = 1200.0
WORKLOADS = ("trickle", "drain", "fanout")

GUARANTEES = """\
What one job is, in each system (so that the rates compare like with like):
- durably: an execution of a one-task workflow. Its start, the task's claim (a lease renewed
  by a heartbeat; a stale claim is taken over, and the old holder's late writes are fenced
  off by the claim's attempt number) and the task's output context are each committed, and
  the execution row, its task row and both contexts stay (until pruned).
- pgqueuer: a row that a dequeue marks picked. Completions are kept in memory and written in
  batches (batch_size, or every 0.1 s) that delete the row and append a log row, so a job that
  finished just before a crash runs again once its heartbeat is stale; no result is kept.
- procrastinate: a row taken with FOR UPDATE SKIP LOCKED and marked doing, then marked
  succeeded in its own transaction when the task returns; the row (status, not the return
  value) and its event rows stay (delete_jobs=never, the default). A job whose worker died
  stays doing until the application retries what get_stalled_jobs() returns.
- DBOS: a workflow with no steps: a workflow_status row written ENQUEUED, claimed by a poll,
  then SUCCESS with its serialized result, kept. Its workflows are recovered by an executor
  with the same executor id; there is no lease between processes."""


# --- the venv --------------------------------------------------------------------------------


def bench_python() -> Path:
    """bench/run.py's venv, plus the queue peers (stamped separately: plain `make bench`
    never installs them)."""
    python = bench_run.bench_python()
    stamp = bench_run.VENV / ".queues.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        print("installing the queue peers into .bench-venv...", file=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(digest)
    return python


def versions(python: Path) -> str:
    code = (
        "import importlib.metadata as m\n"
        "names = ['durably', 'pgqueuer', 'procrastinate', 'dbos', 'psycopg']\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in names))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def server_version(url: str, python: Path) -> str:
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as c:\n"
        "    print(c.execute('SHOW server_version').fetchone()[0])"
    )
    out = subprocess.run(
        [str(python), "-c", code, url], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


# --- running ---------------------------------------------------------------------------------


def one(python: Path, args: list[str]) -> dict[str, Any]:
    cmd = [str(python), str(BENCH / "queues_run.py"), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=BENCH, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


Key = tuple[str, str, int]  # (system, workload, workers)


def plan(opts: argparse.Namespace) -> list[tuple[Key, list[str]]]:
    """One round's runs, in order: per workload and worker count, the systems in turn."""
    common = [f"--postgres={opts.postgres}", f"--concurrency={opts.concurrency}"]
    out = []
    for workers in opts.workers:
        for workload in opts.workloads:
            for system in opts.only:
                if workload == "fanout" and system != "durably":
                    continue
                jobs = opts.fanout if workload == "fanout" else opts.jobs
                args = ["run", system, workload, f"--jobs={jobs}", f"--workers={workers}"]
                if workload == "drain" and opts.analyze:
                    args.append("--analyze")
                out.append(((system, workload, workers), args + common))
    return out


def run_rounds(python: Path, opts: argparse.Namespace) -> dict[Key, dict[str, list[Any]]]:
    runs: dict[Key, dict[str, list[Any]]] = {}
    steps = plan(opts)
    for rnd in range(1, opts.rounds + 1):
        for key, args in steps:
            slot = runs.setdefault(key, {"samples": [], "errors": []})
            began = time.perf_counter()
            try:
                sample = one(python, args)
                slot["samples"].append(sample)
                status = f"{sample['per_s']:8.1f}/s {sample['commits_per_unit']:5.2f} commits"
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                slot["errors"].append(str(exc))
                status = f"ERROR {exc}"[:120]
            took = time.perf_counter() - began
            label = f"{key[0]:13} {key[1]:7} {key[2]} worker(s)"
            print(f"[{rnd}/{opts.rounds}] {label} {status} ({took:.0f}s)", file=sys.stderr)
    return runs


def run_storage(python: Path, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for backend in ("postgres", "sqlite"):
        args = [
            "storage",
            f"--backend={backend}",
            f"--executions={opts.storage_executions}",
            f"--list-at={opts.list_at}",
            f"--postgres={opts.postgres}",
        ]
        began = time.perf_counter()
        try:
            out[backend] = one(python, args)
            status = "ok"
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            out[backend] = {"error": str(exc)}
            status = f"ERROR {exc}"[:120]
        took = time.perf_counter() - began
        print(f"storage/list {backend}: {status} ({took:.0f}s)", file=sys.stderr)
    return out


# --- reporting -------------------------------------------------------------------------------


def value_of(sample: dict[str, Any], field: str) -> float | None:
    if field == "enqueue_per_s":
        took = sample.get("enqueue_s")
        return sample["jobs"] / took if took else None
    value = sample.get(field)
    return None if value is None else float(value)


def median(slot: dict[str, list[Any]] | None, field: str) -> float | None:
    found = [value_of(s, field) for s in slot["samples"]] if slot else []
    values = [v for v in found if v is not None]
    return statistics.median(values) if values else None


# Numbers print as bench/run.py prints its own.
fmt, ratio = bench_run.fmt, bench_run.ratio


def cell(slot: dict[str, list[Any]] | None, field: str) -> tuple[str, float | None]:
    if slot is None:
        return "n/a", None
    value = median(slot, field)
    if value is None and slot["errors"]:
        return "error", None
    return fmt(value), value


TITLES = {
    "trickle": "A: {jobs} jobs enqueued one at a time while the workers run",
    "drain": "B: drain of {jobs} queued jobs, from the workers' start",
    "fanout": "fan-out: {jobs} executions of 1 -> 100 -> 1 (durably)",
}


def report(runs: dict[Key, dict[str, list[Any]]], opts: argparse.Namespace) -> None:
    systems = opts.only
    peers = [s for s in systems if s != "durably"]
    header = ["workload", "workers", "metric", *(SYSTEMS[s] for s in systems)]
    if "durably" in systems:
        header += [f"durably/{SYSTEMS[p]}" for p in peers]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for workload in WORKLOADS:
        jobs = opts.fanout if workload == "fanout" else opts.jobs
        unit = "tasks" if workload == "fanout" else "jobs"
        for workers in opts.workers:
            metrics = [(f"{unit}/s", "per_s"), (f"commits/{unit[:-1]}", "commits_per_unit")]
            if workload == "trickle":  # what bounds A: the enqueuing loop alone
                metrics.append(("enqueue calls/s", "enqueue_per_s"))
            if not any((s, workload, workers) in runs for s in systems):
                continue
            for i, (label, field) in enumerate(metrics):
                cells = {s: cell(runs.get((s, workload, workers)), field) for s in systems}
                title = TITLES[workload].format(jobs=jobs) if i == 0 else ""
                row = [title, str(workers) if i == 0 else "", label]
                row += [cells[s][0] for s in systems]
                if "durably" in systems:
                    row += [ratio(cells["durably"][1], cells[p][1]) for p in peers]
                print("| " + " | ".join(row) + " |")
    print(
        "\nMedians of each cell's rounds. Ratios are durably / peer: above 1 is better for "
        "durably on rates, below 1 on commits. Commits per job are the run database's "
        "xact_commit delta (pg_stat_database) from before the workers start until everything "
        "has disconnected, less the completion polls, over the jobs: the enqueues, the workers' "
        "start-up, idle polls and shutdown are in it, and so is autovacuum and stats noise. "
        "In A every system keeps up with the enqueuing loop (one call at a time from one "
        "thread), so A's rate is mostly the cost of an enqueue: see its enqueue calls/s row."
    )


def report_storage(storage: dict[str, Any]) -> None:
    print("\n| durably | PostgreSQL | SQLite |\n|---|---|---|")
    pg, lite = storage.get("postgres", {}), storage.get("sqlite", {})
    rows = [
        ("bytes per execution (10-task chain, ~1 KB context)", "bytes_per_execution"),
        ("the same, as many again after a VACUUM", "bytes_per_execution_after_vacuum"),
        ("Engine.list(limit=50), median ms", "list_ms_median"),
        ("Engine.list(limit=50), p95 ms", "list_ms_p95"),
        ("executions in the database when listed", "listed_executions"),
        ("engine.start() per second while filling", "starts_per_s"),
    ]
    for label, field in rows:
        values = [fmt(side.get(field)) if "error" not in side else "error" for side in (pg, lite)]
        print(f"| {label} | {values[0]} | {values[1]} |")
    sample = pg if "error" not in pg else lite
    if "executions" in sample:
        print(
            f"\nBytes: {sample['executions']:,} executions with engine.run (each task adds a "
            "key; the initial context holds a 1,000-character string), the growth of durably's "
            "tables (PostgreSQL: pg_total_relation_size summed over every table of the "
            "schema, indexes and TOAST included, before any VACUUM; SQLite: the file after a "
            "WAL checkpoint) over the executions. After a VACUUM (PostgreSQL): as many "
            "executions again, the growth they add once the dead row versions of the first "
            "runs' updates are free space, as under autovacuum. Listing: the same database, then "
            f"{sample['started']:,} more executions queued with engine.start() of a one-task "
            f"workflow ({pg.get('start_threads', '?')} threads on PostgreSQL, 1 on SQLite), all "
            "through the public API, no SQL copies; PostgreSQL is ANALYZEd once before the "
            f"{sample['list_calls']} timed calls (after 5 untimed ones), SQLite is left as "
            "durably leaves it."
        )
    for backend, side in storage.items():
        if "error" in side:
            print(f"- {backend}: {side['error']}")


def notes(runs: dict[Key, dict[str, list[Any]]], opts: argparse.Namespace) -> None:
    print("\nHow each system ran:")
    seen: set[str] = set()
    for (system, _, _), slot in runs.items():
        if slot["samples"] and system not in seen:
            seen.add(system)
            print(f"- {SYSTEMS[system]}: {slot['samples'][0]['how']}")
    durability = next((s["durability"] for r in runs.values() for s in r["samples"]), None)
    if durability:
        print(f"- every run: {durability}")
    if opts.analyze:
        print("- drain: the database was ANALYZEd between the fill and the workers' start")
    print()
    print(GUARANTEES)
    errors = [(k, e) for k, r in runs.items() for e in r["errors"]]
    if errors:
        print("\nFailed runs:")
        for key, error in errors:
            print(f"- {SYSTEMS[key[0]]} {key[1]} {key[2]} worker(s): {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per queue run")
    parser.add_argument("--workers", default="1,2", help="worker process counts, e.g. 1,2")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated systems")
    parser.add_argument(
        "--concurrency", type=int, default=10, help="jobs at once per worker process"
    )
    parser.add_argument(
        "--workloads", default="trickle,drain,fanout", help="a subset of trickle,drain,fanout"
    )
    parser.add_argument("--fanout", type=int, default=5, help="fan-out executions per run")
    parser.add_argument("--storage-executions", type=int, default=1000)
    parser.add_argument("--list-at", type=int, default=100_000, help="executions when listing")
    parser.add_argument("--no-storage", action="store_true", help="skip bytes and listing")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE before each drain")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    parser.add_argument(
        "--postgres",
        default=bench_run.DEFAULT_POSTGRES,
        metavar="URL",
        help=f"the server (default {bench_run.DEFAULT_POSTGRES}); each run makes a database",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="print the tables of a run saved with --json (with the same other options) "
        "instead of running",
    )
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds, opts.jobs, opts.fanout = 1, 100, 1
        opts.storage_executions, opts.list_at = 50, 1000
    opts.workers = [int(w) for w in str(opts.workers).split(",") if w]
    opts.workloads = [w for w in WORKLOADS if w in opts.workloads.split(",")]
    unknown = set(opts.only.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    opts.only = [s for s in SYSTEMS if s in opts.only.split(",")]

    started = time.perf_counter()
    python = bench_python()
    if opts.from_json:
        saved = json.loads(opts.from_json.read_text())
        runs = {tuple(r.pop("key")): r for r in saved["runs"]}  # type: ignore[misc]
        storage = saved["storage"]
    else:
        runs = run_rounds(python, opts)
        skip = opts.no_storage or "durably" not in opts.only
        storage = {} if skip else run_storage(python, opts)
    print(
        f"\n{platform.platform()}, {os.cpu_count()} CPUs shared with other work on the "
        f"machine, Python {platform.python_version()}; {versions(python)}; PostgreSQL "
        f"{server_version(opts.postgres, python)} on the same machine; median of "
        f"{opts.rounds} round(s), systems alternating\n"
    )
    report(runs, opts)
    if storage:
        report_storage(storage)
    notes(runs, opts)
    if opts.json and not opts.from_json:
        dump = {
            "runs": [{"key": list(k), **r} for k, r in runs.items()],
            "storage": storage,
        }
        opts.json.write_text(json.dumps(dump, indent=1))
    print(f"\nbench took {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
