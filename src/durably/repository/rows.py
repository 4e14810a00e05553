"""Rows as typed records (:mod:`durably.records`), and the ids and times the queries take."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from ..records import Claim, ExecutionRecord, StaleClaim, TaskRecord
from ..store import Row, parse_timestamp


def new_id() -> str:
    return str(uuid.uuid4())


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
        shape=row["pipeline_shape"],
        priority=row["priority"],
    )


def claims_of(rows: Sequence[Row]) -> list[Claim]:
    return [
        Claim(
            task_id=str(row["id"]),
            execution_id=str(row["pipeline_execution_id"]),
            name=row["task_name"],
            attempt=row["attempt"],
            configuration=configuration_of(row["task_configuration"]),
            wait_event=row["wait_event"],
            map_parent=row["map_parent"],
        )
        for row in rows
    ]


def configuration_of(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


def as_dicts(rows: Sequence[Row]) -> list[Mapping[str, Any]]:
    """Rows as dicts: a sqlite3.Row finds a column by name with a linear scan, which a
    record of 30 columns read from each of many rows makes the cost of a read."""
    if not rows or isinstance(rows[0], dict):
        return [row for row in rows if isinstance(row, dict)]  # PostgreSQL's are dicts
    keys = list(rows[0].keys())
    return [dict(zip(keys, cast(Iterable[Any], row), strict=True)) for row in rows]


def task_of(row: Row | Mapping[str, Any]) -> TaskRecord:
    return TaskRecord(
        id=str(row["id"]),
        name=row["task_name"],
        status=row["status"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        error=row["error_details"],
        last_error=row["last_error"],
        started_at=parse_timestamp(row["started_at"]),
        completed_at=parse_timestamp(row["completed_at"]),
        retry_at=parse_timestamp(row["retry_at"]),
        claimed_by=row["claimed_by"],
        heartbeat_at=parse_timestamp(row["heartbeat_at"]),
        compensation=row["compensation_status"],
        compensation_error=row["compensation_error"],
        recovery_attempts=row["recovery_attempts"],
        config_text=_text(row["task_configuration"]),
        wake_at=parse_timestamp(row["wake_at"]),
        wait_event=row["wait_event"],
        waited=bool(row["waited"]),
        received_text=row["received"],
        map_parent=row["map_parent"],
        map_index=row["map_index"],
        map_total=row["map_total"],
        code_version=row["code_version"],
    )


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
