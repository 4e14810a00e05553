"""``durably list``, ``show`` and ``context``: read executions of workflows and sagas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from rich.text import Text

from .cli_common import (
    STATUSES,
    CLIError,
    cli,
    common_options,
    console,
    modules_option,
    open_engine,
    print_json,
    unknown_task,
)
from .json_views import encode_context, execution_json, saga_json
from .loading import import_modules
from .lookup import find_execution, list_executions, parse_id, resolve_id
from .results import ExecutionResult
from .views import context_table, executions_table, render_execution, render_saga


@cli.command(name="list")
@click.option(
    "--status",
    type=click.Choice(STATUSES, case_sensitive=False),
    envvar="DURABLY_LIST_STATUS",
    show_envvar=True,
    help="Only executions in this status.",
)
@click.option(
    "--workflow",
    metavar="NAME",
    envvar="DURABLY_LIST_WORKFLOW",
    show_envvar=True,
    help="Only executions of this workflow (or saga) name.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    envvar="DURABLY_LIST_LIMIT",
    show_envvar=True,
    help="At most this many executions, newest first.",
)
@click.option(
    "--stranded",
    is_flag=True,
    envvar="DURABLY_LIST_STRANDED",
    show_envvar=True,
    help="Only queued executions that no live worker (or, with -m, no definition in those "
    "modules) can run, with the version each needs.",
)
@modules_option
@common_options
def list_(
    status: str | None,
    workflow: str | None,
    limit: int,
    stranded: bool,
    modules: tuple[str, ...],
    db: str | None,
    as_json: bool,
) -> None:
    """List executions (workflows and sagas), newest first."""
    status = status.lower() if status else None
    if stranded:
        from .cli_stranded import print_stranded

        with open_engine(db) as engine:
            print_stranded(engine, modules, limit, as_json)
        return
    with open_engine(db) as engine:
        rows = list_executions(engine, status, workflow, limit)
    if as_json:
        print_json(rows)
        return
    out = console()
    if not rows:
        out.print(Text("no executions", style="dim"))
        return
    out.print(executions_table(rows, out.width))


@cli.command()
@click.argument("execution_id", metavar="ID")
@modules_option
@click.option(
    "--expand",
    is_flag=True,
    envvar="DURABLY_SHOW_EXPAND",
    show_envvar=True,
    help="List every instance of a mapped task (by default: one row with counts).",
)
@common_options
def show(
    execution_id: str, modules: tuple[str, ...], expand: bool, db: str | None, as_json: bool
) -> None:
    """Show an execution: its task timeline, attempts, errors, compensations and each
    task's context change as a diff against its input."""
    ref = parse_id(execution_id)
    import_modules(modules)
    with open_engine(db) as engine:
        key = resolve_id(engine, ref)
        found = find_execution(engine, key)
        if not isinstance(found, ExecutionResult):
            if as_json:
                print_json(saga_json(found))
            else:
                console().print(render_saga(found))
        elif as_json:
            print_json(execution_json(engine, found))
        else:
            console().print(render_execution(engine, found, expand=expand))


@cli.command()
@click.argument("execution_id", metavar="ID")
@click.option(
    "--task",
    metavar="NAME",
    envvar="DURABLY_CONTEXT_TASK",
    show_envvar=True,
    help="The output context this task saved, instead of the execution's final context.",
)
@modules_option
@common_options
def context(
    execution_id: str, task: str | None, modules: tuple[str, ...], db: str | None, as_json: bool
) -> None:
    """Print an execution's context (or one task's saved output)."""
    ref = parse_id(execution_id)
    import_modules(modules)
    data: Mapping[str, Any]
    with open_engine(db) as engine:
        key = resolve_id(engine, ref)
        found = find_execution(engine, key)
        if task is None:
            data = found.context
        elif not isinstance(found, ExecutionResult):
            raise CLIError(f"{key} is a saga execution: it has no tasks (drop --task)")
        elif task not in found.tasks:
            raise unknown_task(key, task, found)
        elif found.tasks[task].context is None:
            raise CLIError(
                f"task {task!r} did not complete ({found.tasks[task].status}): it saved no context"
            )
        else:
            data = engine.task_context(key, task)
    if as_json:
        print_json(encode_context(data))
    else:
        console().print(context_table(data))
