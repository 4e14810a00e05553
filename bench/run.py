"""`make bench`: durably against DBOS Transact and OpenStack TaskFlow, same workloads, one run.

Sets up a separate venv (.bench-venv at the repository root) holding DBOS, TaskFlow and an
editable durably, then runs every workload as a subprocess per system, alternating systems
(durably, DBOS, TaskFlow, durably, ...) for --reps rounds, and prints a Markdown table of the
medians with the ratios durably/DBOS and durably/TaskFlow. Each worker prints one JSON line;
see bench/_common.py. Nothing here asserts on timings: the numbers are reported, not judged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = ROOT / ".bench-venv"
REQUIREMENTS = BENCH / "requirements.txt"
SYSTEMS = {"durably": "durably", "dbos": "DBOS", "taskflow": "TaskFlow"}
DEFAULT_POSTGRES = os.environ.get(
    "DURABLY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
WORKER_TIMEOUT = 300.0


# --- the benchmark venv ---------------------------------------------------------------------


def bench_python() -> Path:
    """The venv's python, (re)creating the venv when missing or its requirements changed."""
    python = VENV / "bin" / "python"
    digest = hashlib.sha256(
        REQUIREMENTS.read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"setting up {VENV.relative_to(ROOT)} (DBOS, TaskFlow, durably)...", file=sys.stderr)
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS), "-e", f"{ROOT}[postgres]"], check=True)
    stamp.write_text(digest)
    return python


def versions(python: Path) -> str:
    code = (
        "import importlib.metadata as m, sqlite3\n"
        "names = ['durably', 'dbos', 'taskflow', 'SQLAlchemy']\n"
        "print(', '.join(f'{n} {m.version(n)}' for n in names)"
        " + f', SQLite {sqlite3.sqlite_version}')"
    )
    return subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


# --- what runs -------------------------------------------------------------------------------

PEAK = ("peak RSS MiB", "peak_rss_mib")
TX = ("transactions/task", "tx_per_task")
STATEMENTS = ("statements/task", "statements_per_task")


@dataclass
class Bench:
    title: str
    commands: dict[str, list[str]]  # system -> worker arguments; a missing system is "n/a"
    metrics: list[tuple[str, str]]  # (label, key in the worker's JSON)


def chain(tasks: int, executions: int, sync: str = "default") -> list[str]:
    return ["chain", f"--tasks={tasks}", f"--executions={executions}", f"--sync={sync}"]


def fanout(tasks: int, executions: int, mode: str | None = None) -> list[str]:
    # durably gets no --mode: its DAG runs the fan-out as declared, in both fan-out rows.
    return ["fanout", f"--tasks={tasks}", f"--executions={executions}"] + (
        [f"--mode={mode}"] if mode else []
    )


# durably's per-task cost at 100 and at 1000 tasks: linear growth keeps it flat.
SCALE = {
    "chain": (chain(100, 10), chain(1000, 2)),
    "fan-out": (fanout(100, 20), fanout(1000, 2)),
}


def benches(postgres: str | None) -> list[Bench]:
    rate = [("steps/s", "tasks_per_s")]
    fan = [("tasks/s", "tasks_per_s"), ("wall ms/execution", "ms_per_execution")]
    per_task = [("us/task", "us_per_task")]
    out = [
        Bench(
            "chain 10 tasks x 100 executions (TaskFlow x 10), SQLite, each system's default",
            {"durably": chain(10, 100), "dbos": chain(10, 100), "taskflow": chain(10, 10)},
            [*rate, TX, STATEMENTS, PEAK],
        ),
        Bench(
            "chain 10 tasks x 100 executions (TaskFlow x 10), SQLite, synchronous=full",
            {
                "durably": chain(10, 100, "full"),
                "dbos": chain(10, 100, "full"),
                "taskflow": chain(10, 10, "full"),
            },
            [*rate, PEAK],
        ),
        Bench(
            "fan-out 1 -> 100 -> 1, peers run the 100 concurrently",
            {
                "durably": SCALE["fan-out"][0],
                "dbos": fanout(100, 3, "concurrent"),
                "taskflow": fanout(100, 1, "concurrent"),
            },
            [*fan, TX, STATEMENTS, PEAK],
        ),
        Bench(
            "fan-out 1 -> 100 -> 1, peers run the 100 in sequence",
            {
                "durably": SCALE["fan-out"][0],
                "dbos": fanout(100, 3, "sequential"),
                "taskflow": fanout(100, 1, "sequential"),
            },
            [*fan, PEAK],
        ),
        Bench(
            "context merge: 100 tasks x 100 keys -> 1 task",
            {"durably": ["merge", "--tasks=100", "--keys=100", "--executions=10"]},
            [*fan, TX, STATEMENTS, PEAK],
        ),
        Bench("scale: chain of 100 tasks", {"durably": SCALE["chain"][0]}, [*per_task, PEAK]),
        Bench(
            "scale: chain of 1000 tasks",
            {"durably": SCALE["chain"][1]},
            [*per_task, TX, STATEMENTS, PEAK],
        ),
        Bench(
            "scale: fan-out 1 -> 1000 -> 1",
            {"durably": SCALE["fan-out"][1]},
            [*per_task, *fan, TX, STATEMENTS, PEAK],
        ),
        Bench(
            "runtime fan-out 1 -> map(10,000) -> 1 (collect), in-process",
            {"durably": ["map", "--tasks=10000", "--executions=1"]},
            [*per_task, TX, STATEMENTS, PEAK],
        ),
        Bench("import time", {s: ["import"] for s in SYSTEMS}, [("ms", "import_ms")]),
    ]
    if postgres:
        # TaskFlow's SQLAlchemy backend would need psycopg2 (a C build) for PostgreSQL: n/a.
        pg = [f"--postgres={postgres}"]
        out.append(
            Bench(
                "chain 10 tasks x 100 executions, PostgreSQL",
                {"durably": chain(10, 100) + pg, "dbos": chain(10, 100) + pg},
                [*rate, TX, STATEMENTS, PEAK],
            )
        )
        for count in (1, 2, 4):
            out.append(
                Bench(
                    f"PostgreSQL workers: {count} process(es), 5 x (1 -> 100 -> 1) queued",
                    {
                        "durably": [
                            "workers",
                            "--tasks=100",
                            "--executions=5",
                            f"--workers={count}",
                            *pg,
                        ]
                    },
                    [*rate],
                )
            )
    return out


