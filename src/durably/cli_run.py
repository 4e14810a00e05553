"""``durably run``, ``start``, ``resume``, ``send``, ``retry`` and ``fork``: commands that
start an execution, drive one here, or signal one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

import click
from rich.console import Console

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
    parse_payload,
    print_json,
    require_workflow,
    unknown_task,
)
from .engine import Engine
from .loading import (
    import_modules,
    load_workflow,
)
from .lookup import execution_by_key, find_execution, parse_id, resolve_id
from .progress import follow, run_quietly
from .results import ExecutionResult
from .views import (
    task_table,
)
from .workflow import registered

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
@click.argument("target", metavar="MODULE:WORKFLOW")
@click.option(
    "--context",
    "context_arg",
    metavar="JSON|@FILE",
    envvar="DURABLY_START_CONTEXT",
    show_envvar=True,
    help="The initial context: a JSON object, @path/to/file.json, or @- for stdin.",
)
@click.option(
    "--key",
    metavar="KEY",
    envvar="DURABLY_START_KEY",
    show_envvar=True,
    help="Idempotency key: when an execution of WORKFLOW has this key, start nothing and "
    "print its id.",
)
@click.option(
    "--priority",
    type=click.IntRange(-(2**31), 2**31 - 1),
    default=0,
    show_default=True,
    envvar="DURABLY_START_PRIORITY",
    show_envvar=True,
    help="Workers claim the tasks of higher-priority executions first (oldest first within "
    "one priority).",
)
@common_options
def start(
    target: str,
    context_arg: str | None,
    key: str | None,
    priority: int,
    db: str | None,
    as_json: bool,
) -> None:
    """Queue a workflow for workers (durably worker MODULE) and print the execution's id.

    Nothing runs here: a worker, or durably resume ID, runs its tasks.
    """
    wf = load_workflow(target)
    initial = parse_context(context_arg)
    if key is not None and not key:
        raise CLIError("--key must not be empty")
    with open_engine(db) as engine:
        # Asked first: start returns the existing execution's id without saying it existed.
        existed = key is not None and execution_by_key(engine, wf.name, key) is not None
        execution_id = engine.start(wf, initial, key=key, priority=priority)
    if as_json:
        print_json(
            {"id": str(execution_id), "workflow": wf.name, "key": key, "created": not existed}
        )
        return
    click.echo(str(execution_id))
    if existed:
        click.echo(
            f"execution {execution_id} of {wf.name} has key {key!r} already: nothing started",
            err=True,
        )


@cli.command()
@click.argument("execution_id", metavar="ID")
@modules_option
@common_options
def resume(execution_id: str, modules: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """Run an unfinished execution here until it finishes, showing its tasks live (a queued
    one, or one whose process died); a finished one just prints its result. Exits 0 when it
    completed, 1 otherwise."""
    ref = parse_id(execution_id)
    import_modules(modules)
    out = console()
    with open_engine(db) as engine:
        key = resolve_id(engine, ref)
        result = workflow_execution(engine, key, "resumed here (a worker with --broker does)")
        if not result.done:
            if registered(result.workflow) is None:
                raise CLIError(
                    f"workflow {result.workflow!r} is not imported: pass --module MODULE "
                    "(the module that defines it) so its tasks can run"
                )
            result = drive(engine, key, lambda: engine.resume(key), out, as_json)
        finish_run(engine, result, out, db, as_json, modules)


@cli.command()
@click.argument("execution_id", metavar="ID")
@click.argument("name", metavar="NAME")
@click.option(
    "--payload",
    "payload_arg",
    metavar="JSON|@FILE",
    envvar="DURABLY_SEND_PAYLOAD",
    show_envvar=True,
    help="The event's payload: any JSON value (strings quoted: '\"yes\"'), "
    "@path/to/file.json, or @- for stdin [default: null].",
)
@click.option(
    "--key",
    metavar="KEY",
    envvar="DURABLY_SEND_KEY",
    show_envvar=True,
    help="Idempotency key: a second event sent with this key is ignored.",
)
@common_options
def send(
    execution_id: str,
    name: str,
    payload_arg: str | None,
    key: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Send the event NAME to an execution: the task waiting for it (now or later) receives
    the payload in its context. Exits 0 also when KEY was sent already (nothing stored)."""
    ref = parse_id(execution_id)
    payload = parse_payload(payload_arg)
    if key is not None and not key:
        raise CLIError("--key must not be empty")
    with open_engine(db) as engine:
        target = resolve_id(engine, ref)
        stored = engine.send(target, name, payload, key=key)
    if as_json:
        print_json({"id": str(target), "event": name, "key": key, "stored": stored})
    elif stored:
        click.echo(f"event {name!r} sent to execution {target}")
    else:
        click.echo(f"event {name!r} with key {key!r} was sent to {target} already: ignored")


def workflow_execution(engine: Engine, key: UUID, cannot: str) -> ExecutionResult:
    found = find_execution(engine, key)
    if not isinstance(found, ExecutionResult):
        raise CLIError(f"{key} is a saga execution: sagas are not {cannot}")
    return found


def drive(
    engine: Engine, key: UUID, work: Callable[[], object], out: Console, as_json: bool
) -> ExecutionResult:
    """Run ``work`` to the end of the execution, its tasks shown live unless ``--json``."""
    try:
        if as_json:
            return run_quietly(engine, key, work)
        return follow(engine, key, work, out)
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: execution {key} is unfinished; durably resume {key} "
            "(or a worker) continues it",
            err=True,
        )
        raise click.exceptions.Exit(130) from None


@cli.command()
@click.argument("execution_id", metavar="ID")
@modules_option
@common_options
def retry(execution_id: str, modules: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """Run the failed, skipped and abandoned tasks of a failed or cancelled execution again,
    keeping completed ones. Exits 0 when it then completes, 1 otherwise."""
    ref = parse_id(execution_id)
    import_modules(modules)
    out = console()
    with open_engine(db) as engine:
        key = resolve_id(engine, ref)
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
    ref = parse_id(execution_id)
    patch = dict(parse_assignment(a) for a in assignments)
    import_modules(modules)
    out = console()
    with open_engine(db) as engine:
        key = resolve_id(engine, ref)
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
