"""The ``durably`` command line: run, serve, inspect and repair executions (SPEC §6).

Every option has an environment-variable twin, shown in ``--help``. Every error goes through
one handler (:class:`DurablyGroup`), which prints it on one line and exits 1.

What the commands print is in :mod:`durably.views` (tables) and :mod:`durably.json_views`
(``--json``); :mod:`durably.loading` imports the user's modules.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click
from rich.console import Console
from rich.text import Text

from . import __version__, codec
from .broker import Broker, InMemoryBroker, broker_from_url
from .engine import Engine
from .exceptions import DurablyError, ExecutionStateError
from .json_views import encode_context, execution_json, saga_json, summary_json
from .loading import (
    import_modules,
    load_workflow,
    top_level_brokers,
    top_level_sagas,
    top_level_workflows,
)
from .lookup import find_execution, list_executions
from .progress import follow, run_quietly
from .results import EXECUTION_TERMINAL, ExecutionResult
from .saga import Saga
from .saga_manager import DEFAULT_REPLY_TO
from .saga_service import SagaService
from .store import resolve_url
from .views import (
    context_table,
    executions_table,
    inspect_hint,
    outcome,
    render_execution,
    render_saga,
    task_table,
)
from .workflow import Workflow, registered

if TYPE_CHECKING:
    from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = (
    # workflow executions
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
    "paused",
    # saga executions
    "created",
    "finished",
    "errored",
)


class CLIError(click.ClickException):
    """A user error the CLI explains in one line (exit status 1)."""


def one_line(message: str) -> str:
    return " ".join(message.split())


class DurablyGroup(click.Group):
    """The central error handler: a failure is one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except DurablyError as exc:
            raise CLIError(one_line(str(exc))) from exc
        except Exception as exc:
            if ctx.params.get("traceback"):
                raise
            raise CLIError(one_line(f"{type(exc).__name__}: {exc}")) from exc


# -- options shared by every command ------------------------------------------------------------


def common_options(fn: F) -> F:
    """``--db`` and ``--json``, accepted by every subcommand after its name."""
    fn = click.option(
        "--json",
        "as_json",
        is_flag=True,
        envvar="DURABLY_JSON",
        show_envvar=True,
        help="Print machine-readable JSON instead of tables.",
    )(fn)
    return click.option(
        "--db",
        metavar="URL",
        envvar="DURABLY_DATABASE_URL",
        show_envvar=True,
        help="Database URL: sqlite:///path.db or postgresql://user@host/db "
        "[default: sqlite:///durably.db]",
    )(fn)


def modules_option(fn: F) -> F:
    return click.option(
        "-m",
        "--module",
        "modules",
        multiple=True,
        metavar="MODULE",
        envvar="DURABLY_MODULES",
        show_envvar=True,
        help="Import MODULE first (repeatable), so that its workflows are registered: "
        "retry and fork run their tasks, show computes each task's exact input.",
    )(fn)


