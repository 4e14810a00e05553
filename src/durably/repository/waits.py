"""Waits and events: a task starting to wait, the mailbox of events an execution received,
and the delivery of an event to the task waiting for it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..store import Tx, parse_timestamp, timestamp
from . import configurations
from .tasks import Tasks


@dataclass(frozen=True, slots=True)
class Waiter:
    """A task waiting for an event."""

    task_id: str
    name: str
    config_text: str | None
    received_text: str | None


@dataclass(frozen=True, slots=True)
class EventRecord:
    name: str
    key: str | None
    consumed_by: str | None
    created_at: datetime | None
    consumed_at: datetime | None


class Waits(Tasks):
    def wait_task(
        self, tx: Tx, task_id: str, wake_at: float | None, event: str | None, worker: str,
        now: float,
    ) -> bool:  # fmt: skip
        """The task waits (for ``event``, or until ``wake_at``): from unstarted, or from
        ``worker``'s claim, whose attempt is then not counted."""
        params = {
            "id": task_id,
            "wake_at": timestamp(wake_at) if wake_at is not None else None,
            "event": event,
            "worker": worker,
            "now": timestamp(now),
        }
        return bool(tx.execute("wait_task", params))

    def take_event(
        self, tx: Tx, execution_id: str, name: str, task_id: str, now: float
    ) -> str | None:
        """Consume the oldest pending event of that name for this task; its payload (codec
        text), or None when the mailbox holds none."""
        params = {"id": execution_id, "name": name, "task_id": task_id, "now": timestamp(now)}
        row = tx.fetch_one("take_event", params)
        return row["payload"] if row is not None else None

    def set_received(self, tx: Tx, task_id: str, received: str | None, now: float) -> None:
        params = {"id": task_id, "received": received, "now": timestamp(now)}
        tx.execute("set_received", params)

    def mark_waited(self, tx: Tx, task_id: str, now: float) -> None:
        tx.execute("mark_waited", {"id": task_id, "now": timestamp(now)})

    def waiting_for_event(self, tx: Tx, execution_id: str, name: str) -> Waiter | None:
        row = tx.fetch_one("waiting_for_event", {"id": execution_id, "name": name})
        if row is None:
            return None
        tasks = configurations.parsed(row["configurations"])
        own = row["task_configuration"]
        config = configurations.resolved(own, tasks, row["task_name"], row["map_parent"])
        return Waiter(str(row["id"]), row["task_name"], config, row["received"])

    def insert_event(
        self, tx: Tx, execution_id: str, name: str, key: str | None, payload: str, now: float
    ) -> int | None:
        """Store an event, not consumed yet; its sequence number, or None when ``key`` was
        seen already for this execution (nothing is stored then)."""
        params = {
            "id": execution_id,
            "name": name,
            "key": key,
            "payload": payload,
            "now": timestamp(now),
        }
        row = tx.fetch_one("insert_event", params)
        return int(row["seq"]) if row is not None else None

    def consume_event(self, tx: Tx, seq: int, task_id: str, now: float) -> None:
        tx.execute("consume_event", {"seq": seq, "task_id": task_id, "now": timestamp(now)})

    def deliver_event(self, tx: Tx, task_id: str, received: str, now: float) -> bool:
        """The waiting task received its event: it is ready to run."""
        params = {"id": task_id, "received": received, "now": timestamp(now)}
        return bool(tx.execute("deliver_event", params))

    def next_wake(self, tx: Tx) -> float | None:
        row = tx.fetch_one("next_wake", {})
        moment = parse_timestamp(row["wake_at"]) if row is not None else None
        return moment.timestamp() if moment is not None else None

    def events(self, tx: Tx, execution_id: str) -> list[EventRecord]:
        return [
            EventRecord(
                row["name"],
                row["idempotency_key"],
                str(row["consumed_by"]) if row["consumed_by"] else None,
                parse_timestamp(row["created_at"]),
                parse_timestamp(row["consumed_at"]),
            )
            for row in tx.fetch_all("get_events", {"id": execution_id})
        ]
