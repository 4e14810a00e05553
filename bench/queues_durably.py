"""durably as a queue: a job is one execution of a one-task workflow, queued with
``Engine.start`` and run by ``durably.Worker`` processes (what ``durably worker`` runs)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

from durably import Context, Engine, Workflow

NAME = "durably"
DONE_SQL = "SELECT count(*) FROM pipeline_executions WHERE status = 'completed'"
HOW = (
    "Engine.start(wf, {{'i': i}}) per job, wf one task setting one key; durably.Worker in each "
    "process, concurrency={concurrency} threads"
)


def job_workflow() -> Workflow:
    wf = Workflow("bench_job")

    def job(ctx: Context) -> None:
        ctx["done"] = ctx["i"]

    wf.task(name="job")(job)
    return wf


def fanout_workflow(width: int) -> Workflow:
    wf = Workflow(f"bench_fanout{width}")
    wf.task(name="start")(lambda ctx: ctx.update(start=0))
    middles = [f"m{i}" for i in range(width)]
    for i, name in enumerate(middles):
        wf.task(name=name, dependencies=["start"])(_setter(name, i))
    wf.task(name="end", dependencies=middles)(
        lambda ctx: ctx.update(count=sum(1 for key in ctx if key.startswith("m")))
    )
    return wf


def _setter(key: str, value: int) -> Callable[[Context], None]:
    def task(ctx: Context) -> None:
        ctx[key] = value

    return task


WORKFLOWS = (job_workflow(), fanout_workflow(100))


def setup(url: str) -> None:
    Engine(url).close()  # creates the schema


@contextlib.contextmanager
def enqueuer(url: str) -> Iterator[Callable[[int], None]]:
    with Engine(url, workflows=WORKFLOWS) as engine:
        wf = WORKFLOWS[0]
        yield lambda i: engine.start(wf, {"i": i}) and None


def serve(url: str, index: int, concurrency: int, go: Callable[[], None]) -> None:
    with Engine(url, workflows=WORKFLOWS, concurrency=concurrency) as engine:
        worker = engine.worker(concurrency=concurrency)
        signal.signal(signal.SIGTERM, lambda *_: worker.stop())
        go()
        worker.run()
