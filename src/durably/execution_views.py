"""What the command line shows of a workflow execution: its header, its task timeline (mapped
tasks counted per status, code versions, waits and sub-workflows), what each attempt logged,
each task's context diff, and the hints and outcome line after a run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from rich.console import Group, RenderableType
from rich.text import Text

from .diffs import Diff, task_diffs
from .engine import Engine
from .results import ExecutionResult, TaskResult
from .view_parts import borderless_table, clock, context_table, duration, show_value, styled

__all__ = [
    "code_versions",
    "code_versions_of",
    "diff_section",
    "execution_header",
    "inspect_hint",
    "instance_counts",
    "logs_section",
    "outcome",
    "render_diff",
    "render_execution",
    "task_table",
    "waiting_for",
]


def instance_counts(result: ExecutionResult) -> dict[str, dict[str, int]]:
    """Per mapped task, how many of its instances are in each status."""
    counts: dict[str, dict[str, int]] = {}
    for task in result.tasks.values():
        if task.parent is not None:
            per = counts.setdefault(task.parent, {})
            per[task.status] = per.get(task.status, 0) + 1
    return counts


def task_table(
    result: ExecutionResult, *, live: bool = False, expand: bool = False
) -> RenderableType:
    """The task timeline; errors are listed under the table, where they have room. A mapped
    task is one row with a count of its instances per status (each its own row with
    ``expand``)."""
    counts = instance_counts(result)
    table = borderless_table(f"{result.workflow}  {result.execution_id}")
    table.add_column("task", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    if not live:
        table.add_column("compensation", no_wrap=True)
    now = datetime.now().astimezone()
    errors = Text(style="red")
    for name, task in result.tasks.items():
        if task.parent is not None and not expand:
            if task.error:
                errors.append(f"  {name} ({task.status}): {task.error}\n")
            continue
        end = task.completed_at or (now if task.status == "running" else None)
        status = styled(task.status)
        if name in counts:
            status.append(
                " (" + ", ".join(f"{n} {s}" for s, n in sorted(counts[name].items())) + ")",
                style="dim",
            )
        row: list[RenderableType] = [
            name,
            status,
            str(task.attempts),
            clock(task.started_at),
            duration(task.started_at, end),
        ]
        if not live:
            row.append(styled(task.compensation) if task.compensation else "")
        table.add_row(*row)
        ran = code_versions(task)
        if ran and ran != code_versions_of([result.version]):
            # Code other than the version it started on ran it (SPEC §3.5): a deploy mid-run.
            errors.append(f"  {name} ran version {ran}\n", style="dim")
        if task.child_id is not None:
            errors.append(f"  {name} runs sub-workflow execution {task.child_id}\n", style="cyan")
        elif task.status == "waiting":
            errors.append(f"  {name} {waiting_for(task)}\n", style="cyan")
        earlier = [a for a in task.history if a.error and a.error != task.error]
        for attempt in earlier:  # an earlier attempt's error stays visible after a success
            errors.append(
                f"  {name} attempt {attempt.number} ({attempt.status}): {attempt.error}\n"
            )
        if task.error:
            errors.append(f"  {name} ({task.status}): {task.error}\n")
    errors.rstrip()
    return Group(table, errors) if errors else table


def code_versions(task: TaskResult) -> str:
    """The versions its attempts ran, in order, each once in a row."""
    return code_versions_of([a.version for a in task.history if a.version])


def code_versions_of(versions: list[str]) -> str:
    ran: list[str] = []
    for version in versions:
        if not ran or ran[-1] != version:
            ran.append(version)
    # A code hash is 16 hex digits: 8 tell deploys apart (a declared version is shown whole).
    return " -> ".join(v[:8] if len(v) == 16 and _HEX.fullmatch(v) else v for v in ran)


_HEX = re.compile("[0-9a-f]+")


def waiting_for(task: TaskResult) -> str:
    """What a waiting task waits for, and until when."""
    when = clock(task.wake_at, date=True) if task.wake_at else None
    if task.wait_event:
        return f"waits for event {task.wait_event!r}" + (f" (times out {when})" if when else "")
    return f"waits until {when}" if when else "waits"


def execution_header(result: ExecutionResult) -> Text:
    text = Text()
    text.append(f"{result.workflow}", style="bold")
    text.append(f"  {result.execution_id}  ")
    text.append_text(styled(result.status))
    text.append(f"\ncreated {clock(result.created_at, date=True)}", style="dim")
    if result.completed_at:
        text.append(
            f" · finished {clock(result.completed_at, date=True)}"
            f" ({duration(result.created_at, result.completed_at)})",
            style="dim",
        )
    if result.version:
        text.append(f" · version {result.version}", style="dim")
    if result.parent_task is not None:
        text.append(f"\nsub-workflow of execution {result.parent_id} (task {result.parent_task!r})")
    elif result.parent_id is not None:
        text.append(f"\nforked from execution {result.parent_id}", style="dim")
    if result.error:
        text.append(f"\nerror: {result.error}", style="red")
    return text


def render_diff(diff: Diff) -> Text:
    if not diff:
        return Text("    (no change)", style="dim")
    lines = Text()
    for key, value in diff.added.items():
        lines.append(f"    + {key} = {show_value(value)}\n", style="green")
    for key, (old, new) in diff.changed.items():
        lines.append(f"    ~ {key}: {show_value(old)} → {show_value(new)}\n", style="yellow")
    for key, value in diff.removed.items():
        lines.append(f"    - {key} (was {show_value(value)})\n", style="red")
    lines.rstrip()
    return lines


def diff_section(
    engine: Engine, result: ExecutionResult, *, expand: bool = False
) -> RenderableType:
    diffs, inputs, exact = task_diffs(engine, result)
    parts: list[RenderableType] = [Text("Context changes", style="bold underline")]
    if not exact:
        parts.append(
            Text(
                "(the workflow is not imported: each diff is against the previous task's "
                "output; pass --module MODULE for each task's exact input)",
                style="dim",
            )
        )
    for name, task in result.tasks.items():
        if task.parent is not None and not expand:
            continue  # an instance of a mapped task: see its task's row (or --expand)
        head = Text(f"  {name}", style="bold")
        if name in diffs:
            head.append(f"  (input: {inputs[name].basis})", style="dim")
            parts.extend([head, render_diff(diffs[name])])
        else:
            head.append(f"  {task.status}, no saved context", style="dim")
            parts.append(head)
    return Group(*parts)


def logs_section(result: ExecutionResult) -> RenderableType | None:
    """What each attempt logged, under the attempt; None when no attempt logged."""
    text = Text()
    for name, task in result.tasks.items():
        for attempt in task.history:
            if not attempt.logs:
                continue
            text.append(f"  {name} attempt {attempt.number} ({attempt.status})\n", style="bold")
            for entry in attempt.logs:
                level = _LEVEL_STYLES.get(entry.level, "")
                text.append(f"    {clock(entry.at)} ", style="dim")
                text.append(f"{entry.level:<7} ", style=level)
                text.append(f"{entry.message}\n")
    if not text:
        return None
    text.rstrip()
    return Group(Text("Logs", style="bold underline"), text)


_LEVEL_STYLES = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red", "DEBUG": "dim"}


def render_execution(
    engine: Engine, result: ExecutionResult, *, expand: bool = False
) -> RenderableType:
    """The full ``show`` view: header, task timeline, logs, context diffs, final context."""
    logs = logs_section(result)
    return Group(
        execution_header(result),
        Text(),
        task_table(result, expand=expand),
        *((Text(), logs) if logs is not None else ()),
        Text(),
        diff_section(engine, result, expand=expand),
        Text(),
        context_table(result.context, title="Final context"),
    )


def inspect_hint(execution_id: UUID, db: str | None, modules: Sequence[str] = ()) -> Text:
    where = f" --db {shlex.quote(db)}" if db else ""
    imports = "".join(f" -m {shlex.quote(m)}" for m in modules)
    text = Text("Inspect it:  ", style="dim")
    text.append(f"durably show {execution_id}{where}{imports}", style="bold")
    text.append("\n             ")
    text.append(f"durably context {execution_id}{where}", style="bold")
    return text


def outcome(result: ExecutionResult) -> Text:
    text = Text()
    text.append_text(styled(result.status))
    text.append(f"  execution {result.execution_id}")
    if result.error:
        text.append(f"\nerror: {result.error}", style="red")
    return text
