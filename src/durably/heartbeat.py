"""Heartbeats: keep this process's claims fresh while it works on them.

Only the claims registered here are beaten, and each is dropped the moment its driver stops
(normally or by an error): a claim orphaned by an error goes stale within the lease, so
another process can take it over.
"""

from __future__ import annotations

import logging
import threading

from .clock import Clock
from .logs import fields
from .repository import Repository
from .store import Store

log = logging.getLogger("durably.heartbeat")


class Heartbeat:
    def __init__(
        self, store: Store, repo: Repository, worker_id: str, clock: Clock, interval: float
    ) -> None:
        self.store = store
        self.repo = repo
        self.worker_id = worker_id
        self.clock = clock
        self.interval = interval
        self._executions: set[str] = set()
        self._tasks: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Set operations and sorted() run in C under the GIL, so the sets need no lock; only
    # starting the thread does (hold and drop run once per task: they must stay cheap).

    def hold(self, *, execution: str | None = None, task: str | None = None) -> None:
        if execution is not None:
            self._executions.add(execution)
        if task is not None:
            self._tasks.add(task)
        if self._thread is None or self._stop.is_set():
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._stop.is_set():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="durably-heartbeat", daemon=True
                )
                self._thread.start()

    def drop(self, *, execution: str | None = None, task: str | None = None) -> None:
        self._executions.discard(execution or "")
        self._tasks.discard(task or "")

    def beat(self) -> None:
        """Refresh every held claim now (one transaction)."""
        executions, tasks = sorted(self._executions), sorted(self._tasks)
        if not executions and not tasks:
            return
        with self.store.transaction() as tx:
            self.repo.heartbeat(tx, self.worker_id, executions, tasks, self.clock.now())

    def beat_task(self, task_id: str) -> None:
        with self.store.transaction() as tx:
            self.repo.heartbeat_task(tx, task_id, self.worker_id, self.clock.now())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # a missed beat is retried; the lease tolerates two
                log.debug("heartbeat failed: %s", exc, extra=fields("heartbeat_failed"))

    def stop(self) -> None:
        self._stop.set()
