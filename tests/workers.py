"""A worker running on a thread for the length of a ``with`` block (the worker-path tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from durably import Engine


@contextmanager
def running_worker(engine: Engine, **options: Any) -> Iterator[Any]:
    options.setdefault("concurrency", 2)
    options.setdefault("poll_interval", 0.05)
    with running(engine.worker(**options)) as worker:
        yield worker


@contextmanager
def running(worker: Any) -> Iterator[Any]:
    """``worker`` (made and prepared by the test) running on a thread for the block."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        store = worker.rt.store
        if store.dialect == "postgres":
            # stop() does not interrupt an idle wait_for_work: without a NOTIFY a worker
            # with a long poll_interval returns only when that interval ends.
            with store.transaction() as tx:
                worker.rt.repo.notify_work(tx)
        thread.join(timeout=15)
        assert not thread.is_alive(), "the worker did not stop"
