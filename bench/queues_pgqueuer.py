"""pgqueuer 1.6 as a queue: ``SyncQueries.enqueue`` per job (psycopg), one ``QueueManager``
per worker process over one asyncpg connection (its first driver: with its psycopg driver a
NOTIFY that arrives during a query waits for the listener's 1 s timeout), a no-op async
entrypoint."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

import asyncpg
import psycopg
from pgqueuer import AsyncpgDriver, PsycopgDriver, Queries, QueueManager
from pgqueuer.db import SyncPsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import SyncQueries

NAME = "pgqueuer"
DONE_SQL = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
HOW = (
    "SyncQueries.enqueue('job', payload) per job (psycopg); in each process, over asyncpg, "
    "QueueManager.run(batch_size={concurrency}) (its default: no cap on running jobs), "
    "entrypoint `async def job(job): pass`; schema installed with its default durability "
    "(all tables logged)"
)


async def _install(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await Queries(PsycopgDriver(conn)).install()


def setup(url: str) -> None:
    asyncio.run(_install(url))


@contextlib.contextmanager
def enqueuer(url: str) -> Iterator[Callable[[int], None]]:
    with psycopg.connect(url, autocommit=True) as conn:
        queries = SyncQueries(SyncPsycopgDriver(conn))
        yield lambda i: queries.enqueue("job", str(i).encode()) and None


async def _serve(url: str, concurrency: int, go: Callable[[], None]) -> None:
    conn = await asyncpg.connect(url)
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("job")
        async def job(job: Job) -> None:
            pass

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        await asyncio.to_thread(go)
        await qm.run(batch_size=concurrency)
    finally:
        await conn.close()


def serve(url: str, index: int, concurrency: int, go: Callable[[], None]) -> None:
    asyncio.run(_serve(url, concurrency, go))
