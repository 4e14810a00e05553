"""DBOS Transact 3.4 as a queue: ``DBOSClient.enqueue`` per job onto a registered queue, one
launched DBOS process per worker (its own executor id), a workflow with no steps."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from dbos import DBOS, DBOSClient

NAME = "dbos"
APP = "bench"
QUEUE = "bench"
POLL = 0.1
DONE_SQL = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
HOW = (
    "DBOSClient.enqueue({{workflow_name: 'job', queue_name: 'bench'}}, i) per job; DBOS.launch() "
    f"in each process, executor_id per process; queue polled every {POLL} s (DBOS's default "
    "1 s), no worker_concurrency cap (its default; --concurrency does not apply); workflow "
    "`def job(i): return i`, no steps"
)


def _config(url: str, executor: str | None = None) -> Any:
    config: dict[str, Any] = {
        "name": APP,
        "system_database_url": url,
        "log_level": "WARNING",
        "application_version": "bench",
    }
    if executor is not None:
        config["executor_id"] = executor
    return config


def _register() -> None:
    @DBOS.workflow(name="job")
    def job(i: int) -> int:
        return i


def setup(url: str) -> None:
    """Migrate the system database and register the queue (as a deploy step would)."""
    DBOS(config=_config(url, "setup"))
    try:
        _register()
        DBOS.launch()
        DBOS.register_queue(QUEUE, polling_interval_sec=POLL)
    finally:
        DBOS.destroy(destroy_registry=True)


@contextlib.contextmanager
def enqueuer(url: str) -> Iterator[Callable[[int], None]]:
    client = DBOSClient(system_database_url=url, application_name=APP)
    options: Any = {"workflow_name": "job", "queue_name": QUEUE, "app_version": "bench"}
    try:
        yield lambda i: client.enqueue(options, i) and None
    finally:
        client.destroy()


def serve(url: str, index: int, concurrency: int, go: Callable[[], None]) -> None:
    stopped = threading.Event()
    DBOS(config=_config(url, f"worker-{index}"))
    _register()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    go()
    DBOS.launch()
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        DBOS.destroy(destroy_registry=True)
