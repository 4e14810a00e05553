"""Rows as typed records (:mod:`durably.records`), and the ids and times the queries take."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from ..records import Claim, ExecutionRecord, StaleClaim, TaskRecord
from ..store import Row, parse_timestamp


def new_id() -> str:
    """A time-ordered (version 7) UUID as text, for the rows an execution writes per task
    (tasks, outputs, attempts): consecutive ids sort together, so each insert lands on the
    same last page of a primary-key or foreign-key index instead of a random one. On SQLite
    in WAL mode every page a commit touches is written out whole, so random keys cost a page
    per index per task. Made from bytes rather than ``uuid.UUID``, which validates an object
    per id."""
    return _uuid_text((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10), 0x70)


def random_id() -> str:
    """A random (version 4) UUID as text, for execution ids: people abbreviate those to
    their first 8 characters, which a time-ordered id would share with every execution
    started in the same minute."""
    return _uuid_text(os.urandom(16), 0x40)


def _uuid_text(raw: bytes, version: int) -> str:
    """16 bytes as UUID text, with ``version`` (its high nibble) and the RFC 4122 variant."""
    b = bytearray(raw)
    b[6] = b[6] & 0x0F | version
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def execution_of(row: Row) -> ExecutionRecord:
    return ExecutionRecord(
        id=str(row["id"]),
        workflow=row["pipeline_name"],
        version=row["pipeline_version"],
        status=row["status"],
        context_id=str(row["context_id"]),
        final_context_id=str(row["final_context_id"]) if row["final_context_id"] else None,
        claimed_by=row["claimed_by"],
        heartbeat_at=parse_timestamp(row["heartbeat_at"]),
        error=row["error_details"],
        key=row["idempotency_key"],
        parent_id=str(row["parent_execution_id"]) if row["parent_execution_id"] else None,
        created_at=parse_timestamp(row["created_at"]),
        completed_at=parse_timestamp(row["completed_at"]),
        recovery_attempts=row["recovery_attempts"],
        parent_task=row["parent_task"],
        trace_context=row["trace_context"],
        shape=row["pipeline_shape"],
        priority=row["priority"],
        configuration_id=row["configuration_id"],
    )


def claims_of(rows: Sequence[Row]) -> list[Claim]:
    """A claim's rows (each a whole task row, and the limited claim's bookings after it)."""
    return [
        Claim(
            task_id=str(row["id"]),
            execution_id=str(row["pipeline_execution_id"]),
            name=row["task_name"],
            attempt=row["attempt"],
            configuration=configuration_of(row["task_configuration"]),
            wait_event=row["wait_event"],
            map_parent=row["map_parent"],
            record=record,
            pipeline_key=row["pipeline_key"],
            execution=_claimed_execution(row),
        )
        for row, record in zip(rows, tasks_of(rows), strict=True)
    ]


def _claimed_execution(row: Row) -> dict[str, Any] | None:
    """The execution row a claim read with its task (PostgreSQL: JSON, its times as text),
    with the columns ``get_executions`` adds; None when the claim did not read it."""
    # keys(): ``in`` on a sqlite3.Row looks among its values.
    if "execution" not in row.keys():  # noqa: SIM118
        return None
    execution = row["execution"]
    found: dict[str, Any] | None = (
        json.loads(execution) if isinstance(execution, str) else execution
    )
    return found


def configuration_of(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


# TaskRecord's fields in order, by the column each is read from.
_TASK_COLUMNS = (
    "id", "task_name", "status", "attempt", "max_attempts", "error_details", "last_error",
    "started_at", "completed_at", "retry_at", "claimed_by", "heartbeat_at",
    "compensation_status", "compensation_error", "recovery_attempts", "task_configuration",
    "wake_at", "wait_event", "waited", "received", "map_parent", "map_index", "map_total",
    "logs", "code_version",
)  # fmt: skip


def tasks_of(rows: Sequence[Row]) -> list[TaskRecord]:
    """Task rows as records. Columns are picked by position, found once per result: a result
    reads every task row of an execution, and a sqlite3.Row finds a name by a linear scan."""
    if not rows:
        return []
    first = rows[0]
    columns: tuple[Any, ...] = _TASK_COLUMNS  # PostgreSQL's rows are dicts
    if not isinstance(first, dict):
        keys = list(first.keys())
        columns = tuple(keys.index(column) for column in _TASK_COLUMNS)
    pick = itemgetter(*columns)
    return [_task(pick(row)) for row in rows]


def _task(values: tuple[Any, ...]) -> TaskRecord:
    (id_, name, status, attempt, max_attempts, error, last_error, started, completed, retry,
     claimed_by, heartbeat, compensation, compensation_error, recoveries, configuration,
     wake, wait_event, waited, received, map_parent, map_index, map_total,
     logs, code_version) = values  # fmt: skip
    return TaskRecord(
        str(id_), name, status, attempt, max_attempts, error, last_error,
        parse_timestamp(started) if started is not None else None,
        parse_timestamp(completed) if completed is not None else None,
        parse_timestamp(retry) if retry is not None else None,
        claimed_by,
        parse_timestamp(heartbeat) if heartbeat is not None else None,
        compensation, compensation_error, recoveries, _text(configuration),
        parse_timestamp(wake) if wake is not None else None,
        wait_event, bool(waited), received, map_parent, map_index, map_total, logs,
        code_version,
    )  # fmt: skip


def stale_of(row: Row) -> StaleClaim:
    return StaleClaim(
        task_id=str(row["id"]),
        execution_id=str(row["pipeline_execution_id"]),
        name=row["task_name"],
        claimed_by=row["claimed_by"],
        attempt=row["attempt"],
        recovery_attempts=row["recovery_attempts"],
        started_at=parse_timestamp(row["started_at"]),
    )


def stored(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment is not None else None


def _text(value: Any) -> str | None:
    """JSON as text (SQLite gives text; older PostgreSQL rows could give a parsed value)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)
