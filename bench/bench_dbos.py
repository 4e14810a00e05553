"""DBOS Transact 3.4 side of the benchmark: durable steps in a workflow, SQLite system database.

DBOS has no DAG: a chain is a workflow calling N `@DBOS.step()` functions in sequence (its
standard way to express durable steps). Fan-out is either concurrent (the workflow starts each
middle step as a child with `DBOS.start_workflow` and waits for all handles) or sequential (the
workflow calls the middle steps one after another). DBOS leaves SQLite at its defaults (it sets
busy_timeout, foreign_keys and IMMEDIATE transactions only): a rollback journal with
synchronous=FULL, which is already power-loss durable, so `--sync full` changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import _common
from dbos import DBOS


def _const(value: int) -> Callable[[], int]:
    def step() -> int:
        return value

    return step


@contextlib.contextmanager
def _launched(args: argparse.Namespace, register: Callable[[], None]) -> Iterator[str]:
    """Configure DBOS on a fresh database, let `register` declare workflows, launch."""
    with contextlib.ExitStack() as stack:
        if args.postgres:
            url = stack.enter_context(_common.temp_postgres_database(args.postgres))
        else:
            url = f"sqlite:///{stack.enter_context(_common.temp_dir()) / 'dbos.sqlite'}"
        DBOS(config={"name": "bench", "system_database_url": url, "log_level": "WARNING"})
        try:
            register()
            DBOS.launch()
            yield url
        finally:
            DBOS.destroy(destroy_registry=True)


def _durability(url: str) -> str:
    if not url.startswith("sqlite:///"):
        return _common.postgres_settings(url)
    path = url.removeprefix("sqlite:///")
    return f"SQLite defaults, unchanged by DBOS: {_common.sqlite_pragmas(path)}"


def chain(args: argparse.Namespace) -> _common.Result:
    workflows: dict[str, Any] = {}

    def register() -> None:
        steps = [DBOS.step(name=f"step{i}")(_const(i)) for i in range(args.tasks)]

        @DBOS.workflow(name="chain")
        def run_chain() -> int:
            value = -1
            for step in steps:
                value = step()
            return value

        workflows["chain"] = run_chain

    def run_one(_: int) -> None:
        assert workflows["chain"]() == args.tasks - 1

    with _launched(args, register) as url:
        wall = _common.timed(run_one, args.executions)
        durability = _durability(url)
    how = f"one workflow calling {args.tasks} @DBOS.step() functions in sequence"
    return {
        **_common.rates(args.tasks, args.executions, wall),
        "how": how,
        "durability": durability,
    }


def fanout(args: argparse.Namespace) -> _common.Result:
    width, concurrent = args.tasks, args.mode == "concurrent"
    workflows: dict[str, Any] = {}

    def register() -> None:
        @DBOS.step(name="start")
        def start() -> int:
            return 0

        @DBOS.step(name="middle")
        def middle(i: int) -> int:
            return i

        @DBOS.step(name="end")
        def end(values: list[int]) -> int:
            return len(values)

        @DBOS.workflow(name="fanout")
        def run_fanout() -> int:
            start()
            if concurrent:
                handles = [DBOS.start_workflow(middle, i) for i in range(width)]
                values = [handle.get_result() for handle in handles]
            else:
                values = [middle(i) for i in range(width)]
            return end(values)

        workflows["fanout"] = run_fanout

    def run_one(_: int) -> None:
        assert workflows["fanout"]() == width

    with _launched(args, register) as url:
        wall = _common.timed(run_one, args.executions)
        durability = _durability(url)
    how = (
        f"workflow: start step, {width} steps started as child workflows with "
        "DBOS.start_workflow and awaited, end step"
        if concurrent
        else f"workflow: start step, {width} steps called in sequence, end step"
    )
    return {**_common.rates(width + 2, args.executions, wall), "how": how, "durability": durability}


if __name__ == "__main__":
    _common.main("dbos", {"chain": chain, "fanout": fanout}, module="dbos")
