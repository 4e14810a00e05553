"""Prometheus metrics (``pip install 'durably[metrics]'``, ``durably worker --metrics-port N``).

Off by default, and then free: nothing imports ``prometheus_client``, and each hook on the
task path is one test of :data:`active` against None. When on, the hot path only counts in
memory (a counter, a histogram bucket); what needs the database — executions and tasks by
status, the queue depth, the outbox backlog — is read by :class:`DatabaseCollector` when
Prometheus scrapes, through the repository's named queries.

=======================================  =====================================================
``durably_executions{status}``           workflow executions by status (scrape)
``durably_saga_executions{status}``      saga executions by status (scrape)
``durably_tasks{status}``                tasks of unfinished executions by status (scrape)
``durably_queue_depth``                  ready tasks waiting for a worker (scrape)
``durably_outbox_backlog``               saga requests not yet published (scrape)
``durably_task_duration_seconds``        histogram of attempts by ``workflow``, ``task`` and
                                         ``outcome`` (completed, failed, retry), this process
``durably_claim_duration_seconds``       histogram of a worker's claim transactions
``durably_tasks_claimed_total``          tasks this worker claimed
``durably_recoveries_total{action}``     claim_recovered, task_abandoned, execution_taken_over
``durably_saga_steps_total{saga,outcome}``  saga steps run here: finished, failed, paused
=======================================  =====================================================
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .exceptions import DurablyError
from .logs import log

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .repository import Repository
    from .state import ExecutionState
    from .store import Store

logger = logging.getLogger("durably.metrics")

# The metrics of this process, once a worker serves them: read by every hook.
active: Metrics | None = None
_lock = threading.Lock()

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class MetricsUnavailable(DurablyError):
    """Metrics need prometheus-client: pip install 'durably[metrics]'."""


class Metrics:
    """The metrics of one process, in a registry of their own, read from ``store``."""

    def __init__(self, store: Store, repo: Repository) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram
        except ImportError as exc:
            raise MetricsUnavailable() from exc
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.task_seconds = Histogram(
            "durably_task_duration_seconds",
            "Duration of task attempts run by this process",
            ["workflow", "task", "outcome"],
            buckets=BUCKETS,
            registry=reg,
        )
        self.claim_seconds = Histogram(
            "durably_claim_duration_seconds",
            "Duration of a worker's claim transaction (claim and load the tasks' inputs)",
            buckets=CLAIM_BUCKETS,
            registry=reg,
        )
        self.claimed = Counter(
            "durably_tasks_claimed", "Tasks claimed by this worker", registry=reg
        )
        self.recoveries = Counter(
            "durably_recoveries", "Lost claims and executions taken back", ["action"], registry=reg
        )
        self.saga_steps = Counter(
            "durably_saga_steps",
            "Saga steps run by this process",
            ["saga", "outcome"],
            registry=reg,
        )
        reg.register(DatabaseCollector(store, repo))
        self._server: Any = None
        self.port: int | None = None

    # -- hooks (the task path calls these only when metrics are on) ---------------------------

    def attempt_of(self, state: ExecutionState, name: str, outcome: str, now: float) -> None:
        """An attempt's outcome was written: its duration, labelled by its declared task (an
        instance of a mapped task counts as that task: one series, not one per index)."""
        task = state.tasks[name]
        workflow = getattr(state.shape, "name", None) or ""
        seconds = now - task.started_at if task.started_at is not None else 0.0
        labels = self.task_seconds.labels(workflow, task.parent or name, outcome)
        labels.observe(max(0.0, seconds))

    def claim(self, count: int, seconds: float) -> None:
        self.claim_seconds.observe(seconds)
        if count:
            self.claimed.inc(count)

    def recovered(self, action: str) -> None:
        self.recoveries.labels(action).inc()

    def saga_step(self, saga: str, outcome: str) -> None:
        self.saga_steps.labels(saga, outcome).inc()

    # -- serving ----------------------------------------------------------------------------

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on a daemon thread; return the port (``0`` picks a
        free one)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        bound = self.port = int(server.server_address[1])
        log(logger, logging.INFO, "metrics on http://%s:%d/metrics", host, bound,
            action="metrics_serving")  # fmt: skip
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class DatabaseCollector:
    """The gauges that need a query, read once per scrape (one read transaction)."""

    def __init__(self, store: Store, repo: Repository) -> None:
        self.store = store
        self.repo = repo

    def describe(self) -> list[Metric]:
        return []  # described by what collect() yields; no query at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            with self.store.read() as tx:
                executions = self.repo.execution_counts(tx)
                sagas = self.repo.saga_counts(tx)
                tasks = self.repo.active_task_counts(tx)
                depth = self.repo.queue_depth(tx)
                backlog = self.repo.outbox_backlog(tx)
        except DurablyError as exc:  # the database is down: the scrape says so, in the logs
            log(logger, logging.WARNING, "metrics scrape failed: %s", exc,
                action="metrics_scrape_failed")  # fmt: skip
            return
        for name, help_text, counts in (
            ("durably_executions", "Workflow executions by status", executions),
            ("durably_saga_executions", "Saga executions by status", sagas),
            ("durably_tasks", "Tasks of unfinished executions by status", tasks),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["status"])
            for status, count in sorted(counts.items()):
                family.add_metric([status], count)
            yield family
        yield GaugeMetricFamily("durably_queue_depth", "Ready tasks waiting for a worker", depth)
        yield GaugeMetricFamily(
            "durably_outbox_backlog", "Saga requests not yet published", backlog
        )


def start(store: Store, repo: Repository, port: int, host: str = "0.0.0.0") -> Metrics:
    """Turn metrics on for this process and serve them; the hooks start counting."""
    global active
    metrics = Metrics(store, repo)
    metrics.serve(port, host)
    with _lock:
        previous, active = active, metrics
    if previous is not None:
        previous.close()
    return metrics


def stop() -> None:
    """Stop serving and counting (the hooks are free again)."""
    global active
    with _lock:
        metrics, active = active, None
    if metrics is not None:
        metrics.close()
