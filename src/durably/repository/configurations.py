"""Task configurations (0015): what every task row of a definition used to repeat (its
dependencies, retry, merge, wait, a mapped task's fan-out, a sub-workflow's name, and its
trigger rule) is stored once, in ``task_configurations``, under a hash of its text. An
execution names it by its ``configuration_id``; its task rows keep in ``task_configuration``
only their own part (a fork's ``context_patch``), else NULL, and ``trigger_rules`` NULL. Rows
written before 0015 hold them whole and their execution names none: a row's own part goes on
top of its execution's, so both read the same.

Only the readers of a whole execution (``durably show``, the dashboard, a stored shape) and an
event's delivery need it; a worker's claims and loads read only a row's own part, the patch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..records import TaskRecord
from ..store import Tx
from ..workflow import Workflow


@dataclass(frozen=True, slots=True)
class Configurations:
    """A definition's task configurations: ``value`` and ``trigger_rules`` (the JSON texts
    stored, task name to configuration and to trigger rule) under ``id``, a hash of them and
    the workflow's name. Nothing reads the rules back: they are kept for people reading the
    tables, as the task rows kept them."""

    id: str
    value: str
    trigger_rules: str
    tasks: Mapping[str, Any]


def of_workflow(wf: Workflow) -> Configurations:
    tasks = {
        task.name: {
            "dependencies": list(task.dependencies),
            "retry": task.retry.to_json(),
            "timeout": task.timeout,
            "merge": task.merge if isinstance(task.merge, str) else "callable",
            "compensate": task.compensate is not None,
            "wait": task.wait.to_json() if task.wait is not None else None,
            "child": task.child.name if task.child is not None else None,
            "map": {
                "over": task.map_over,
                "max_parallel": task.max_parallel,
                "collect": task.collect,
            }
            if task.map_over is not None
            else None,
        }
        for task in wf.tasks.values()
    }
    value = json.dumps(tasks)
    rules = json.dumps({task.name: task.trigger.to_json() for task in wf.tasks.values()})
    digest = hashlib.sha256(f"{wf.name}\0{value}\0{rules}".encode()).hexdigest()[:16]
    return Configurations(digest, value, rules, tasks)


def parsed(value: Any) -> dict[str, Any]:
    """Stored JSON (text on SQLite, parsed by psycopg from jsonb) as a dict."""
    if not value:
        return {}
    found = json.loads(value) if isinstance(value, str) else value
    return found if isinstance(found, dict) else {}


def own_part(patch: str | None) -> str | None:
    """What a task row stores itself: a fork's context patch (codec text), or nothing."""
    return json.dumps({"context_patch": patch}) if patch is not None else None


def resolved(own: Any, tasks: Mapping[str, Any], name: str, parent: str | None) -> str | None:
    """A task row's configuration as JSON text: its task's in ``tasks`` (a dict, or its
    text; a mapped task's for its instances), with the row's ``own`` part on top."""
    base = tasks.get(parent if parent is not None else name)
    if base is None:
        return own if own is None or isinstance(own, str) else json.dumps(own)
    if own is None:
        return base if isinstance(base, str) else json.dumps(base)
    return json.dumps({**parsed(base), **parsed(own)})


class StoredConfigurations:
    """The repository's part: storing a definition's configurations once, and reading them
    back for whole executions. Cached by id (a hash of the content: never stale)."""

    def __init__(self) -> None:
        super().__init__()
        self._configurations: dict[str, Mapping[str, str]] = {}  # id -> task -> JSON text
        self._stored: set[str] = set()  # ids seen committed: no insert needed any more
        self._inserting: dict[str, Tx] = {}  # id -> the transaction that inserted it last

    def store_configurations(self, tx: Tx, name: str, found: Configurations, now: str) -> None:
        """Insert ``found`` unless it is known stored. Known once an insert found it there
        from another transaction than the one that inserted it (which may roll back)."""
        if found.id in self._stored:
            return
        self._configurations.setdefault(found.id, _texts(found.tasks))
        params = {"id": found.id, "name": name, "value": found.value, "now": now}
        params["trigger_rules"] = found.trigger_rules
        if tx.execute("insert_task_configurations", params):
            self._inserting[found.id] = tx
        elif self._inserting.get(found.id) is not tx:
            self._stored.add(found.id)
            self._inserting.pop(found.id, None)

    def configurations(self, tx: Tx, configuration_id: str) -> Mapping[str, str]:
        """Each task's configuration as JSON text (read once per process)."""
        texts = self._configurations.get(configuration_id)
        if texts is None:
            row = tx.fetch_one("get_task_configurations", {"id": configuration_id})
            if row is None:
                return {}
            texts = _texts(parsed(row["value"]))
            texts = self._configurations.setdefault(configuration_id, texts)
        return texts

    def configured(
        self, tx: Tx, configuration_id: str | None, tasks: Sequence[TaskRecord]
    ) -> list[TaskRecord]:
        """``tasks`` with their whole configuration (their execution's ``configuration_id``)."""
        if configuration_id is None:
            return list(tasks)
        found = self.configurations(tx, configuration_id)
        return [
            replace(
                task,
                config_text=resolved(task.config_text, found, task.name, task.map_parent),
            )
            for task in tasks
        ]


def _texts(tasks: Mapping[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in tasks.items()}
