"""Executions: creating one with its task rows, claiming and releasing it, finishing,
cancelling and reopening it, the sweeper's lists, and reading a whole execution."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .. import codec, versions
from ..flow import execution_key, is_limited, task_key
from ..listing import ListFilter
from ..records import ChildRecord, ExecutionRecord, Snapshot, TaskRecord
from ..state import TaskState
from ..statuses import COMPLETED, NOT_STARTED, READY
from ..store import Row, Tx, timestamp
from ..workflow import Workflow
from . import configurations
from .configurations import Configurations, StoredConfigurations
from .deltas import SavedRow
from .listing import Listing
from .maps import Maps
from .rows import execution_of, new_id, random_id, stored
from .saved import INITIAL

# What start_execution reads of each task row (the rest is the execution's, or constant).
_START_TASK_FIELDS = (
    "id", "name", "position", "status", "attempt", "max_attempts", "configuration",
    "started_at", "completed_at", "concurrency_key", "rate_key", "flow_limited",
    "pipeline_key",
)  # fmt: skip


class Executions(StoredConfigurations, Maps, Listing):
    def __init__(self) -> None:
        super().__init__()
        self._templates: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._workflow_configurations: dict[tuple[str, str], Configurations] = {}

    def workflow_configurations(self, wf: Workflow) -> Configurations:
        """The definition's task configurations, built once per name and version."""
        key = (wf.name, wf.version)
        found = self._workflow_configurations.get(key)
        if found is None:
            found = self._workflow_configurations[key] = configurations.of_workflow(wf)
        return found

    def template(self, wf: Workflow) -> list[dict[str, Any]]:
        key = (wf.name, wf.version)
        rows = self._templates.get(key)
        if rows is None:
            rows = [
                {
                    "name": task.name,
                    "position": task.position,
                    "max_attempts": task.retry.max_attempts,
                    "concurrency_key": task_key(wf.name, task.name)
                    if task.concurrency is not None
                    else None,
                    "rate_key": task.rate_limit.name if task.rate_limit is not None else None,
                    "code_version": wf.version,  # for instances an in-process run starts
                    "flow_limited": 1 if is_limited(wf) else 0,
                    "pipeline_key": versions.key(wf.name, wf.shape_version),
                    "configuration": None,  # the row's own part (configurations.py)
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
        parent_task: str | None = None,
        reused: Mapping[str, TaskRecord] | None = None,
        patches: Mapping[str, str] | None = None,
        priority: int = 0,
        notify: bool = False,
    ) -> tuple[str, list[TaskState]] | None:
        """Insert an execution and its task rows; return its id and its tasks' states, or
        None when an execution of that workflow with that key exists already (then the
        caller must roll back: only the initial context was inserted).

        ``reused`` tasks (a fork's) start completed; ``patches`` (codec text) are stored in
        their task's row, the rest of its configuration once per definition. ``notify``:
        wake idle workers once it commits."""
        stamp = timestamp(now)
        execution_id = random_id()
        # Without a key there is no conflict to learn of, and where the store can, the
        # context, the execution and its tasks are one statement (start_execution).
        combined = tx.combined and key is None and context_id is None
        text = initial or "{}"
        if context_id is None:
            row = SavedRow(new_id(), text) if combined else self.save_context(tx, text, now)
            context_id = row.id
            self.saved.keep(execution_id, [(INITIAL, row)])
        limited = None
        if wf.concurrency is not None:
            decoded = {}
            if wf.concurrency.key is not None:  # a fork reuses the context by its id
                known = initial if initial is not None else self.context(tx, context_id)
                decoded = codec.loads(known or "{}")
            limited = execution_key(wf.concurrency, wf.name, decoded)
        found = self.workflow_configurations(wf)
        self.store_configurations(tx, wf.name, found, stamp)
        params = {
            "id": execution_id,
            "name": wf.name,
            "version": wf.version,
            "shape": wf.shape_version,
            "priority": priority,
            "concurrency_key": limited,
            "configuration_id": found.id,
            "status": "running",
            "context_id": context_id,
            "claimed_by": claimed_by,
            "parent_id": parent_id,
            "parent_task": parent_task,
            "key": key,
            "now": stamp,
        }
        if key is not None:  # a key may be taken: wait for the answer
            if not tx.execute("insert_execution", params):
                return None
        elif not combined:  # (combined: sent below, with the task rows)
            tx.send("insert_execution", params)
        reused = reused or {}
        rows = []
        for template in self.template(wf):
            name = template["name"]
            old = reused.get(name)
            configuration = configurations.own_part(patches.get(name) if patches else None)
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
                    "started_at": stored(old.started_at) if old else None,
                    "completed_at": stored(old.completed_at) if old else None,
                    "configuration": configuration,
                    "code_version": None,
                    "priority": priority,
                    "now": stamp,
                }
            )
        if combined:
            tasks = json.dumps([{k: r[k] for k in _START_TASK_FIELDS} for r in rows])
            start = {**params, "value": text, "tasks": tasks, "notify": notify}
            tx.send("start_execution", start)
        else:
            tx.send_many("insert_task", rows)
            if notify:
                tx.send("notify_work", {})
        states = [TaskState(r["id"], r["name"], r["status"], r["attempt"]) for r in rows]
        return execution_id, states

    def set_trace(self, tx: Tx, execution_id: str, trace: str) -> None:
        """Keep the trace context the execution's spans join (only with tracing on)."""
        tx.execute("set_trace_context", {"id": execution_id, "trace": trace})

    def execution(self, tx: Tx, execution_id: str) -> ExecutionRecord | None:
        row = tx.fetch_one("get_execution", {"id": execution_id})
        return execution_of(row) if row is not None else None

    def executions(
        self,
        tx: Tx,
        wanted: Sequence[tuple[str, bool]],
        known: Sequence[Row | None] | None = None,
    ) -> list[tuple[ExecutionRecord | None, str | None]]:
        """Several executions' rows, each with its initial context where asked
        (``(id, with_context)`` pairs), in their order, in one statement; none for a pair
        whose row ``known`` holds at its place already (a claim read it), with the initial
        context if asked."""
        given = list(known) if known is not None else [None] * len(wanted)
        usable = [
            row if row is not None and (not context or row["initial_context"] is not None) else None
            for (_, context), row in zip(wanted, given, strict=True)
        ]
        missing = [pair for pair, row in zip(wanted, usable, strict=True) if row is None]
        fetched: dict[str, Row] = {}
        if missing:
            ids = list(dict.fromkeys(id_ for id_, _ in missing))
            with_context = list(dict.fromkeys(id_ for id_, context in missing if context))
            params = {"ids": json.dumps(ids), "with_context": json.dumps(with_context)}
            fetched = {str(r["id"]): r for r in tx.fetch_all("get_executions", params)}
        found: list[tuple[ExecutionRecord | None, str | None]] = []
        for (id_, context), own in zip(wanted, usable, strict=True):
            row = own if own is not None else fetched.get(id_)
            if row is None:
                found.append((None, None))
                continue
            record = execution_of(row)
            initial = None
            if context and row["initial_base"] is None:
                initial = row["initial_context"]
                if initial is not None:  # kept as initial_context keeps it: a root task's
                    saved = SavedRow(record.context_id, initial)  # output rests on it
                    self.saved.keep(record.id, [(INITIAL, saved)])
            found.append((record, initial))
        return found

    def execution_by_key(self, tx: Tx, workflow: str, key: str) -> ExecutionRecord | None:
        row = tx.fetch_one("find_execution_by_key", {"name": workflow, "key": key})
        return execution_of(row) if row is not None else None

    def list_executions(
        self, tx: Tx, status: str | None, workflow: str | None, limit: int
    ) -> list[ExecutionRecord]:
        return self.page_executions(tx, ListFilter(status=status, workflow=workflow), limit)

    def children(self, tx: Tx, execution_id: str) -> list[ChildRecord]:
        """The sub-workflow executions the execution's tasks started, oldest first."""
        rows = tx.fetch_all("child_executions", {"id": execution_id})
        return [
            ChildRecord(str(r["id"]), r["parent_task"], r["status"], r["pipeline_name"])
            for r in rows
        ]

    def lock_execution(self, tx: Tx, execution_id: str) -> None:
        # Sent with the statement after it: the lock is held before that one starts (and
        # takes its snapshot), as if it had been a round trip of its own.
        tx.send("lock_execution", {"id": execution_id})

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
        self, tx: Tx, execution_id: str, status: str, final: str, error: str | None, now: float,
        *, sources: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        """``sources``: the tasks whose outputs the final context merges (empty: it is the
        initial context). With one source, as a chain ends, it is that output's own row."""
        bases = self.bases(execution_id, sources)
        row = self.save_context(tx, final, now, bases)
        stamp = timestamp(now)
        params = {"id": execution_id, "status": status, "error": error, "now": stamp}
        fallback = row.id
        if row in bases:  # saved before: if that row is gone, the final context in full
            fallback = new_id()
            copy = {"fallback_id": fallback, "context_id": row.id, "final": final}
            if tx.combined:
                tx.send("finish_with_fallback", {**params, **copy})
                return
            tx.send("save_final_fallback", {**copy, "now": stamp})
        tx.send("finish_execution", {**params, "context_id": row.id, "fallback_id": fallback})

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
        tx.send("notify_work", {})

    def snapshot(self, tx: Tx, execution_id: str, *, initial: bool = True) -> Snapshot | None:
        """Everything stored about an execution; the initial context only when asked or
        when there is no final context yet (a result needs one of them)."""
        execution = self.execution(tx, execution_id)
        if execution is None:
            return None
        tasks = self.configured(tx, execution.configuration_id, self.tasks(tx, execution_id))
        outputs = self.output_rows(tx, execution_id)
        # The final context is most often an output's own row (a chain's last): read already.
        rows = {row.id: row.text for _, row in outputs}
        final = None
        if (final_id := execution.final_context_id) is not None:
            final = rows[final_id] if final_id in rows else self.context(tx, final_id)
        first = None
        if initial or final is None:
            first = self.context(tx, execution.context_id) or "{}"
        return Snapshot(
            execution=execution,
            tasks=tasks,
            outputs={name: row.text for name, row in outputs},
            initial=first,
            final=final,
            attempts=self.attempts(tx, execution_id),
        )

    def executions_by_prefix(
        self, tx: Tx, low: str, high: str, *, limit: int
    ) -> list[tuple[str, str]]:
        """``(id, "workflow" | "saga")`` of the executions of either kind whose id lies in
        ``low..high`` (the ids starting with a prefix, :class:`durably.lookup.IdPrefix`)."""
        rows = tx.fetch_all("executions_by_prefix", {"low": low, "high": high, "limit": limit})
        return [(str(row["id"]), row["kind"]) for row in rows]
