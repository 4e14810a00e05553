"""Contexts and task outputs: context rows hold codec JSON text; a task's output is a
context row linked to the task by its metadata row."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..store import Tx, timestamp
from .rows import new_id


class Contexts:
    def insert_context(self, tx: Tx, value: str, now: float) -> str:
        context_id = new_id()
        tx.send("insert_context", {"id": context_id, "value": value, "now": timestamp(now)})
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
        tx.send(
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
