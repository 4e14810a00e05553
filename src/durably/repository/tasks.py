"""Tasks: their states, the fenced transitions of their attempts, claims and heartbeats,
and the attempt history."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from ..records import AttemptRecord, AttemptRef, StaleClaim, TaskRecord
from ..statuses import ABANDONED, READY, TASK_TERMINAL
from ..store import Row, Statement, Tx, parse_timestamp, timestamp
from .contexts import Contexts, PlannedCompletion
from .rows import new_id, stale_of, tasks_of


class Tasks(Contexts):
    def tasks(
        self, tx: Tx, execution_id: str, names: Sequence[str] | None = None
    ) -> list[TaskRecord]:
        """The execution's tasks in declaration order, or only those named."""
        if names is None:
            rows = tx.fetch_all("get_tasks", {"id": execution_id})
        else:
            rows = tx.fetch_all("get_task_states", _names(execution_id, names))
        return tasks_of(rows)

    def tasks_and_waiting(
        self,
        tx: Tx,
        execution_id: str,
        names: Sequence[str],
        waits: Mapping[str, Sequence[str]],
    ) -> tuple[list[TaskRecord], set[str]]:
        """The named tasks, and which of those ``waits`` maps to dependencies still have an
        unfinished one among them (looked up in the same round trip, not read): a fan-in of a
        hundred is decided by the completion of its last dependency, not read by each."""
        reads = self.task_reads(execution_id, names, waits)
        return self.tasks_read(names, waits, tx.fetch_batch(reads))

    def task_reads(
        self, execution_id: str, names: Sequence[str] | None,
        waits: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Statement]:  # fmt: skip
        """The statements of :meth:`tasks` (``names``) or :meth:`tasks_and_waiting` (with
        ``waits``), to send with others; :meth:`tasks_read` makes their rows records."""
        if names is None:
            return [("get_tasks", {"id": execution_id})]
        waiting = _waiting(names, waits)
        if not waiting:
            return [("get_task_states", _names(execution_id, names))]
        # The last declared first: tasks are claimed in declaration order, so the last is the
        # likeliest to be unfinished (the probe stops at the first found).
        pairs = [[name, list(reversed((waits or {})[name]))] for name in waiting]
        params = {"waits": json.dumps(pairs), "terminal": json.dumps(sorted(TASK_TERMINAL))}
        return [("get_task_states_waiting", {**_names(execution_id, names), **params})]

    def tasks_read(
        self, names: Sequence[str] | None, waits: Mapping[str, Sequence[str]] | None,
        rows: Sequence[list[Row]],
    ) -> tuple[list[TaskRecord], set[str]]:  # fmt: skip
        """The records :meth:`task_reads` read, and the tasks with an unfinished one among
        their ``waits``."""
        [found] = rows
        if not _waiting(names or (), waits):
            return tasks_of(found), set()
        return tasks_of(found), {row["task_name"] for row in found if row["unfinished"]}

    def start_task(
        self, tx: Tx, task_id: str, worker: str, now: float, code_version: str | None = None
    ) -> bool:
        params = {"id": task_id, "worker": worker, "now": timestamp(now)}
        return bool(tx.execute("start_task", {**params, "code_version": code_version}))

    def complete_task(
        self, tx: Tx, ref: AttemptRef, value: str, now: float,
        *, dependencies: Sequence[str] | None = None,
    ) -> bool:  # fmt: skip
        """Mark the attempt completed and save its output, only if ``ref.worker`` still holds
        the claim for that attempt (a zombie's output is discarded: False). ``dependencies``:
        the tasks whose outputs its input was made of (empty: the initial context), so that
        the output is stored as what it changed (None: stored in full)."""
        fence = _completion_fence(ref, now)
        if tx.combined:
            return self.complete_with_output(tx, ref, fence, value, dependencies)
        if not tx.execute("complete_task", {**fence, "id": ref.task_id}):
            return False
        self.save_output(tx, ref.execution_id, ref.task_id, ref.name, value, now, dependencies)
        return True

    def plan_complete(
        self, ref: AttemptRef, value: str, now: float, dependencies: Sequence[str] | None
    ) -> PlannedCompletion:
        """:meth:`complete_task`'s one statement where the store combines writes
        (``Tx.combined``), to send with others; :meth:`completion_read` reads its answer."""
        return self.plan_completion(ref, _completion_fence(ref, now), value, dependencies)

    def plan_lone_completions(self, planned: Sequence[PlannedCompletion]) -> Statement:
        """One statement for several :meth:`plan_complete` completions, each of a
        single-task execution, that also ends each execution the completion holds (its
        output is the final context): one row an item, each for :meth:`completion_read`."""
        items = [completion.statement[1] for completion in planned]
        return ("complete_lone_tasks", {"items": json.dumps(items)})

    def plan_completion_with_read(
        self, completion: PlannedCompletion, read: Statement
    ) -> Statement | None:
        """One statement for a planned completion and the read of the tasks around it
        (:meth:`task_reads`' one statement), sent before it: the read sees the same rows
        either way (its own task is not read). None for any other read."""
        name, params = read
        if name not in ("get_task_states", "get_task_states_waiting") or params is None:
            return None
        merged = {**(completion.statement[1] or {}), **params}
        del merged["id"]  # the read's execution, the completion's execution_id
        return ("complete_with_output", merged)

    def completion_with_read(self, rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
        """A :meth:`plan_completion_with_read` statement's rows: (the tasks it read, the
        completion's answer for :meth:`completion_read`)."""
        return [row for row in rows if row["id"] is not None], list(rows[:1])

    def fail_task(
        self, tx: Tx, ref: AttemptRef, error: str, now: float, retry_at: float | None = None
    ) -> bool:
        """The attempt failed: the task fails, or (``retry_at``) waits for its next attempt.
        Fenced on the claim like :meth:`complete_task`."""
        params = {**_fence(ref, now), "error": error}
        if retry_at is None:
            return bool(tx.execute("fail_task", {**params, "logs": ref.logs}))
        if not tx.execute("retry_task_later", {**params, "retry_at": timestamp(retry_at)}):
            return False
        self._attempt(tx, ref, "failed", error, now)  # superseded by the next attempt
        return True

    def _attempt(self, tx: Tx, ref: AttemptRef, status: str, error: str | None, now: float) -> None:
        started = timestamp(ref.started_at) if ref.started_at is not None else None
        tx.execute(
            "insert_attempt",
            {
                "id": new_id(),
                "task_id": ref.task_id,
                "execution_id": ref.execution_id,
                "name": ref.name,
                "attempt": ref.number,
                "status": status,
                "worker": ref.worker,
                "error": error,
                "started_at": started,
                "now": timestamp(now),
                "logs": ref.logs,
            },
        )

    def settle_task(
        self, tx: Tx, task_id: str, status: str, reason: str | None, now: float
    ) -> None:
        """Finish a task that did not run (skipped, upstream_failed, failed building its
        input)."""
        params = {"id": task_id, "status": status, "error": reason, "now": timestamp(now)}
        tx.execute("settle_unstarted_task", params)

    def mark_ready(self, tx: Tx, task_ids: Sequence[str], now: float) -> None:
        tx.send("mark_ready", {"ids": json.dumps(list(task_ids)), "now": timestamp(now)})

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
            self._attempt(tx, claim.ref(), "lost", lost, now)
        return bool(changed)

    def set_compensation(
        self, tx: Tx, task_id: str, status: str, error: str | None, now: float
    ) -> None:
        params = {"id": task_id, "status": status, "error": error, "now": timestamp(now)}
        tx.execute("set_compensation", params)

    def reset_task(self, tx: Tx, task_id: str, now: float) -> None:
        """``retry``: keep the task's last attempt in the history, then reset it."""
        params = {"id": task_id, "now": timestamp(now)}
        tx.execute("archive_attempt", {**params, "attempt_id": new_id()})
        tx.execute("reset_task", params)

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
                    logs_text=row["logs"],
                    code_version=row["code_version"],
                )
            )
        return found

    def stale_claims(self, tx: Tx, cutoff: float, worker: str) -> list[StaleClaim]:
        params = {"cutoff": timestamp(cutoff), "worker": worker}
        return [stale_of(row) for row in tx.fetch_all("stale_claims", params)]

    def worker_claims(self, tx: Tx, worker: str) -> list[StaleClaim]:
        return [stale_of(row) for row in tx.fetch_all("worker_claims", {"worker": worker})]

    def heartbeat(
        self, tx: Tx, worker: str, executions: Sequence[str], tasks: Sequence[str], now: float
    ) -> None:
        """Refresh the claims of the held executions, their running tasks, and the tasks
        held one by one (all claimed by ``worker``). Task rows first: an in-process run's
        last completion updates its task row and then its execution's, and the opposite
        order here deadlocked against it on PostgreSQL."""
        stamp = timestamp(now)
        held = json.dumps(list(executions))
        if executions or tasks:
            params = {"worker": worker, "ids": json.dumps(list(tasks)), "executions": held}
            tx.execute("heartbeat_tasks", {**params, "now": stamp})
        if executions:
            params = {"worker": worker, "ids": held, "now": stamp}
            tx.execute("heartbeat_executions", params)

    def heartbeat_task(self, tx: Tx, task_id: str, worker: str, now: float) -> None:
        tx.execute("heartbeat_task", {"id": task_id, "worker": worker, "now": timestamp(now)})


def _fence(ref: AttemptRef, now: float) -> dict[str, object]:
    return {"id": ref.task_id, "worker": ref.worker, "attempt": ref.number, "now": timestamp(now)}


def _completion_fence(ref: AttemptRef, now: float) -> dict[str, object]:
    return {"worker": ref.worker, "attempt": ref.number, "now": timestamp(now), "logs": ref.logs}


def _waiting(names: Sequence[str], waits: Mapping[str, Sequence[str]] | None) -> list[str]:
    return [name for name in waits if name in names] if waits else []


def _names(execution_id: str, names: Sequence[str]) -> dict[str, object]:
    return {"id": execution_id, "names": json.dumps(list(names))}
