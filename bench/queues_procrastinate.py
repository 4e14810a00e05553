"""procrastinate 3.10 as a queue: ``task.defer(i=i)`` per job through a synchronously opened
app, one ``run_worker_async`` per worker process, a no-op async task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from procrastinate import App, PsycopgConnector

NAME = "procrastinate"
DONE_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
HOW = (
    "job.defer(i=i) per job; App.run_worker_async(concurrency={concurrency}) in each "
    "process (LISTEN/NOTIFY on, its default), task `async def job(i): pass`, jobs kept "
    "(delete_jobs=never, its default)"
)


def _make(url: str) -> tuple[App, Any]:
    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name="job")
    async def job(i: int) -> None:
        pass

    return app, job


def setup(url: str) -> None:
    app, _ = _make(url)
    with app.open():
        app.schema_manager.apply_schema()


@contextlib.contextmanager
def enqueuer(url: str) -> Iterator[Callable[[int], None]]:
    app, job = _make(url)
    with app.open():
        yield lambda i: job.defer(i=i) and None


async def _serve(url: str, concurrency: int, go: Callable[[], None]) -> None:
    app, _ = _make(url)
    async with app.open_async():
        await asyncio.to_thread(go)
        # Its own SIGTERM handler stops the worker after the running jobs.
        await app.run_worker_async(concurrency=concurrency, install_signal_handlers=True)


def serve(url: str, index: int, concurrency: int, go: Callable[[], None]) -> None:
    asyncio.run(_serve(url, concurrency, go))
