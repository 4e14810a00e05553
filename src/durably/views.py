"""What the command line shows people: rich tables of executions, a workflow execution's task
timeline and context diffs, a saga execution's steps, and contexts.

The pieces every view uses are in ``view_parts``; a workflow execution's views in
``execution_views``; a saga execution's and the list of executions are here, and every view is
importable from here. The same data as JSON, for ``--json``, is in :mod:`durably.json_views`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .execution_views import (
    code_versions,
    code_versions_of,
    diff_section,
    execution_header,
    inspect_hint,
    instance_counts,
    logs_section,
    outcome,
    render_diff,
    render_execution,
    task_table,
    waiting_for,
)
from .store import parse_timestamp
from .view_parts import (
    STYLES,
    borderless_table,
    clock,
    context_table,
    duration,
    show_value,
    styled,
)

if TYPE_CHECKING:
    from .saga_repository import SagaExecutionSummary

__all__ = [
    "STYLES",
    "borderless_table",
    "clock",
    "code_versions",
    "code_versions_of",
    "context_table",
    "diff_section",
    "duration",
    "execution_header",
    "executions_table",
    "inspect_hint",
    "instance_counts",
    "logs_section",
    "outcome",
    "render_diff",
    "render_execution",
    "render_saga",
    "show_value",
    "styled",
    "task_table",
    "waiting_for",
]


# -- saga executions -----------------------------------------------------------------------


def render_saga(execution: SagaExecutionSummary) -> RenderableType:
    head = Text()
    head.append(f"saga {execution.saga_name}", style="bold")
    head.append(f"  {execution.id}  ")
    head.append_text(styled(execution.status.value))
    head.append(
        f"\ncreated {clock(execution.created_at, date=True)} · "
        f"updated {clock(execution.updated_at, date=True)} · "
        f"fingerprint {execution.fingerprint}",
        style="dim",
    )
    if execution.error:
        head.append(f"\nerror: {execution.error}", style="red")
    table = borderless_table("Steps")
    for column in ("#", "step", "status"):
        table.add_column(column, no_wrap=True)
    errors = Text(style="red")
    for step in execution.steps:
        table.add_row(step.path, step.name, styled(step.status.value))
        if step.error:
            errors.append(f"  {step.path} {step.name} ({step.status.value}): {step.error}\n")
    for error in execution.rollback_errors:
        errors.append(f"  compensation failed: {error}\n")
    errors.rstrip()
    parts: list[RenderableType] = [head, Text(), table]
    if errors:
        parts.append(errors)
    parts += [Text(), context_table(execution.context, title="Context")]
    return Group(*parts)


# -- both kinds, listed ------------------------------------------------------------------


def executions_table(rows: list[dict[str, Any]], width: int) -> Table:
    """``durably list``'s rows (JSON summaries): id, workflow and status always; then kind,
    created, took and error while they fit."""
    cells: dict[str, list[str]] = {"id": [], "kind": [], "workflow": [], "status": []}
    cells.update(created=[], took=[], error=[])
    for row in rows:
        created = _moment(row["created_at"])
        cells["id"].append(row["id"])
        cells["kind"].append(row["kind"])
        cells["workflow"].append(row["workflow"])
        cells["status"].append(row["status"] or "")
        cells["created"].append(created.astimezone().strftime("%m-%d %H:%M:%S") if created else "")
        cells["took"].append(duration(created, _moment(row["completed_at"])))
        cells["error"].append(row["error"] or "")
    wanted = ["id", "workflow", "status"]
    if any(kind != "workflow" for kind in cells["kind"]):
        wanted.append("kind")
    wanted += ["created", "took"]
    if any(cells["error"]):
        wanted.append("error")
    shown: list[str] = []
    used = 0
    for name in wanted:
        need = max(len(name), *(len(cell) for cell in cells[name]))
        if name == "error":
            need = 20  # it wraps
        if shown and used + 3 + need > width:
            break
        shown.append(name)
        used += need + (3 if len(shown) > 1 else 0)
    shown.sort(key=["id", "kind", "workflow", "status", "created", "took", "error"].index)
    table = borderless_table()
    for name in shown:
        table.add_column(
            name,
            no_wrap=name != "error",
            justify="right" if name == "took" else "left",
            style={"workflow": "bold", "error": "red"}.get(name, ""),
            overflow="fold",
        )
    for index in range(len(rows)):
        table.add_row(
            *(
                styled(cells[name][index]) if name == "status" else cells[name][index]
                for name in shown
            )
        )
    return table


def _moment(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError):
        return None
