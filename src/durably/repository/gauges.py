"""What metrics read at scrape time: counts by status, the queue depth, the outbox backlog.
Never on a task's path: only a Prometheus scrape runs these."""

from __future__ import annotations

from ..store import Tx


class Gauges:
    def execution_counts(self, tx: Tx) -> dict[str, int]:
        """Workflow executions by status."""
        return _by_status(tx, "count_executions_by_status")

    def saga_counts(self, tx: Tx) -> dict[str, int]:
        """Saga executions by status."""
        return _by_status(tx, "count_sagas_by_status")

    def active_task_counts(self, tx: Tx) -> dict[str, int]:
        """The tasks of unfinished executions, by status."""
        return _by_status(tx, "count_active_tasks_by_status")

    def queue_depth(self, tx: Tx) -> int:
        """Ready tasks, waiting for a worker to claim them."""
        return _count(tx, "count_ready_tasks")

    def outbox_backlog(self, tx: Tx) -> int:
        """Saga requests queued in the outbox, not yet published."""
        return _count(tx, "count_outbox")


def _by_status(tx: Tx, query: str) -> dict[str, int]:
    return {str(row["status"]): int(row["n"]) for row in tx.fetch_all(query, {})}


def _count(tx: Tx, query: str) -> int:
    rows = tx.fetch_all(query, {})
    return int(rows[0]["n"]) if rows else 0
