"""Mapped tasks: expanding one into its instances (one bulk insert), freeing a slot under
``max_parallel``, counting open instances in one query, and finishing the mapped task."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from ..state import TaskState
from ..statuses import NOT_STARTED, READY, RUNNING
from ..store import Tx, timestamp
from .contexts import labelled
from .rows import new_id
from .waits import Waits


class Maps(Waits):
    def expand_task(self, tx: Tx, task_id: str, total: int, worker: str, now: float) -> bool:
        params = {"id": task_id, "total": total, "worker": worker, "now": timestamp(now)}
        return bool(tx.execute("expand_task", params))

    def insert_instances(
        self, tx: Tx, execution_id: str, parent: str, template: dict[str, Any], count: int,
        first: int, claimed_by: str | None, now: float,
    ) -> list[TaskState]:  # fmt: skip
        """Insert ``count`` instances of ``parent``: the ``first`` ones running and claimed
        by ``claimed_by`` (in-process) or ready (workers), the rest not started."""
        stamp = timestamp(now)
        rows = []
        for index in range(count):
            status = (RUNNING if claimed_by else READY) if index < first else NOT_STARTED
            running = status == RUNNING
            rows.append(
                {
                    **template,
                    "id": new_id(),
                    "execution_id": execution_id,
                    "name": f"{parent}[{index}]",
                    "status": status,
                    "attempt": 1 if running else 0,
                    "claimed_by": claimed_by if running else None,
                    "heartbeat_at": stamp if running else None,
                    "started_at": stamp if running else None,
                    "parent": parent,
                    "index": index,
                    "code_version": template["code_version"] if running else None,
                    "now": stamp,
                }
            )
        if rows:
            tx.execute_many("insert_instance", rows)
        return [
            TaskState(
                r["id"],
                r["name"],
                r["status"],
                r["attempt"],
                claimed_by=r["claimed_by"],
                started_at=now if r["started_at"] else None,
                parent=parent,
                index=r["index"],
            )
            for r in rows
        ]

    def promote_instance(
        self, tx: Tx, execution_id: str, parent: str, now: float
    ) -> tuple[str, str, int] | None:
        params = {"id": execution_id, "parent": parent, "now": timestamp(now)}
        row = tx.fetch_one("promote_instance", params)
        return (str(row["id"]), row["task_name"], row["map_index"]) if row else None

    def count_instance_done(
        self, tx: Tx, parent_id: str, failed: bool, now: float
    ) -> tuple[int, int, int]:
        """Count one finished instance on its mapped task: ``(total, done, failed)`` after."""
        params = {"id": parent_id, "failed": 1 if failed else 0, "now": timestamp(now)}
        row = tx.fetch_one("count_instance_done", params)
        if row is None:
            return 0, 0, 0
        return int(row["map_total"] or 0), int(row["map_done"]), int(row["map_failed"])

    def instance_outputs(self, tx: Tx, execution_id: str, parent: str) -> Sequence[str]:
        """The outputs of the mapped task's instances, by index."""
        rows = tx.fetch_all("instance_outputs", {"id": execution_id, "parent": parent})
        return [row.text for _, row in sorted(labelled(rows, "map_index"), key=itemgetter(0))]

    def finish_mapped_task(
        self, tx: Tx, execution_id: str, task_id: str, name: str, status: str,
        error: str | None, value: str | None, now: float,
        dependencies: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        stamp = timestamp(now)
        params = {"id": task_id, "status": status, "error": error, "now": stamp}
        tx.execute("finish_mapped_task", params)
        if value is not None:
            self.save_output(tx, execution_id, task_id, name, value, now, dependencies)

    def reset_instance(self, tx: Tx, task_id: str, now: float) -> None:
        """``retry``: a failed instance runs again (its last attempt kept in the history)."""
        params = {"id": task_id, "now": timestamp(now)}
        tx.execute("archive_attempt", {**params, "attempt_id": new_id()})
        tx.execute("reset_instance", params)

    def reopen_mapped_task(self, tx: Tx, task_id: str, reopened: int, now: float) -> None:
        params = {"id": task_id, "reopened": reopened, "now": timestamp(now)}
        tx.execute("reopen_mapped_task", params)

    def delete_instances(self, tx: Tx, execution_id: str, parent: str) -> list[str]:
        """Delete a mapped task's instances; return the context rows their outputs linked."""
        params = {"id": execution_id, "parent": parent}
        outputs = tx.fetch_all("delete_instance_outputs", params)
        tx.execute("delete_instances", params)
        return [str(row["context_id"]) for row in outputs]
