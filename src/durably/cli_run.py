"""``durably run``, ``retry`` and ``fork``: commands that drive an execution here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .cli_common import (
    CLIError,
    claimed_elsewhere,
    cli,
    common_options,
    console,
    finish_run,
    modules_option,
    open_engine,
    parse_assignment,
    parse_context,
    parse_uuid,
    require_workflow,
    unknown_task,
)
from .loading import (
    import_modules,
    load_workflow,
)
from .progress import follow, run_quietly
from .views import (
    task_table,
)

if TYPE_CHECKING:
    pass


@cli.command()
@click.argument("target", metavar="MODULE:WORKFLOW")
@click.option(
    "--context",
    "context_arg",
    metavar="JSON|@FILE",
    envvar="DURABLY_RUN_CONTEXT",
    show_envvar=True,
    help="The initial context: a JSON object, @path/to/file.json, or @- for stdin.",
)
@common_options
def run(target: str, context_arg: str | None, db: str | None, as_json: bool) -> None:
    """Run a workflow in this process, showing its tasks live.

    MODULE is imported (the current directory is on the path); WORKFLOW names the
    durably.Workflow in it. Exits 0 when the execution completed, 1 otherwise.
    """
    wf = load_workflow(target)
    module = target.partition(":")[0]
    initial = parse_context(context_arg)
    out = console()
    with open_engine(db) as engine:
        execution_id = engine.start(wf, initial)
        work = lambda: engine.resume(execution_id)  # noqa: E731
        try:
            if as_json:
                result = run_quietly(engine, execution_id, work, tolerate=claimed_elsewhere)
            else:
                result = follow(engine, execution_id, work, out, tolerate=claimed_elsewhere)
        except KeyboardInterrupt:
            click.echo(
                f"interrupted: execution {execution_id} is unfinished; a worker "
                f"(durably worker {module}) will resume it",
                err=True,
            )
            raise click.exceptions.Exit(130) from None
        finish_run(engine, result, out, db, as_json, [module])


@cli.command()
@click.argument("execution_id", metavar="ID")
@modules_option
@common_options
def retry(execution_id: str, modules: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """Run the failed, skipped and abandoned tasks of a failed or cancelled execution again,
    keeping completed ones. Exits 0 when it then completes, 1 otherwise."""
    key = parse_uuid(execution_id)
    import_modules(modules)
    out = console()
    with open_engine(db) as engine:
        result = require_workflow(engine, key)
        if result.status not in ("failed", "cancelled"):
            raise CLIError(
                f"execution {key} is {result.status}: only failed or cancelled executions "
                "can be retried"
            )
        work = lambda: engine.retry(key)  # noqa: E731
        result = run_quietly(engine, key, work) if as_json else follow(engine, key, work, out)
        finish_run(engine, result, out, db, as_json, modules)


@cli.command()
@click.argument("execution_id", metavar="ID")
@click.option(
    "--from",
    "from_task",
    required=True,
    metavar="TASK",
    envvar="DURABLY_FORK_FROM",
    show_envvar=True,
    help="Re-run from this task: tasks before it keep their saved outputs.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=JSON",
    envvar="DURABLY_FORK_SET",
    show_envvar=True,
    help="Change KEY in TASK's input (repeatable); the value is JSON: --set 'amount=42'.",
)
@modules_option
@common_options
def fork(
    execution_id: str,
    from_task: str,
    assignments: tuple[str, ...],
    modules: tuple[str, ...],
    db: str | None,
    as_json: bool,
) -> None:
    """Start a new execution that reuses the outputs of the tasks before TASK and runs
    TASK and what follows it. Exits 0 when it completes, 1 otherwise."""
    key = parse_uuid(execution_id)
    patch = dict(parse_assignment(a) for a in assignments)
    import_modules(modules)
    out = console()
    with open_engine(db) as engine:
        result = require_workflow(engine, key)
        if from_task not in result.tasks:
            raise unknown_task(key, from_task, result)
        if as_json:
            forked = engine.fork(key, from_task, patch or None)
        else:
            with out.status(f"forking {key} from {from_task}…"):
                forked = engine.fork(key, from_task, patch or None)
            out.print(task_table(forked))
        finish_run(engine, forked, out, db, as_json, modules)
