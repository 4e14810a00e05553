"""The workflow repository: the one module that knows the query names (``sql/queries.sql``).

Everything above it (runtime, runner, worker, engine, CLI views) speaks in domain terms —
create an execution, start a task, record an attempt — and gets typed records back
(:mod:`durably.records`). Every method runs inside the caller's transaction, so the caller
decides what commits together. Times come in as epoch seconds from the engine's clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .plan import TaskState
from .records import (
    AttemptRecord,
    Claim,
    ExecutionRecord,
    Snapshot,
    StaleClaim,
    TaskRecord,
)
from .statuses import ABANDONED, COMPLETED, NOT_STARTED, READY
from .store import Row, Tx, parse_timestamp, timestamp
from .workflow import Workflow


def new_id() -> str:
    return str(uuid.uuid4())


def _execution(row: Row) -> ExecutionRecord:
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
    )


def _configuration(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    parsed = json.loads(value) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


def _task(row: Row) -> TaskRecord:
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
        configuration=_configuration(row["task_configuration"]),
    )


def _stale(row: Row) -> StaleClaim:
    return StaleClaim(
        task_id=str(row["id"]),
        execution_id=str(row["pipeline_execution_id"]),
        name=row["task_name"],
        claimed_by=row["claimed_by"],
        attempt=row["attempt"],
        recovery_attempts=row["recovery_attempts"],
    )


class Repository:
    """Named queries in, typed records out. Holds one cache: each workflow version's task-row
    template, built once (it is the same for every execution)."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str], list[dict[str, Any]]] = {}

    # -- executions --------------------------------------------------------------------------

    def template(self, wf: Workflow) -> list[dict[str, Any]]:
        key = (wf.name, wf.version)
        rows = self._templates.get(key)
        if rows is None:
            rows = [
                {
                    "name": task.name,
                    "position": task.position,
                    "max_attempts": task.retry.max_attempts,
                    "trigger_rules": json.dumps(task.trigger.to_json()),
                    "configuration": json.dumps(
                        {
                            "dependencies": list(task.dependencies),
                            "retry": task.retry.to_json(),
                            "timeout": task.timeout,
                            "merge": task.merge if isinstance(task.merge, str) else "callable",
                            "compensate": task.compensate is not None,
                        }
                    ),
                }
                for task in wf.tasks.values()
            ]
            self._templates[key] = rows
        return rows

    def create_execution(
        self,
        tx: Tx,
        wf: Workflow,
        now: float,
        *,
        initial: str | None,
        claimed_by: str | None,
        key: str | None = None,
        context_id: str | None = None,
        parent_id: str | None = None,
        reused: Mapping[str, TaskRecord] | None = None,
        patches: Mapping[str, str] | None = None,
    ) -> tuple[str, list[TaskState]] | None:
        """Insert an execution and its task rows; return its id and its tasks' states, or
        None when an execution of that workflow with that key exists already (then the
        caller must roll back: only the initial context was inserted).

        ``reused`` tasks (a fork's) start completed; ``patches`` (codec text) are stored in
        their task's configuration."""
        stamp = timestamp(now)
        execution_id = new_id()
        if context_id is None:
            context_id = self.insert_context(tx, initial or "{}", now)
        inserted = tx.execute(
            "insert_execution",
            {
                "id": execution_id,
                "name": wf.name,
                "version": wf.version,
                "status": "running",
                "context_id": context_id,
                "claimed_by": claimed_by,
                "parent_id": parent_id,
                "key": key,
                "now": stamp,
            },
        )
        if not inserted:
            return None
        reused = reused or {}
        rows = []
        for template in self.template(wf):
            name = template["name"]
            old = reused.get(name)
            configuration = template["configuration"]
            if patches and name in patches:
                configuration = json.dumps(
                    {**json.loads(configuration), "context_patch": patches[name]}
                )
            rows.append(
                {
                    **template,
                    "id": new_id(),
                    "execution_id": execution_id,
                    "status": COMPLETED
                    if old
                    else (READY if not wf.tasks[name].dependencies else NOT_STARTED),
                    "attempt": old.attempt if old else 0,
                    "claimed_by": None,
                    "heartbeat_at": None,
                    "started_at": _stored(old.started_at) if old else None,
                    "completed_at": _stored(old.completed_at) if old else None,
                    "configuration": configuration,
                    "now": stamp,
                }
            )
        tx.execute_many("insert_task", rows)
        states = [TaskState(r["id"], r["name"], r["status"], r["attempt"]) for r in rows]
        return execution_id, states

    def execution(self, tx: Tx, execution_id: str) -> ExecutionRecord | None:
        row = tx.fetch_one("get_execution", {"id": execution_id})
        return _execution(row) if row is not None else None

    def execution_by_key(self, tx: Tx, workflow: str, key: str) -> ExecutionRecord | None:
        row = tx.fetch_one("find_execution_by_key", {"name": workflow, "key": key})
        return _execution(row) if row is not None else None

    def list_executions(
        self, tx: Tx, status: str | None, workflow: str | None, limit: int
    ) -> list[ExecutionRecord]:
        rows = tx.fetch_all(
            "list_executions", {"status": status, "workflow": workflow, "limit": limit}
        )
        return [_execution(row) for row in rows]

    def lock_execution(self, tx: Tx, execution_id: str) -> None:
        tx.fetch_one("lock_execution", {"id": execution_id})

    def claim_execution(
        self, tx: Tx, execution_id: str, worker: str, previous: str | None, now: float
    ) -> bool:
        """Compare-and-swap the execution's driver from ``previous`` (None: nobody) to us."""
        return bool(
            tx.execute(
                "claim_execution",
                {
                    "id": execution_id,
                    "worker": worker,
                    "previous": previous or "",
                    "recovered": 1 if previous else 0,
                    "now": timestamp(now),
                },
            )
        )

    def release_execution(self, tx: Tx, execution_id: str, worker: str, now: float) -> None:
        params = {"id": execution_id, "worker": worker, "now": timestamp(now)}
        tx.execute("release_execution", params)

    def hand_to_workers(self, tx: Tx, execution_id: str, previous: str, now: float) -> bool:
        params = {"id": execution_id, "previous": previous, "now": timestamp(now)}
        return bool(tx.execute("hand_to_workers", params))

    def finish_execution(
        self, tx: Tx, execution_id: str, status: str, final: str, error: str | None, now: float
    ) -> None:
        context_id = self.insert_context(tx, final, now)
        tx.execute(
            "finish_execution",
            {
                "id": execution_id,
                "status": status,
                "context_id": context_id,
                "error": error,
                "now": timestamp(now),
            },
        )

    def cancel_execution(self, tx: Tx, execution_id: str, now: float) -> None:
        params = {"id": execution_id, "now": timestamp(now), "error": "cancelled"}
        tx.execute("cancel_execution", params)
        tx.execute("cancel_tasks", params)

    def reopen_execution(self, tx: Tx, execution_id: str, now: float) -> None:
        params = {"id": execution_id, "status": "running", "now": timestamp(now)}
        tx.execute("reopen_execution", params)

    def stale_executions(self, tx: Tx, cutoff: float, worker: str) -> list[tuple[str, str]]:
        rows = tx.fetch_all("stale_executions", {"cutoff": timestamp(cutoff), "worker": worker})
        return [(str(row["id"]), row["claimed_by"]) for row in rows]

    def orphaned_executions(self, tx: Tx, cutoff: float) -> list[str]:
        rows = tx.fetch_all("orphaned_executions", {"cutoff": timestamp(cutoff)})
        return [str(row["id"]) for row in rows]

    def unfinished_tasks(self, tx: Tx, execution_id: str) -> int:
        row = tx.fetch_one("count_unfinished", {"id": execution_id})
        return int(row["unfinished"]) if row is not None else 0

    def notify_work(self, tx: Tx) -> None:
        tx.execute("notify_work", {})

    # -- contexts ----------------------------------------------------------------------------

    def insert_context(self, tx: Tx, value: str, now: float) -> str:
        context_id = new_id()
        tx.execute("insert_context", {"id": context_id, "value": value, "now": timestamp(now)})
        return context_id

    def context(self, tx: Tx, context_id: str) -> str | None:
        row = tx.fetch_one("get_context", {"id": context_id})
        return row["value"] if row is not None else None

    def outputs(
        self, tx: Tx, execution_id: str, names: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Saved outputs (codec text) by task name: all of them, or only ``names``."""
        if names is None:
            rows = tx.fetch_all("get_outputs", {"id": execution_id})
        elif not names:
            return {}
        else:
            params = {"id": execution_id, "names": json.dumps(list(names))}
            rows = tx.fetch_all("get_named_outputs", params)
        return {row["task_name"]: row["value"] for row in rows}

    def output_context_ids(self, tx: Tx, execution_id: str) -> dict[str, str]:
        rows = tx.fetch_all("get_output_ids", {"id": execution_id})
        return {row["task_name"]: str(row["context_id"]) for row in rows}

    def task_output(self, tx: Tx, execution_id: str, name: str) -> str | None:
        row = tx.fetch_one("get_task_output", {"id": execution_id, "name": name})
        return row["value"] if row is not None else None

    def link_output(
        self, tx: Tx, execution_id: str, task_id: str, name: str, context_id: str, now: float
    ) -> None:
        tx.execute(
            "save_output",
            {
                "id": new_id(),
                "task_id": task_id,
                "execution_id": execution_id,
                "name": name,
                "context_id": context_id,
                "now": timestamp(now),
            },
        )

    def delete_output(self, tx: Tx, execution_id: str, name: str) -> None:
        tx.execute("delete_output", {"id": execution_id, "name": name})

    # -- tasks -------------------------------------------------------------------------------

    def tasks(
        self, tx: Tx, execution_id: str, names: Sequence[str] | None = None
    ) -> list[TaskRecord]:
        """The execution's tasks in declaration order, or only those named."""
        if names is None:
            rows = tx.fetch_all("get_tasks", {"id": execution_id})
        else:
            params = {"id": execution_id, "names": json.dumps(list(names))}
            rows = tx.fetch_all("get_task_states", params)
        return [_task(row) for row in rows]

    def start_task(self, tx: Tx, task_id: str, worker: str, now: float) -> bool:
        params = {"id": task_id, "worker": worker, "now": timestamp(now)}
        return bool(tx.execute("start_task", params))

    def complete_task(
        self, tx: Tx, execution_id: str, task_id: str, name: str, attempt: int,
        worker: str, value: str, now: float,
    ) -> bool:  # fmt: skip
        """Mark the attempt completed and save its output, only if ``worker`` still holds the
        claim for that attempt (a zombie's output is discarded: False)."""
        fence = {"id": task_id, "worker": worker, "attempt": attempt, "now": timestamp(now)}
        if not tx.execute("complete_task", fence):
            return False
        self._attempt(tx, execution_id, task_id, name, attempt, COMPLETED, worker, None, now)
        context_id = self.insert_context(tx, value, now)
        self.link_output(tx, execution_id, task_id, name, context_id, now)
        return True

    def fail_task(
        self, tx: Tx, execution_id: str, task_id: str, name: str, attempt: int,
        worker: str, error: str, now: float, retry_at: float | None = None,
    ) -> bool:  # fmt: skip
        """The attempt failed: the task fails, or (``retry_at``) waits for its next attempt.
        Fenced on the claim like :meth:`complete_task`."""
        fence = {"id": task_id, "worker": worker, "attempt": attempt, "now": timestamp(now)}
        if retry_at is None:
            changed = tx.execute("fail_task", {**fence, "error": error})
        else:
            params = {**fence, "error": error, "retry_at": timestamp(retry_at)}
            changed = tx.execute("retry_task_later", params)
        if changed:
            self._attempt(tx, execution_id, task_id, name, attempt, "failed", worker, error, now)
        return bool(changed)

    def _attempt(
        self, tx: Tx, execution_id: str, task_id: str, name: str, attempt: int,
        status: str, worker: str | None, error: str | None, now: float,
    ) -> None:  # fmt: skip
        tx.execute(
            "insert_attempt",
            {
                "id": new_id(),
                "task_id": task_id,
                "execution_id": execution_id,
                "name": name,
                "attempt": attempt,
                "status": status,
                "worker": worker,
                "error": error,
                "now": timestamp(now),
            },
        )

    def settle_task(
        self, tx: Tx, task_id: str, status: str, reason: str | None, now: float
    ) -> None:
        """Finish a task that did not run (skipped, upstream_failed, failed building its
        input)."""
        params = {"id": task_id, "status": status, "error": reason, "now": timestamp(now)}
        tx.execute("settle_unstarted_task", params)

    def mark_ready(self, tx: Tx, task_id: str, now: float) -> None:
        tx.execute("mark_ready", {"id": task_id, "now": timestamp(now)})

    def recover_task(self, tx: Tx, claim: StaleClaim, abandon: bool, now: float) -> bool:
        """Take a lost claim back: the task is ready again, or abandoned past the recovery
        cap; the lost attempt is kept in the history. False when the claim moved meanwhile."""
        error = (
            f"abandoned after {claim.recovery_attempts + 1} recoveries of lost claims"
            if abandon
            else None
        )
        changed = tx.execute(
            "recover_task",
            {
                "id": claim.task_id,
                "previous": claim.claimed_by,
                "status": ABANDONED if abandon else READY,
                "error": error,
                "now": timestamp(now),
            },
        )
        if changed:
            lost = f"claim of {claim.claimed_by} lost (no heartbeat within the lease)"
            self._attempt(
                tx, claim.execution_id, claim.task_id, claim.name, claim.attempt, "lost",
                claim.claimed_by, lost, now,
            )  # fmt: skip
        return bool(changed)

    def set_compensation(
        self, tx: Tx, task_id: str, status: str, error: str | None, now: float
    ) -> None:
        params = {"id": task_id, "status": status, "error": error, "now": timestamp(now)}
        tx.execute("set_compensation", params)

    def reset_task(self, tx: Tx, task_id: str, now: float) -> None:
        tx.execute("reset_task", {"id": task_id, "now": timestamp(now)})

    def claim_tasks(
        self, tx: Tx, worker: str, versions: Iterable[tuple[str, str]], limit: int, now: float
    ) -> list[Claim]:
        names = json.dumps([f"{name}@{version}" for name, version in versions])
        params = {"worker": worker, "now": timestamp(now), "names": names, "limit": limit}
        return [
            Claim(
                task_id=str(row["id"]),
                execution_id=str(row["pipeline_execution_id"]),
                name=row["task_name"],
                attempt=row["attempt"],
                configuration=_configuration(row["task_configuration"]),
            )
            for row in tx.fetch_all("claim_tasks", params)
        ]

    def stale_claims(self, tx: Tx, cutoff: float, worker: str) -> list[StaleClaim]:
        params = {"cutoff": timestamp(cutoff), "worker": worker}
        return [_stale(row) for row in tx.fetch_all("stale_claims", params)]

    def worker_claims(self, tx: Tx, worker: str) -> list[StaleClaim]:
        return [_stale(row) for row in tx.fetch_all("worker_claims", {"worker": worker})]

    def heartbeat(
        self, tx: Tx, worker: str, executions: Sequence[str], tasks: Sequence[str], now: float
    ) -> None:
        stamp = timestamp(now)
        if executions:
            params = {"worker": worker, "ids": json.dumps(list(executions)), "now": stamp}
            tx.execute("heartbeat_executions", params)
        if tasks:
            params = {"worker": worker, "ids": json.dumps(list(tasks)), "now": stamp}
            tx.execute("heartbeat_tasks", params)

    def heartbeat_task(self, tx: Tx, task_id: str, worker: str, now: float) -> None:
        tx.execute("heartbeat_task", {"id": task_id, "worker": worker, "now": timestamp(now)})

    # -- reading a whole execution -------------------------------------------------------------

    def attempts(self, tx: Tx, execution_id: str) -> dict[str, list[AttemptRecord]]:
        found: dict[str, list[AttemptRecord]] = {}
        for row in tx.fetch_all("get_attempts", {"id": execution_id}):
            found.setdefault(row["task_name"], []).append(
                AttemptRecord(
                    task=row["task_name"],
                    number=row["number"],
                    status=row["status"],
                    started_at=parse_timestamp(row["started_at"]),
                    finished_at=parse_timestamp(row["finished_at"]),
                    worker=row["worker"],
                    error=row["error"],
                )
            )
        return found

    def snapshot(self, tx: Tx, execution_id: str) -> Snapshot | None:
        execution = self.execution(tx, execution_id)
        if execution is None:
            return None
        final = None
        if execution.final_context_id is not None:
            final = self.context(tx, execution.final_context_id)
        return Snapshot(
            execution=execution,
            tasks=self.tasks(tx, execution_id),
            outputs=self.outputs(tx, execution_id),
            initial=self.context(tx, execution.context_id) or "{}",
            final=final,
            attempts=self.attempts(tx, execution_id),
        )


def _stored(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment is not None else None