# --- running ---------------------------------------------------------------------------------


@dataclass
class Runs:
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_worker(python: Path, system: str, args: list[str]) -> dict[str, Any]:
    cmd = [str(python), str(BENCH / f"bench_{system}.py"), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT, cwd=BENCH, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


def run_all(python: Path, plan: list[Bench], systems: list[str], reps: int) -> dict[tuple, Runs]:
    """Every distinct (system, command) once per round, systems alternating."""
    runs: dict[tuple, Runs] = {}
    for rep in range(1, reps + 1):
        for bench in plan:
            for system in systems:
                args = bench.commands.get(system)
                if args is None:
                    continue
                key = (system, *args)
                slot = runs.setdefault(key, Runs())
                if len(slot.samples) + len(slot.errors) >= rep:
                    continue  # the same command already ran this round for another row
                start = time.perf_counter()
                try:
                    slot.samples.append(run_worker(python, system, args))
                    status = "ok"
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    slot.errors.append(str(exc))
                    status = "ERROR"
                took = time.perf_counter() - start
                print(
                    f"[{rep}/{reps}] {system:8} {' '.join(args):58} {status} {took:5.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


# --- reporting -------------------------------------------------------------------------------


def median(runs: Runs | None, key: str) -> float | None:
    values = [s[key] for s in runs.samples if s.get(key) is not None] if runs else []
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.3g}x" if ours is not None and theirs else "n/a"


def cell(runs: Runs | None, key: str) -> tuple[str, float | None]:
    if runs is None:
        return "n/a", None
    value = median(runs, key)
    if value is None and runs.errors:
        return "error", None
    return fmt(value), value


def report(plan: list[Bench], runs: dict[tuple, Runs], systems: list[str]) -> None:
    peers = [s for s in systems if s != "durably"]
    header = ["workload", "metric", *(SYSTEMS[s] for s in systems)]
    header += [f"durably/{SYSTEMS[p]}" for p in peers if "durably" in systems]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for bench in plan:
        for i, (label, key) in enumerate(bench.metrics):
            found = {
                s: runs.get((s, *bench.commands[s])) if s in bench.commands else None
                for s in systems
            }
            cells = {s: cell(found[s], key) for s in systems}
            row = [bench.title if i == 0 else "", label, *(cells[s][0] for s in systems)]
            if "durably" in systems:
                row += [ratio(cells["durably"][1], cells[p][1]) for p in peers]
            print("| " + " | ".join(row) + " |")
    print(
        "\nRatios are durably / peer on the medians: above 1 is better for durably on rates, "
        "below 1 on times and memory. n/a: the peer has no equivalent, or it was not run.\n"
        "DBOS and TaskFlow leave SQLite at a rollback journal with synchronous=FULL, already "
        "power-loss durable, so their synchronous=full rows rerun their default configuration."
    )


def notes(plan: list[Bench], runs: dict[tuple, Runs]) -> None:
    print("\nHow each system runs each workload, and its durability setting:")
    seen = set()
    for bench in plan:
        for system, args in bench.commands.items():
            found = runs.get((system, *args))
            if not found or not found.samples or args[0] == "import":
                continue
            sample = found.samples[0]
            line = f"- {SYSTEMS[system]}, {' '.join(args)}: {sample['how']}; {sample['durability']}"
            if line not in seen:
                seen.add(line)
                print(line)
    print()
    for shape, (small, large) in SCALE.items():
        costs = [median(runs.get(("durably", *cmd)), "us_per_task") for cmd in (small, large)]
        if costs[0] and costs[1]:
            print(
                f"Linearity, durably {shape}: {fmt(costs[0])} us/task at 100 tasks, "
                f"{fmt(costs[1])} at 1000 ({costs[1] / costs[0]:.2f}x per task)"
            )
    errors = [(k, e) for k, r in runs.items() for e in r.errors]
    if errors:
        print("\nFailed runs:")
        for key, error in errors:
            print(f"- {SYSTEMS[key[0]]} {' '.join(key[1:])}: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_POSTGRES,
        metavar="URL",
        help=f"also run the chain on PostgreSQL (default server: {DEFAULT_POSTGRES}), then "
        "bench/bench_queues.py (durably's workers against pgqueuer, procrastinate and DBOS)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every sample here")
    args = parser.parse_args()
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]

    started = time.perf_counter()
    python = bench_python()
    plan = benches(args.postgres)
    runs = run_all(python, plan, systems, args.reps)
    print(
        f"\n{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{versions(python)}; median of {args.reps} rounds\n"
    )
    report(plan, runs, systems)
    notes(plan, runs)
    if args.json:
        dump = [{"key": list(k), "samples": r.samples, "errors": r.errors} for k, r in runs.items()]
        args.json.write_text(json.dumps(dump, indent=1))
    print(f"\nbench took {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if args.postgres:
        queues = [sys.executable, str(BENCH / "bench_queues.py"), f"--postgres={args.postgres}"]
        print(flush=True)
        return subprocess.run([*queues, f"--rounds={args.reps}"], check=False).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
