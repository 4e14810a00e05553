"""What every ``durably`` command shares: the group with its one error handler, the
``--db`` / ``--json`` options, the console, and parsing of contexts, payloads and ``--set``
(ids are parsed and resolved by :mod:`durably.lookup`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click
from rich.console import Console

from . import __version__, codec
from .engine import Engine
from .exceptions import DurablyError, ExecutionStateError
from .json_views import execution_json
from .results import ExecutionResult
from .views import (
    context_table,
    inspect_hint,
    outcome,
)
from .workflow import registered

if TYPE_CHECKING:
    pass
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


# Where each command is defined: importing its module registers it on the group. A command's
# module is imported when the command runs (or ``--help`` lists them all), so that ``durably
# list`` loads what listing needs and not the worker, the sagas or the dashboard.
COMMANDS = {
    **dict.fromkeys(("run", "start", "resume", "send", "retry", "fork"), "cli_run"),
    **dict.fromkeys(("list", "show", "context"), "cli_inspect"),
    **dict.fromkeys(("prune", "schedules"), "cli_ops"),
    **dict.fromkeys(("cancel", "migrate", "demo"), "cli"),
    "worker": "cli_worker",
    "dashboard": "cli_dashboard",
}


class DurablyGroup(click.Group):
    """The central error handler: a failure is one line on stderr and exit status 1. Its
    commands are imported from :data:`COMMANDS` when asked for (click's lazy subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import_module(f"{__package__}.{COMMANDS[cmd_name]}")
        return self.commands.get(cmd_name)

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


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


def _read_json(value: str, option: str, what: str) -> tuple[str, Any]:
    """An option's JSON: inline, ``@file`` or ``@-`` (stdin); returns where it came from
    (for messages) and the parsed value."""
    source, text = option, value
    if value.startswith("@"):
        path = value[1:]
        source = f"the {what} on stdin" if path == "-" else f"{what} file {path!r}"
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except OSError as exc:
            raise CLIError(f"cannot read {what} file {path!r}: {exc.strerror or exc}") from exc
    try:
        return source, json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc


def parse_context(value: str | None) -> dict[str, Any]:
    """``--context``: a JSON object, ``@file`` holding one, or ``@-`` for stdin."""
    if value is None:
        return {}
    source, data = _read_json(value, "--context", "context")
    if not isinstance(data, dict):
        raise CLIError(f"{source} must be a JSON object, not a JSON {_json_type(data)}")
    # Decode durably's tagged values ({"$durably": "datetime", ...}) like a stored context.
    return codec.loads(json.dumps(data))


def parse_payload(value: str | None) -> Any:
    """``send --payload``: any JSON value, ``@file`` holding one, or ``@-`` for stdin."""
    if value is None:
        return None
    _, data = _read_json(value, "--payload", "payload")
    return codec.loads_value(json.dumps(data))


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