def console() -> Console:
    # Resolved per call: sys.stdout is swapped by test runners and pagers.
    return Console(highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def open_engine(db: str | None, **options: Any) -> Engine:
    return Engine(db, **options)


# -- parsing values ----------------------------------------------------------------------------


def parse_uuid(value: str) -> UUID:
    try:
        return UUID(value.strip())
    except ValueError:
        raise CLIError(f"{value!r} is not a valid execution id (expected a UUID)") from None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


def parse_context(value: str | None) -> dict[str, Any]:
    """``--context``: a JSON object, ``@file`` holding one, or ``@-`` for stdin."""
    if value is None:
        return {}
    source, text = "--context", value
    if value.startswith("@"):
        path = value[1:]
        source = "the context on stdin" if path == "-" else f"context file {path!r}"
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except OSError as exc:
            raise CLIError(f"cannot read context file {path!r}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise CLIError(f"{source} must be a JSON object, not a JSON {_json_type(data)}")
    # Decode durably's tagged values ({"$durably": "datetime", ...}) like a stored context.
    return codec.loads(json.dumps(data))


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``--set key=json``."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CLIError(f"--set {assignment!r}: expected KEY=JSON, e.g. --set 'amount=42'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CLIError(
            f"--set {assignment!r}: the value is not valid JSON ({exc.msg}); "
            f"quote strings: --set '{key}=\"{raw}\"'"
        ) from exc
    return key, codec.loads(json.dumps({key: value}))[key]


def claimed_elsewhere(exc: BaseException) -> bool:
    """``start`` queues the execution: a worker on the same database may claim it before
    ``resume`` does, which then refuses to take it over; the worker runs it instead."""
    return isinstance(exc, ExecutionStateError)


def finish_run(
    engine: Engine,
    result: ExecutionResult,
    out: Console,
    db: str | None,
    as_json: bool,
    modules: Sequence[str] = (),
) -> None:
    """What run, retry and fork print last; the exit status says whether it completed."""
    if as_json:
        print_json(execution_json(engine, result))
    else:
        out.print(outcome(result))
        out.print(context_table(result.context, title="Final context"))
        out.print(inspect_hint(result.execution_id, db, modules), soft_wrap=True)
    if result.status != "completed":
        raise click.exceptions.Exit(1)


def require_workflow(engine: Engine, key: UUID) -> ExecutionResult:
    """The execution, once its workflow's definition is imported (retry and fork run it)."""
    result = engine.get(key)
    wf = registered(result.workflow)
    if wf is None:
        raise CLIError(
            f"workflow {result.workflow!r} is not imported: pass --module MODULE "
            "(the module that defines it) so its tasks can run"
        )
    if wf.version != result.version:
        raise CLIError(
            f"workflow {result.workflow!r} changed since execution {key} started "
            f"(version {result.version}, imported {wf.version}): only the same definition "
            "can continue it"
        )
    return result


def unknown_task(key: UUID, task: str, result: ExecutionResult) -> CLIError:
    return CLIError(f"execution {key} has no task {task!r} (tasks: {', '.join(result.tasks)})")


# -- the commands ------------------------------------------------------------------------------


@click.group(cls=DurablyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="durably")
@click.option(
    "--traceback",
    is_flag=True,
    envvar="DURABLY_TRACEBACK",
    show_envvar=True,
    help="Show the full traceback of unexpected errors (for bug reports).",
)
def cli(traceback: bool) -> None:
    """Durable workflows and sagas sharing a persisted context."""


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
@click.argument("modules", metavar="MODULE...", nargs=-1, required=True)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    envvar="DURABLY_CONCURRENCY",
    show_envvar=True,
    help="Tasks run at once by this worker [default: CPU count + 4, at most 32].",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    envvar="DURABLY_LEASE",
    show_envvar=True,
    help="Seconds without a heartbeat after which a claim is stale and taken over.",
)
@click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    envvar="DURABLY_BROKER_URL",
    show_envvar=True,
    help="The broker saga replies arrive on, to resume paused sagas: amqp://... (RabbitMQ), "
    "nats://... (NATS JetStream) or memory:// [default: the one broker the modules define].",
)
@click.option(
    "--reply-to",
    metavar="TOPIC",
    default=DEFAULT_REPLY_TO,
    show_default=True,
    envvar="DURABLY_REPLY_TO",
    show_envvar=True,
    help="The topic of saga replies: the reply_to of the SagaManagers that start the sagas.",
)
@common_options
def worker(
    modules: tuple[str, ...],
    concurrency: int | None,
    lease: float,
    broker_url: str | None,
    reply_to: str,
    db: str | None,
    as_json: bool,
) -> None:
    """Serve queued executions until SIGTERM or SIGINT.

    Registers every Workflow and saga defined at the top level of each MODULE, serves the
    participants (@broker.service) of its brokers and resumes paused sagas as their replies
    arrive.
    """
    imported = import_modules(modules)
    workflows: list[Workflow] = []
    sagas: list[Saga] = []
    brokers: list[Broker] = []
    for module in imported:
        workflows.extend(wf for wf in top_level_workflows(module) if wf not in workflows)
        sagas.extend(saga for saga in top_level_sagas(module) if saga not in sagas)
        brokers.extend(b for b in top_level_brokers(module) if b not in brokers)
    if not workflows and not sagas and not any(b.services for b in brokers):
        raise CLIError(
            f"no durably.Workflow, saga or broker service at the top level of "
            f"{', '.join(modules)}: nothing to serve"
        )
    stopped = threading.Event()
    serving: Worker | None = None
    service: SagaService | None = None

    def halt() -> None:
        stopped.set()
        if serving is not None:
            serving.stop()

    with contextlib.ExitStack() as stack:
        if workflows:
            engine = stack.enter_context(
                open_engine(db, workflows=workflows, lease=lease, concurrency=concurrency)
            )
            try:
                serving = engine.worker(concurrency=concurrency)
            except ModuleNotFoundError as exc:
                if exc.name != "durably.worker":
                    raise
                raise CLIError(
                    "this build of durably has no worker (durably.worker is missing)"
                ) from exc
        replies = "-"
        if sagas or brokers or broker_url:
            broker = broker_from_url(broker_url) if broker_url else None
            try:
                service = SagaService(
                    db, sagas, brokers, broker, reply_to=reply_to, on_error=lambda _: halt()
                )
            except ValueError as exc:
                raise CLIError(str(exc)) from exc
            if sagas and (service.pool is None or isinstance(service.pool, InMemoryBroker)):
                announce(
                    as_json,
                    "saga_broker_warning",
                    "warning: paused sagas resume only through a network broker (an "
                    "InMemoryBroker lives in one process): pass --broker amqp://... or nats://...",
                )
            service.start()
            stack.callback(service.stop)
            replies = repr(service.pool) if service.pool is not None else "in-memory"
        announce(
            as_json,
            "worker_started",
            f"worker serving {len(workflows)} workflow(s) "
            f"({', '.join(wf.name for wf in workflows) or '-'}) and {len(sagas)} saga(s) "
            f"on {resolve_url(db)}"
            + (f", saga replies from {replies}" if sagas else "")
            + "; Ctrl-C or SIGTERM to stop",
            workflows=[wf.name for wf in workflows],
            sagas=len(sagas),
            database=resolve_url(db),
            broker=replies,
            lease=lease,
            concurrency=concurrency,
        )
        stops = 0

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stops
            stops += 1
            if stops > 1:  # a second Ctrl-C: stop waiting for running tasks
                raise KeyboardInterrupt
            announce(as_json, "worker_stopping", "stopping: finishing running tasks…")
            halt()

        previous = install_handlers(stop)
        try:
            if serving is not None:
                serving.run()
            else:
                while not stopped.wait(0.5):  # a timeout: signal handlers run between waits
                    pass
        finally:
            restore_handlers(previous)
    if service is not None and service.error is not None:
        raise CLIError(one_line(f"saga service failed: {service.error}"))
    announce(as_json, "worker_stopped", "worker stopped")


