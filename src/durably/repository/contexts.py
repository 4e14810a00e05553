"""Contexts and task outputs: a context row holds codec JSON text, or what changed since the
full row it rests on (:mod:`.deltas`); a task's output is a context row linked to the task by
its metadata row. Every read returns full texts, whatever the rows hold."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..records import AttemptRef
from ..store import Row, Statement, Tx, timestamp
from .deltas import SavedRow, resolve, rest_on
from .rows import new_id
from .saved import INITIAL, SavedContexts


@dataclass(frozen=True, slots=True)
class PlannedCompletion:
    """complete_with_output's statement, and the rows its answer tells which to keep."""

    statement: Statement
    ref: AttemptRef
    same: SavedRow | None  # the row saved before that holds the output's text, if any
    fresh: SavedRow  # the row written otherwise


class Contexts:
    def __init__(self) -> None:
        self.saved = SavedContexts()

    def insert_context(self, tx: Tx, value: str, now: float) -> str:
        return self.save_context(tx, value, now).id

    def save_context(
        self, tx: Tx, value: str, now: float, bases: Sequence[SavedRow] = ()
    ) -> SavedRow:
        """Store ``value``: as one of ``bases`` when it holds that very text (no new row, the
        caller checks it exists), as a delta on the full row (of theirs) that gives the
        smallest, or in full."""
        base, delta, members = rest_on(value, bases) if bases else (None, None, None)
        if base is not None and delta is None:
            return base
        row_id, stamp = new_id(), timestamp(now)
        if base is not None and delta is not None:
            # Stored in full if the base is gone (a row of a rolled-back transaction, still
            # in memory): then never taken for a base itself, as a delta is not.
            params = {"id": row_id, "value": delta, "full": value, "base_id": base.id}
            tx.send("insert_context_delta", {**params, "now": stamp})
            return SavedRow(row_id, value, base, members)
        tx.send("insert_context", {"id": row_id, "value": value, "now": stamp})
        return SavedRow(row_id, value)

    def bases(self, execution_id: str, names: Sequence[str] | None) -> list[SavedRow]:
        """The rows an output made from these tasks' outputs (none: from the initial
        context) is likely to differ little from, among those this process holds."""
        return [] if names is None else self.saved.linked(execution_id, names)

    def context(self, tx: Tx, context_id: str) -> str | None:
        row = _one(tx.fetch_all("get_context", {"id": context_id}))
        return row.text if row is not None else None

    def initial_context(self, tx: Tx, execution_id: str, context_id: str) -> str | None:
        """The execution's initial context, kept in memory: its root tasks' outputs are
        stored as what they changed in it."""
        return self.initial_read(execution_id, tx.fetch_all(*self.initial_reads(context_id)))

    def initial_reads(self, context_id: str) -> Statement:
        return ("get_context", {"id": context_id})

    def initial_read(self, execution_id: str, rows: Sequence[Row]) -> str | None:
        row = _one(rows)
        if row is None:
            return None
        self.saved.keep(execution_id, [(INITIAL, row)])
        return row.text

    def outputs(
        self, tx: Tx, execution_id: str, names: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Saved outputs (codec text) by task name: all of them, or only ``names``."""
        return {name: row.text for name, row in self.output_rows(tx, execution_id, names)}

    def output_rows(
        self, tx: Tx, execution_id: str, names: Sequence[str] | None = None
    ) -> list[tuple[str, SavedRow]]:
        """The saved outputs by task name, as rows (kept in memory: later outputs of the
        execution are stored as what they changed in them)."""
        reads = self.output_reads(execution_id, names)
        return self.outputs_read(execution_id, tx.fetch_all(*reads[0])) if reads else []

    def output_reads(self, execution_id: str, names: Sequence[str] | None) -> list[Statement]:
        """The statement of :meth:`output_rows` (none for no names), to send with others;
        :meth:`outputs_read` makes its rows rows."""
        if names is None:
            return [("get_outputs", {"id": execution_id})]
        if not names:
            return []
        return [("get_named_outputs", {"id": execution_id, "names": json.dumps(list(names))})]

    def outputs_read(self, execution_id: str, rows: Sequence[Row]) -> list[tuple[str, SavedRow]]:
        found = labelled(rows, "task_name")
        self.saved.keep(execution_id, found)
        return found

    def output_context_ids(self, tx: Tx, execution_id: str) -> dict[str, str]:
        rows = tx.fetch_all("get_output_ids", {"id": execution_id})
        return {row["task_name"]: str(row["context_id"]) for row in rows}

    def task_output(self, tx: Tx, execution_id: str, name: str) -> str | None:
        row = _one(tx.fetch_all("get_task_output", {"id": execution_id, "name": name}))
        return row.text if row is not None else None

    def link_output(
        self, tx: Tx, execution_id: str, task_id: str, name: str, context_id: str, now: float
    ) -> None:
        """Link the output to a row written here (sent with what follows: nothing to learn)."""
        tx.send("save_output", _link(execution_id, task_id, name, context_id, now))

    def link_saved_output(
        self, tx: Tx, execution_id: str, task_id: str, name: str, context_id: str, now: float
    ) -> bool:
        """Link the output to a row saved before, only if it still exists."""
        params = _link(execution_id, task_id, name, context_id, now)
        return bool(tx.execute("link_saved_output", params))

    def save_output(
        self, tx: Tx, execution_id: str, task_id: str, name: str, value: str, now: float,
        dependencies: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        """Store a task's output and link it; ``dependencies``: the tasks whose outputs its
        input was made of (empty: the initial context; None: unknown, stored in full)."""
        bases = self.bases(execution_id, dependencies)
        row = self.save_context(tx, value, now, bases)
        if row in bases:  # saved before: linked only if it still exists
            if not self.link_saved_output(tx, execution_id, task_id, name, row.id, now):
                row = self.save_context(tx, value, now)
                self.link_output(tx, execution_id, task_id, name, row.id, now)
        else:
            self.link_output(tx, execution_id, task_id, name, row.id, now)
        self.saved.keep(execution_id, [(name, row)])

    def complete_with_output(
        self, tx: Tx, ref: AttemptRef, fence: Mapping[str, Any], value: str,
        dependencies: Sequence[str] | None,
    ) -> bool:  # fmt: skip
        """complete_task (``fence``: its parameters but the task) and save_output as one
        statement (``Tx.combined``), whose answer says whether the claim held."""
        planned = self.plan_completion(ref, fence, value, dependencies)
        return self.completion_read(planned, tx.fetch_all(*planned.statement))

    def plan_completion(
        self, ref: AttemptRef, fence: Mapping[str, Any], value: str,
        dependencies: Sequence[str] | None,
    ) -> PlannedCompletion:  # fmt: skip
        """:meth:`complete_with_output`'s statement, to send with others."""
        bases = self.bases(ref.execution_id, dependencies)
        base, delta, members = rest_on(value, bases) if bases else (None, None, None)
        row_id = new_id()
        same = base if delta is None else None  # a row saved before holds this very text
        on = base if delta is not None else None
        params = {
            **fence,
            "task_id": ref.task_id,
            "execution_id": ref.execution_id,
            "name": ref.name,
            "link_id": new_id(),
            "context_id": row_id,
            "saved_id": same.id if same is not None else None,
            "base_id": on.id if on is not None else None,
            "value": delta if delta is not None else value,
            "full": value,
            **_NO_READ,
        }
        fresh = SavedRow(row_id, value, on, members)
        return PlannedCompletion(("complete_with_output", params), ref, same, fresh)

    def completion_read(self, planned: PlannedCompletion, rows: Sequence[Row]) -> bool:
        """Whether the claim held (then the output's row is kept in memory)."""
        if not rows or not rows[0]["completed"]:
            return False
        same = planned.same
        row = same if same is not None and rows[0]["reused"] else planned.fresh
        self.saved.keep(planned.ref.execution_id, [(planned.ref.name, row)])
        return True

    def share_outputs(
        self, tx: Tx, source: str, execution_id: str, task_ids: Mapping[str, str],
        initial_id: str, now: float,
    ) -> None:  # fmt: skip
        """A fork's reused outputs (``task_ids``: name -> its task in the fork) linked to the
        rows of ``source`` that hold them. A row the fork links must rest only on a row the
        fork itself keeps (the initial context they share, or another reused output), so
        that pruning ``source`` never takes it: any other delta is copied in full."""
        rows = dict(self.output_rows(tx, source, list(task_ids)))
        kept = {str(initial_id)} | {row.id for row in rows.values() if row.base is None}
        for name, row in rows.items():
            target = row.id
            if row.base is not None and row.base.id not in kept:
                target = self.save_context(tx, row.text, now).id
            self.link_output(tx, execution_id, task_ids[name], name, target, now)

    def delete_output(self, tx: Tx, execution_id: str, name: str) -> list[str]:
        """Unlink the task's output; return the context row it linked (none if it had no
        output), for the caller to prune once nothing else links it."""
        rows = tx.fetch_all("delete_output", {"id": execution_id, "name": name})
        return [str(row["context_id"]) for row in rows]


# complete_with_output's reads around the task, none (Tasks.plan_completion_with_read adds them).
_NO_READ = {"names": "[]", "waits": "[]", "terminal": "[]"}


def _link(
    execution_id: str, task_id: str, name: str, context_id: str, now: float
) -> dict[str, object]:
    return {
        "id": new_id(),
        "task_id": task_id,
        "execution_id": execution_id,
        "name": name,
        "context_id": context_id,
        "now": timestamp(now),
    }


def _raw(rows: Iterable[Any]) -> dict[str, tuple[str, str | None]]:
    """id -> (value, base_id) of a query's rows and of the rows they rest on (joined as
    ``base_value``, ``base_base_id``)."""
    found: dict[str, tuple[str, str | None]] = {}
    for row in rows:
        base_id = str(row["base_id"]) if row["base_id"] is not None else None
        found[str(row["id"])] = (row["value"], base_id)
        if base_id is not None and row["base_value"] is not None:
            rests_on = row["base_base_id"]
            found[base_id] = (row["base_value"], str(rests_on) if rests_on else None)
    return found


def _one(rows: Sequence[Any]) -> SavedRow | None:
    if not rows:
        return None
    wanted = str(rows[0]["id"])
    return resolve(_raw(rows), [wanted])[wanted]


def labelled(rows: Sequence[Any], label: str) -> list[tuple[Any, SavedRow]]:
    """An outputs query's rows -> (``label`` of the row, the row resolved)."""
    found = resolve(_raw(rows), [str(row["id"]) for row in rows])
    return [(row[label], found[str(row["id"])]) for row in rows]
