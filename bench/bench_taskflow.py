"""OpenStack TaskFlow side of the benchmark: Task subclasses, SQLAlchemy persistence on SQLite.

A chain is a `linear_flow` of N tasks; fan-out is a `graph_flow` whose edges come from
`requires`/`provides` (start -> N middles -> end), run by the `parallel` engine (concurrent) or
the default `serial` engine (sequential). Every execution is loaded with the SQLAlchemy backend,
so TaskFlow records a logbook, a flow detail and each task's state and result in the file.
TaskFlow leaves SQLite at its defaults (a rollback journal with synchronous=FULL, already
power-loss durable), so `--sync full` changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import _common
import taskflow.engines
from taskflow import task
from taskflow.patterns import graph_flow, linear_flow
from taskflow.persistence import backends


class Constant(task.Task):  # type: ignore[misc]
    def __init__(self, value: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value

    def execute(self) -> int:
        return self.value


class Middle(task.Task):  # type: ignore[misc]
    def execute(self, start: int) -> int:
        return start


class End(task.Task):  # type: ignore[misc]
    def execute(self, **values: int) -> int:
        return len(values)


def _run(args: argparse.Namespace, make_flow: Any, engine: str, check: Any) -> _common.Result:
    with _common.temp_dir() as tmp:
        path = tmp / "taskflow.sqlite"
        backend = backends.fetch({"connection": f"sqlite:///{path}"})
        with contextlib.closing(backend.get_connection()) as conn:
            conn.upgrade()
        flow = make_flow()

        def run_one(_: int) -> None:
            loaded = taskflow.engines.load(flow, backend=backend, engine=engine)
            loaded.run()
            check(loaded.storage)

        wall = _common.timed(run_one, args.executions)
        backend.close()
        durability = f"SQLite defaults, unchanged by TaskFlow: {_common.sqlite_pragmas(path)}"
    return {"wall": wall, "durability": durability}


def chain(args: argparse.Namespace) -> _common.Result:
    n = args.tasks

    def make_flow() -> Any:
        return linear_flow.Flow("chain").add(
            *(Constant(i, name=f"t{i}", provides=f"k{i}") for i in range(n))
        )

    def check(storage: Any) -> None:
        assert storage.fetch(f"k{n - 1}") == n - 1

    out = _run(args, make_flow, "serial", check)
    return {
        **_common.rates(n, args.executions, out["wall"]),
        "how": f"linear_flow of {n} Task subclasses, serial engine",
        "durability": out["durability"],
    }


def fanout(args: argparse.Namespace) -> _common.Result:
    n = args.tasks
    engine = "parallel" if args.mode == "concurrent" else "serial"

    def make_flow() -> Any:
        flow = graph_flow.Flow("fanout")
        flow.add(Constant(0, name="start", provides="start"))
        flow.add(*(Middle(name=f"m{i}", provides=f"m{i}") for i in range(n)))
        flow.add(End(name="end", provides="end", requires=[f"m{i}" for i in range(n)]))
        return flow

    def check(storage: Any) -> None:
        assert storage.fetch("end") == n

    out = _run(args, make_flow, engine, check)
    return {
        **_common.rates(n + 2, args.executions, out["wall"]),
        "how": f"graph_flow start -> {n} tasks -> end (requires/provides), {engine} engine",
        "durability": out["durability"],
    }


if __name__ == "__main__":
    _common.main("taskflow", {"chain": chain, "fanout": fanout}, module="taskflow.engines")