def announce(as_json: bool, action: str, message: str, **fields: Any) -> None:
    if as_json:
        click.echo(json.dumps({"action": action, "message": message, **fields}))
    else:
        click.echo(message, err=True)


Handler = Callable[[int, FrameType | None], Any]


def install_handlers(handler: Handler) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def restore_handlers(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


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
@common_options
def list_(
    status: str | None, workflow: str | None, limit: int, db: str | None, as_json: bool
) -> None:
    """List executions (workflows and sagas), newest first."""
    status = status.lower() if status else None
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
@common_options
def show(execution_id: str, modules: tuple[str, ...], db: str | None, as_json: bool) -> None:
    """Show an execution: its task timeline, attempts, errors, compensations and each
    task's context change as a diff against its input."""
    key = parse_uuid(execution_id)
    import_modules(modules)
    with open_engine(db) as engine:
        found = find_execution(engine, key)
        if not isinstance(found, ExecutionResult):
            if as_json:
                print_json(saga_json(found))
            else:
                console().print(render_saga(found))
        elif as_json:
            print_json(execution_json(engine, found))
        else:
            console().print(render_execution(engine, found))


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
    key = parse_uuid(execution_id)
    import_modules(modules)
    data: Mapping[str, Any]
    with open_engine(db) as engine:
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


@cli.command()
@click.argument("execution_id", metavar="ID")
@modules_option
@click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    envvar="DURABLY_BROKER_URL",
    show_envvar=True,
    help="Sagas: the broker remote compensations go out on [default: the one broker the "
    "modules define; none: they wait in the outbox for a worker].",
)
@common_options
def cancel(
    execution_id: str,
    modules: tuple[str, ...],
    broker_url: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Cancel an execution: tasks not started are skipped, running ones finish. A saga is
    rolled back: its finished steps are compensated in reverse order (import its module with
    -m) and it ends errored."""
    key = parse_uuid(execution_id)
    with open_engine(db) as engine:
        before = find_execution(engine, key)
        if isinstance(before, ExecutionResult):
            if before.status in EXECUTION_TERMINAL and before.status != "cancelled":
                raise CLIError(f"execution {key} is already {before.status}: nothing to cancel")
            result = engine.cancel(key)
            if as_json:
                print_json(summary_json(result))
            else:
                console().print(outcome(result))
            return
    _cancel_saga(key, modules, broker_url, db, as_json)


def _cancel_saga(
    key: UUID, modules: tuple[str, ...], broker_url: str | None, db: str | None, as_json: bool
) -> None:
    from .saga_repository import SagaExecutionRepository
    from .saga_service import rollback_saga

    loaded = import_modules(modules)
    brokers = [b for module in loaded for b in top_level_brokers(module)]
    broker = broker_from_url(broker_url) if broker_url else None
    if broker is None and len(brokers) == 1 and not isinstance(brokers[0], InMemoryBroker):
        broker = brokers[0]
    rollback_saga(db, key, broker)
    repo = SagaExecutionRepository(db)
    try:
        summary = repo.load_sync(key)
    finally:
        repo.close()
    if as_json:
        print_json(saga_json(summary))
    else:
        console().print(render_saga(summary))


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


@cli.command()
@common_options
def migrate(db: str | None, as_json: bool) -> None:
    """Bring the database schema up to date (opening a database also does this)."""
    from .store import open_store

    store = open_store(db, migrate=False)
    try:
        applied = store.migrate()
        version = store.schema_version()
    finally:
        store.close()
    if as_json:
        print_json({"database": resolve_url(db), "applied": applied, "schema_version": version})
    else:
        click.echo(
            f"{resolve_url(db)}: {applied} migration(s) applied, schema at version {version}"
        )


@cli.command()
@common_options
def demo(db: str | None, as_json: bool) -> None:
    """Run an order-processing workflow (fan-out, fan-in merge, a retry, a compensation)
    and a saga, and show how to inspect them. Uses a temporary SQLite file unless --db."""
    from .demo import run_demo

    summary = run_demo(db, console(), quiet=as_json)
    if as_json:
        print_json(summary)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``durably`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="durably")


if __name__ == "__main__":  # pragma: no cover
    main()
