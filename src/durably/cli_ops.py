"""``durably prune`` and ``durably schedules``: keeping a database in shape over time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.text import Text

from .cli_common import CLIError, cli, common_options, console, open_engine, print_json
from .loading import import_modules, top_level_workflows
from .retention import FINISHED, parse_duration
from .scheduler import ScheduleStatus
from .views import borderless_table, clock, styled
from .workflow import Workflow

PRUNABLE = tuple(status for statuses in FINISHED.values() for status in statuses)


def duration_option(text: str, option: str) -> timedelta:
    """A duration given on the command line (``30d``), or one clear line saying what is wrong."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CLIError(f"{option}: {exc}") from None


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    required=True,
    envvar="DURABLY_PRUNE_OLDER_THAN",
    show_envvar=True,
    help="Delete executions that finished longer ago than this: 30d, 12h, 90m, 45s, 2w, 1d12h.",
)
@click.option(
    "--status",
    metavar="STATUS",
    envvar="DURABLY_PRUNE_STATUS",
    show_envvar=True,
    help=f"Only executions in this finished status ({', '.join(PRUNABLE)}) [default: all].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    envvar="DURABLY_PRUNE_DRY_RUN",
    show_envvar=True,
    help="Count what would be deleted, and delete nothing.",
)
@common_options
def prune(
    older_than: str, status: str | None, dry_run: bool, db: str | None, as_json: bool
) -> None:
    """Delete finished executions (workflow and saga) older than an age, with their tasks,
    attempts, events and contexts. Running ones are never touched; the work is done in small
    transactions, so workers keep running meanwhile."""
    age = duration_option(older_than, "--older-than")
    wanted = status.strip().lower() if status else None
    if wanted is not None and wanted not in PRUNABLE:
        raise CLIError(
            f"--status {status!r}: only finished executions are pruned "
            f"(one of {', '.join(PRUNABLE)})"
        )
    with open_engine(db) as engine:
        count = engine.prune(age, wanted, dry_run=dry_run)
        cutoff = datetime.fromtimestamp(engine.runtime.now(), UTC) - age
    if as_json:
        print_json(
            {
                "pruned": 0 if dry_run else count,
                "matched": count,
                "dry_run": dry_run,
                "older_than_seconds": age.total_seconds(),
                "finished_before": cutoff.isoformat(),
                "status": wanted,
            }
        )
        return
    what = f"{wanted} execution(s)" if wanted else "finished execution(s)"
    verb = "would be deleted (dry run: nothing was)" if dry_run else "deleted"
    click.echo(f"{count} {what} that finished before {clock(cutoff, date=True)} {verb}")


@cli.command()
@click.option(
    "-m",
    "--module",
    "modules",
    multiple=True,
    metavar="MODULE",
    envvar="DURABLY_MODULES",
    show_envvar=True,
    help="Import MODULE first (repeatable): its schedules are listed even before a worker "
    "has seen them, with their current definition.",
)
@common_options
def schedules(modules: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """List schedules: each one's next slot, last run and missed slots."""
    workflows: list[Workflow] = []
    for module in import_modules(modules):
        workflows.extend(wf for wf in top_level_workflows(module) if wf not in workflows)
    with open_engine(db, workflows=workflows) as engine:
        found = engine.schedules()
    if as_json:
        print_json([schedule_json(s) for s in found])
        return
    out = console()
    if not found:
        out.print(Text("no schedules (a worker records them when it first serves them)", "dim"))
        return
    table = borderless_table()
    for column in ("workflow", "schedule", "cron", "catch-up", "next slot", "last run"):
        table.add_column(column, no_wrap=column != "last run")
    table.add_column("missed", justify="right")
    for s in found:
        last = Text(clock(s.last_slot, date=True) or "-")
        if s.last_execution_id:
            last.append(f" {s.last_execution_id[:8]} ")
            last.append_text(styled(s.last_status or "pruned"))
        zone = "" if s.timezone == "UTC" else f" ({s.timezone})"
        table.add_row(
            s.workflow,
            s.name,
            s.cron + zone,
            s.catch_up,
            clock(s.next_slot, date=True) or "-",
            last,
            str(s.missed) if s.checked_at is not None else "not seen yet",
        )
    out.print(table)


def schedule_json(s: ScheduleStatus) -> dict[str, Any]:
    def moment(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat() if value is not None else None

    return {
        "workflow": s.workflow,
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "catch_up": s.catch_up,
        "next_slot": moment(s.next_slot),
        "last_slot": moment(s.last_slot),
        "last_execution_id": s.last_execution_id,
        "last_status": s.last_status,
        "missed": s.missed,
        "checked_at": moment(s.checked_at),
    }
