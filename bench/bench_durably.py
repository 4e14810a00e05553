"""durably side of the benchmark, written against the public API of SPEC section 3.

A chain is N tasks each depending on the one before; fan-out is start -> N tasks -> end; the
merge workload is one task with N dependencies, each writing `--keys` distinct context keys.
Each task is a trivial `def t(ctx): ctx[key] = value`. The store's counters
(`engine.store.stats.transactions` and `.statements`) give the work per task.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import _common

from durably import Context, Engine, Workflow


def _setter(key: str, value: int) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx[key] = value

    return task


def _counter(prefix: str) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx["count"] = sum(1 for key in ctx if key.startswith(prefix))

    return task


def _writer(branch: int, keys: int) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx.update({f"b{branch}_{j}": j for j in range(keys)})

    return task


def _size(ctx: Context) -> None:
    ctx["merged"] = len(ctx)


@contextlib.contextmanager
def _engine(args: argparse.Namespace) -> Iterator[tuple[Engine, str]]:
    """An Engine on a fresh database, with a description of its durability setting."""
    with contextlib.ExitStack() as stack:
        if args.postgres:
            url = stack.enter_context(_common.temp_postgres_database(args.postgres))
            path = None
        else:
            path = stack.enter_context(_common.temp_dir()) / "durably.db"
            url = f"sqlite:///{path}" + ("?synchronous=full" if args.sync == "full" else "")
        with Engine(url) as engine:
            if path is None:
                durability = _common.postgres_settings(url)
            else:
                journal = _common.sqlite_pragmas(path).split(",")[0]
                sync = getattr(getattr(engine, "store", None), "synchronous", "unknown")
                setting = "?synchronous=full" if args.sync == "full" else "durably default"
                durability = f"SQLite, {setting}: {journal}, synchronous={sync}"
            yield engine, durability


def _measure(args: argparse.Namespace, wf: Workflow, tasks: int, check: Any) -> _common.Result:
    with _engine(args) as (engine, durability):
        engine.register(wf)
        stats = getattr(getattr(engine, "store", None), "stats", None)
        before = (stats.transactions, stats.statements) if stats is not None else None

        def run_one(i: int) -> None:
            result = engine.run(wf, Context(execution=i))
            if result.status != "completed":
                raise SystemExit(f"execution {i} {result.status}: {result.error}")
            check(result.context)

        wall = _common.timed(run_one, args.executions)
        out = {**_common.rates(tasks, args.executions, wall), "durability": durability}
        if before is not None:
            total = tasks * args.executions
            out["tx_per_task"] = (stats.transactions - before[0]) / total
            out["statements_per_task"] = (stats.statements - before[1]) / total
    return out


def _fanout_workflow(n: int) -> Workflow:
    wf = Workflow(f"fanout{n}")
    wf.task(name="start")(_setter("start", 0))
    middles = [f"m{i}" for i in range(n)]
    for i, name in enumerate(middles):
        wf.task(name=name, dependencies=["start"])(_setter(name, i))
    wf.task(name="end", dependencies=middles)(_counter("m"))
    return wf


def chain(args: argparse.Namespace) -> _common.Result:
    n = args.tasks
    wf = Workflow(f"chain{n}")
    for i in range(n):
        wf.task(name=f"t{i}", dependencies=[f"t{i - 1}"] if i else ())(_setter("k", i))

    def check(ctx: Context) -> None:
        assert ctx["k"] == n - 1

    out = _measure(args, wf, n, check)
    return {**out, "how": f"Workflow of {n} tasks, each depending on the previous one"}


def fanout(args: argparse.Namespace) -> _common.Result:
    n = args.tasks
    wf = _fanout_workflow(n)

    def check(ctx: Context) -> None:
        assert ctx["count"] == n

    out = _measure(args, wf, n + 2, check)
    return {**out, "how": f"Workflow start -> {n} tasks -> end, Engine default concurrency"}


def merge(args: argparse.Namespace) -> _common.Result:
    n, keys = args.tasks, args.keys
    wf = Workflow(f"merge{n}x{keys}")
    branches = [f"b{i}" for i in range(n)]
    for i, name in enumerate(branches):
        wf.task(name=name)(_writer(i, keys))
    wf.task(name="merge", dependencies=branches)(_size)

    def check(ctx: Context) -> None:
        assert ctx["merged"] == n * keys + 1  # the branches' keys and "execution"

    out = _measure(args, wf, n + 1, check)
    return {**out, "how": f"{n} tasks writing {keys} keys each -> 1 task merging them"}


def fanout_map(args: argparse.Namespace) -> _common.Result:
    """Runtime fan-out: start -> map over a list of n items (collect) -> end."""
    n = args.tasks
    wf = Workflow(f"map{n}")
    wf.task(name="start")(lambda ctx: ctx.update(items=list(range(n))))
    wf.task(name="each", dependencies=["start"], map_over="items", collect="out")(
        lambda ctx, handle: handle.item * 2
    )

    @wf.task(dependencies=["each"])
    def end(ctx: Context) -> None:
        ctx["sum"] = sum(ctx["out"])

    def check(ctx: Context) -> None:
        assert ctx["sum"] == n * (n - 1)

    out = _measure(args, wf, n + 2, check)
    return {**out, "how": f"Workflow start -> map over {n} items (collect) -> end"}


def serve(url: str, n: int) -> None:
    """A worker process: what `durably worker` does, for the workflow the driver queues."""
    engine = Engine(url)
    engine.register(_fanout_workflow(n))
    worker = engine.worker(concurrency=4)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run()
    engine.close()


def workers(args: argparse.Namespace) -> _common.Result:
    """Executions queued with `start` and run by `--workers` worker processes (PostgreSQL)."""
    if not args.postgres:
        raise SystemExit("the workers workload needs --postgres")
    n, executions = args.tasks, args.executions
    wf = _fanout_workflow(n)
    with _common.temp_postgres_database(args.postgres) as url, Engine(url) as engine:
        engine.register(wf)
        here = os.path.dirname(os.path.abspath(__file__))
        code = (
            f"import sys; sys.path.insert(0, {here!r}); import bench_durably as b; "
            f"b.serve({url!r}, {n})"
        )
        procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(args.workers)]
        try:
            time.sleep(2.0)  # imports and connections are not the figure
            start = time.perf_counter()
            ids = [engine.start(wf, Context(execution=i)) for i in range(executions)]
            for execution_id in ids:
                result = engine.wait(execution_id, timeout=600)
                if result.status != "completed":
                    raise SystemExit(f"execution {result.status}: {result.error}")
            wall = time.perf_counter() - start
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
        durability = _common.postgres_settings(url)
    out = {**_common.rates(n + 2, executions, wall), "durability": durability}
    how = f"{executions} x (start -> {n} -> end) queued, {args.workers} worker processes"
    return {**out, "how": how}


if __name__ == "__main__":
    _common.main(
        "durably",
        {"chain": chain, "fanout": fanout, "map": fanout_map, "merge": merge, "workers": workers},
        module="durably",
    )
