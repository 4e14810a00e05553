"""Maintenance: pruning finished executions (workflow and saga) with everything they own, and
the shared state of schedules (their cursor, missed slots and last run).

A standalone mixin: it needs nothing from the other aggregates' methods, only the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..store import Row, Tx, parse_timestamp, timestamp
from .rows import stored

WORKFLOW = "workflow"
SAGA = "saga"
INBOX = "inbox"  # a participant's recorded replies (saga_inbox.py), by when they were recorded


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule as the workers last left it. ``checked_at`` is its cursor: every slot at or
    before it was handled (fired or counted as missed)."""

    workflow: str
    name: str
    cron: str
    timezone: str
    catch_up: str
    checked_at: datetime
    last_slot: datetime | None
    last_execution_id: str | None
    last_status: str | None
    missed: int


def _utc(value: object) -> datetime | None:
    # PostgreSQL hands times back in the session's time zone: the same instant, shown in UTC.
    moment = parse_timestamp(value)
    return moment.astimezone(UTC) if moment is not None else None


def _schedule_of(row: Row, last_status: str | None = None) -> ScheduleRecord:
    checked = _utc(row["checked_at"])
    assert checked is not None  # NOT NULL
    return ScheduleRecord(
        workflow=row["workflow_name"],
        name=row["name"],
        cron=row["cron"],
        timezone=row["timezone"],
        catch_up=row["catch_up"],
        checked_at=checked,
        last_slot=_utc(row["last_slot"]),
        last_execution_id=str(row["last_execution_id"]) if row["last_execution_id"] else None,
        last_status=last_status,
        missed=int(row["missed"]),
    )


class Maintenance:
    # -- retention -----------------------------------------------------------------------------

    def count_prunable(self, tx: Tx, kind: str, status: str, cutoff: float) -> int:
        query = "count_prunable_executions" if kind == WORKFLOW else "count_prunable_sagas"
        row = tx.fetch_one(query, {"status": status, "cutoff": timestamp(cutoff)})
        return int(row["n"]) if row is not None else 0

    def prune_batch(self, tx: Tx, kind: str, status: str, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest executions of ``kind`` and ``status`` finished
        before ``cutoff``, with their tasks, outputs, attempts, events (workflows), replies
        (sagas) and the contexts nothing else references; return how many. Of kind
        :data:`INBOX`: the replies recorded before ``cutoff`` (``status`` unused)."""
        if kind == INBOX:
            return tx.execute("prune_saga_inbox", {"cutoff": timestamp(cutoff), "limit": limit})
        params = {"status": status, "cutoff": timestamp(cutoff), "limit": limit}
        if kind == WORKFLOW:
            rows = tx.fetch_all("prunable_executions", params)
        else:
            rows = tx.fetch_all("prunable_sagas", params)
        if not rows:
            return 0
        ids = json.dumps([str(row["id"]) for row in rows])
        contexts: set[str] = set()
        for row in rows:
            contexts.add(str(row["context_id"]))
            if kind == WORKFLOW and row["final_context_id"]:
                contexts.add(str(row["final_context_id"]))
        if kind == WORKFLOW:
            outputs = tx.fetch_all("pruned_output_contexts", {"ids": ids})
            contexts.update(str(row["context_id"]) for row in outputs)
            # Children first: nothing depends on the foreign-key pragma or cascades.
            for query in ("prune_attempts", "prune_outputs", "prune_tasks"):
                tx.execute(query, {"ids": ids})
            deleted = tx.execute("prune_executions", {"ids": ids})
        else:
            tx.execute("prune_saga_replies", {"ids": ids})
            deleted = tx.execute("prune_sagas", {"ids": ids})
        self.prune_contexts(tx, contexts)
        return deleted

    def prune_contexts(self, tx: Tx, ids: Iterable[str]) -> None:
        """Delete the context rows of ``ids`` that no execution, output or saga references
        any more. No row rests on such a row: a delta rests only on a row its own execution
        keeps, and a fork's only on rows the fork links (``Contexts.share_outputs``)."""
        tx.execute("prune_contexts", {"ids": json.dumps(sorted(ids))})

    # -- schedules -----------------------------------------------------------------------------

    def schedule(self, tx: Tx, workflow: str, name: str) -> ScheduleRecord | None:
        row = tx.fetch_one("get_schedule", {"workflow": workflow, "name": name})
        return _schedule_of(row) if row is not None else None

    def ensure_schedule(
        self, tx: Tx, workflow: str, name: str, definition: tuple[str, str, str], now: float
    ) -> None:
        """Insert the schedule's row if no worker did yet; ``definition`` is (cron, timezone,
        catch_up)."""
        cron, timezone, catch_up = definition
        tx.execute(
            "ensure_schedule",
            {
                "workflow": workflow,
                "name": name,
                "cron": cron,
                "timezone": timezone,
                "catch_up": catch_up,
                "now": timestamp(now),
            },
        )

    def advance_schedule(
        self,
        tx: Tx,
        record: ScheduleRecord,
        definition: tuple[str, str, str],
        checked_at: datetime,
        missed: int,
        now: float,
    ) -> bool:
        """Move the cursor from where ``record`` saw it; False when another worker moved it
        first (then this one must not fire anything)."""
        cron, timezone, catch_up = definition
        params = {
            "workflow": record.workflow,
            "name": record.name,
            "previous_at": stored(record.checked_at),
            "checked_at": stored(checked_at),
            "missed": missed,
            "cron": cron,
            "timezone": timezone,
            "catch_up": catch_up,
            "now": timestamp(now),
        }
        return bool(tx.execute("advance_schedule", params))

    def record_schedule_run(
        self, tx: Tx, workflow: str, name: str, slot: datetime, execution_id: str, now: float
    ) -> None:
        params = {
            "workflow": workflow,
            "name": name,
            "slot_at": stored(slot),
            "execution_id": execution_id,
            "now": timestamp(now),
        }
        tx.execute("record_schedule_run", params)

    def schedules(self, tx: Tx) -> list[ScheduleRecord]:
        return [_schedule_of(row, row["last_status"]) for row in tx.fetch_all("list_schedules")]
