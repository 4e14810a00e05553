"""The ``durably`` command line: run, serve, inspect and repair executions (SPEC §6).

Every option has an environment-variable twin, shown in ``--help``. Every error goes through
one handler (:class:`DurablyGroup`), which prints it on one line and exits 1.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from . import __version__, codec
from .context import Context
from .engine import Engine
from .exceptions import (
    DurablyError,
    ExecutionNotFound,
    ExecutionStateError,
    SagaExecutionNotFoundException,
)
from .merge import merge
from .results import EXECUTION_TERMINAL, ExecutionResult, TaskResult
from .store import parse_timestamp, resolve_url
from .workflow import Workflow, registered

if TYPE_CHECKING:
    from .saga_repository import SagaExecutionRepository, SagaExecutionSummary

F = TypeVar("F", bound=Callable[..., Any])

POLL_SECONDS = 0.1
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
STYLES = {
    "completed": "green",
    "finished": "green",
    "failed": "bold red",
    "errored": "bold red",
    "abandoned": "bold magenta",
    "cancelled": "yellow",
    "skipped": "yellow",
    "paused": "yellow",
    "running": "cyan",
    "ready": "blue",
    "pending": "blue",
    "created": "blue",
    "not_started": "dim",
}
SAGA_TERMINAL = frozenset({"finished", "errored"})


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


# -- importing user code ----------------------------------------------------------------------


def add_cwd_to_path() -> None:
    """Like uvicorn: modules in the current directory are importable by name."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_module(name: str) -> ModuleType:
    if name.endswith(".py") or "/" in name or "\\" in name:
        stem = name.removesuffix(".py").replace("/", ".").replace("\\", ".").strip(".")
        raise CLIError(
            f"{name!r} is a file path: give a module name instead (e.g. {stem!r}), "
            "run from the directory that contains it"
        )
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise CLIError(f"{name!r} is not a module name (e.g. 'flows' or 'pkg.flows')")
    add_cwd_to_path()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise CLIError(
                f"cannot import module {name!r}: no module named {exc.name!r} "
                "(searched the current directory and sys.path)"
            ) from exc
        raise CLIError(
            f"error while importing module {name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise CLIError(
            f"error while importing module {name!r}: {type(exc).__name__}: {exc}"
        ) from exc


def top_level_workflows(module: ModuleType) -> list[Workflow]:
    found: dict[int, Workflow] = {}
    for attr, value in vars(module).items():
        if isinstance(value, Workflow) and not attr.startswith("_"):
            found.setdefault(id(value), value)
    return list(found.values())


def top_level_sagas(module: ModuleType) -> list[Any]:
    """Committed sagas register themselves on import; these are only counted."""
    try:
        from .saga import Saga
    except ModuleNotFoundError as exc:
        if exc.name == "durably.saga":
            return []
        raise
    return [value for value in vars(module).values() if isinstance(value, Saga)]


def load_workflow(spec: str) -> Workflow:
    """``module:attribute`` (or ``module`` alone when it defines exactly one workflow)."""
    module_name, sep, attr = spec.partition(":")
    module = import_module(module_name)
    workflows = top_level_workflows(module)
    names = ", ".join(
        attr_name
        for attr_name, value in vars(module).items()
        if isinstance(value, Workflow) and not attr_name.startswith("_")
    )
    if not sep:
        if len(workflows) == 1:
            return workflows[0]
        if not workflows:
            raise CLIError(f"module {module_name!r} defines no durably.Workflow at the top level")
        raise CLIError(
            f"module {module_name!r} defines several workflows ({names}): "
            f"name one as {module_name}:ATTRIBUTE"
        )
    if not attr:
        raise CLIError(f"{spec!r}: name the workflow after the colon, as MODULE:ATTRIBUTE")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            hint = f" (workflows in it: {names})" if names else ""
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not isinstance(obj, Workflow):
        raise CLIError(f"{spec!r} is a {type(obj).__name__}, not a durably.Workflow")
    return obj


def import_modules(names: Iterable[str]) -> list[ModuleType]:
    return [import_module(name) for name in names]


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


# -- formatting --------------------------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """A context value as plain JSON (special types tagged, as stored)."""
    return json.loads(codec.dumps_value(value))


def encode_context(ctx: Mapping[str, Any] | None) -> Any:
    if ctx is None:
        return None
    if isinstance(ctx, Context):
        return json.loads(ctx.to_json())
    return json.loads(codec.dumps(ctx))


def show_value(value: Any, limit: int | None = 80) -> str:
    """JSON for plain values, ``repr`` for the types JSON cannot hold."""
    try:
        text = codec.dumps_value(value)
    except DurablyError:
        text = repr(value)
    else:
        if codec.TAG in text:
            text = repr(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def clock(moment: datetime | None, *, date: bool = False) -> str:
    if moment is None:
        return ""
    local = moment.astimezone()
    if date:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime("%H:%M:%S.%f")[:-3]


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def styled(status: str | None) -> Text:
    status = status or ""
    return Text(status, style=STYLES.get(status, ""))


def context_table(ctx: Mapping[str, Any], title: str | None = None) -> RenderableType:
    if not ctx:
        return Text("(empty context)", style="dim")
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in ctx.items():
        table.add_row(key, show_value(value, limit=None))
    return table


# -- context diffs ---------------------------------------------------------------------------


@dataclass
class Diff:
    """How a task's output differs from the input it received."""

    added: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def between(cls, before: Mapping[str, Any], after: Mapping[str, Any]) -> Diff:
        diff = cls()
        for key, value in after.items():
            if key not in before:
                diff.added[key] = value
            elif not _same(before[key], value):
                diff.changed[key] = (before[key], value)
        diff.removed = {key: value for key, value in before.items() if key not in after}
        return diff

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": {k: encode_value(v) for k, v in self.added.items()},
            "changed": {
                k: {"old": encode_value(old), "new": encode_value(new)}
                for k, (old, new) in self.changed.items()
            },
            "removed": list(self.removed),
        }

    def render(self) -> Text:
        if not self:
            return Text("    (no change)", style="dim")
        lines = Text()
        for key, value in self.added.items():
            lines.append(f"    + {key} = {show_value(value)}\n", style="green")
        for key, (old, new) in self.changed.items():
            lines.append(f"    ~ {key}: {show_value(old)} → {show_value(new)}\n", style="yellow")
        for key, value in self.removed.items():
            lines.append(f"    - {key} (was {show_value(value)})\n", style="red")
        lines.rstrip()
        return lines


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


@dataclass
class TaskInput:
    """What a task received, and where it came from (``basis`` is for people)."""

    data: dict[str, Any]
    basis: str


def initial_context(engine: Engine, execution_id: UUID) -> dict[str, Any]:
    """The context the execution started with (ExecutionResult holds only the final one)."""
    with engine.store.read() as tx:
        row = tx.fetch_one("get_execution", {"id": str(execution_id)})
        if row is None:
            return {}
        saved = tx.fetch_one("get_context", {"id": str(row["context_id"])})
    return codec.loads(saved["value"]) if saved else {}


def task_configurations(engine: Engine, execution_id: UUID) -> dict[str, dict[str, Any]]:
    """Each task's stored configuration (retry, merge, a fork's ``context_patch``...)."""
    with engine.store.read() as tx:
        rows = tx.fetch_all("get_tasks", {"id": str(execution_id)})
    return {row["task_name"]: json.loads(row["task_configuration"] or "{}") for row in rows}


def stored_dependencies(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]] | None:
    """Dependencies recorded with the tasks, if the engine records them (today it does not)."""
    found: dict[str, list[str]] = {}
    for name, config in configs.items():
        deps = config.get("dependencies")
        if not isinstance(deps, list):
            return None
        found[name] = [str(dep) for dep in deps]
    return found or None


def task_inputs(engine: Engine, result: ExecutionResult) -> tuple[dict[str, TaskInput], bool]:
    """Each completed task's input, rebuilt by SPEC §3.1 when the dependencies are known
    (exact), else the previous task's output in declaration order (approximate)."""
    initial = initial_context(engine, result.execution_id)
    configs = task_configurations(engine, result.execution_id)
    outputs = {name: dict(t.context) for name, t in result.tasks.items() if t.context is not None}
    wf = registered(result.workflow)
    dependencies: dict[str, list[str]] | None = None
    strategies: dict[str, Any] = {}
    if wf is not None and wf.version == result.version and set(wf.tasks) == set(result.tasks):
        dependencies = {name: list(task.dependencies) for name, task in wf.tasks.items()}
        strategies = {name: task.merge for name, task in wf.tasks.items()}
    else:
        dependencies = stored_dependencies(configs)
    inputs: dict[str, TaskInput] = {}
    if dependencies is not None:
        for name in result.tasks:
            deps = dependencies.get(name, [])
            if not deps:
                inputs[name] = TaskInput(initial, "the initial context")
                continue
            present = [(dep, outputs[dep]) for dep in deps if dep in outputs]
            strategy = strategies.get(name, "latest_wins")
            try:
                data = merge(strategy, present) if present else {}
            except Exception:
                continue
            how = (
                ""
                if len(present) < 2
                else f", merged {strategy if isinstance(strategy, str) else 'by callable'}"
            )
            inputs[name] = TaskInput(data, " + ".join(dep for dep, _ in present) + how)
        return patched(inputs, configs), True
    previous: tuple[str, dict[str, Any]] | None = None
    for name in result.tasks:
        if previous is None:
            inputs[name] = TaskInput(initial, "the initial context")
        else:
            inputs[name] = TaskInput(previous[1], f"{previous[0]} (the previous task)")
        if name in outputs:
            previous = (name, outputs[name])
    return patched(inputs, configs), False


def patched(
    inputs: dict[str, TaskInput], configs: Mapping[str, Mapping[str, Any]]
) -> dict[str, TaskInput]:
    """A fork's ``--set`` values are part of the forked task's input, not its changes."""
    for name, config in configs.items():
        patch = config.get("context_patch")
        if name in inputs and patch:
            # Stored as the codec's JSON text (older rows: as a JSON object).
            values = codec.loads(patch if isinstance(patch, str) else json.dumps(patch))
            basis = f"{inputs[name].basis}, with --set {', '.join(values)}"
            inputs[name] = TaskInput({**inputs[name].data, **values}, basis)
    return inputs


def task_diffs(
    engine: Engine, result: ExecutionResult
) -> tuple[dict[str, Diff], dict[str, TaskInput], bool]:
    inputs, exact = task_inputs(engine, result)
    diffs = {
        name: Diff.between(inputs[name].data, dict(task.context))
        for name, task in result.tasks.items()
        if task.context is not None and name in inputs
    }
    return diffs, inputs, exact


# -- workflow executions: JSON and tables ------------------------------------------------------


def summary_json(result: ExecutionResult) -> dict[str, Any]:
    return {
        "id": str(result.execution_id),
        "kind": "workflow",
        "workflow": result.workflow,
        "status": result.status,
        "version": result.version,
        "created_at": iso(result.created_at),
        "completed_at": iso(result.completed_at),
        "error": result.error,
    }


def task_json(task: TaskResult, diff: Diff | None, basis: TaskInput | None) -> dict[str, Any]:
    return {
        "status": task.status,
        "attempts": task.attempts,
        "error": task.error,
        "started_at": iso(task.started_at),
        "completed_at": iso(task.completed_at),
        "compensation": task.compensation,
        "context": encode_context(task.context),
        "input_from": basis.basis if basis else None,
        "diff": diff.to_json() if diff is not None else None,
    }


def execution_json(engine: Engine, result: ExecutionResult) -> dict[str, Any]:
    diffs, inputs, exact = task_diffs(engine, result)
    return {
        **summary_json(result),
        "context": encode_context(result.context),
        "diff_basis": "dependencies" if exact else "previous_task",
        "tasks": {
            name: task_json(task, diffs.get(name), inputs.get(name))
            for name, task in result.tasks.items()
        },
    }


def task_table(result: ExecutionResult, *, live: bool = False) -> RenderableType:
    """The task timeline; errors are listed under the table, where they have room."""
    table = Table(
        title=f"{result.workflow}  {result.execution_id}",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
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
        end = task.completed_at or (now if task.status == "running" else None)
        row: list[RenderableType] = [
            name,
            styled(task.status),
            str(task.attempts),
            clock(task.started_at),
            duration(task.started_at, end),
        ]
        if not live:
            row.append(styled(task.compensation) if task.compensation else "")
        table.add_row(*row)
        if task.error:
            errors.append(f"  {name} ({task.status}): {task.error}\n")
    errors.rstrip()
    return Group(table, errors) if errors else table


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
    if result.error:
        text.append(f"\nerror: {result.error}", style="red")
    return text


def diff_section(engine: Engine, result: ExecutionResult) -> RenderableType:
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
        head = Text(f"  {name}", style="bold")
        if name in diffs:
            head.append(f"  (input: {inputs[name].basis})", style="dim")
            parts.extend([head, diffs[name].render()])
        else:
            head.append(f"  {task.status}, no saved context", style="dim")
            parts.append(head)
    return Group(*parts)


def render_execution(engine: Engine, result: ExecutionResult) -> RenderableType:
    """The full ``show`` view: header, task timeline, context diffs, final context."""
    return Group(
        execution_header(result),
        Text(),
        task_table(result),
        Text(),
        diff_section(engine, result),
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


def follow(
    engine: Engine,
    execution_id: UUID,
    work: Callable[[], object],
    out: Console,
    *,
    tolerate: Callable[[BaseException], bool] = lambda exc: False,
) -> ExecutionResult:
    """Run ``work`` on a thread while a live table shows the execution's tasks, polled from
    the database; return the result once the execution is terminal."""
    from rich.live import Live

    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="durably-cli-run", daemon=True)
    result = engine.get(execution_id)
    with Live(task_table(result, live=True), console=out, refresh_per_second=10) as live:
        thread.start()
        while True:
            thread.join(POLL_SECONDS)
            result = engine.get(execution_id)
            live.update(task_table(result, live=True))
            if failure and not tolerate(failure[0]):
                raise failure[0]
            if not thread.is_alive():
                if result.status in EXECUTION_TERMINAL or not failure:
                    break
                time.sleep(POLL_SECONDS)  # another process runs it: keep watching
    if not out.is_terminal:
        out.line()  # Live ends its last render with a newline on terminals only
    return result


def run_quietly(
    engine: Engine,
    execution_id: UUID,
    work: Callable[[], object],
    *,
    tolerate: Callable[[BaseException], bool] = lambda exc: False,
) -> ExecutionResult:
    try:
        work()
    except Exception as exc:
        if not tolerate(exc):
            raise
        return engine.wait(execution_id)
    return engine.get(execution_id)


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
    if as_json:
        print_json(execution_json(engine, result))
    else:
        out.print(outcome(result))
        out.print(context_table(result.context, title="Final context"))
        out.print(inspect_hint(result.execution_id, db, modules), soft_wrap=True)
    if result.status != "completed":
        raise click.exceptions.Exit(1)


# -- saga executions: listed and shown beside workflow executions -----------------------------


def saga_repository(engine: Engine) -> SagaExecutionRepository | None:
    """The saga store on the engine's database (None in a build without sagas)."""
    try:
        from .saga_repository import SagaExecutionRepository
    except ModuleNotFoundError as exc:
        if exc.name == "durably.saga_repository":
            return None
        raise
    return SagaExecutionRepository(store=engine.store)


def saga_summary_json(execution: SagaExecutionSummary) -> dict[str, Any]:
    status = execution.status.value
    return {
        "id": str(execution.id),
        "kind": "saga",
        "workflow": execution.saga_name,
        "status": status,
        "fingerprint": execution.fingerprint,
        "created_at": iso(execution.created_at),
        "completed_at": iso(execution.updated_at) if status in SAGA_TERMINAL else None,
        "error": execution.error,
    }


def saga_json(execution: SagaExecutionSummary) -> dict[str, Any]:
    return {
        **saga_summary_json(execution),
        "context": encode_context(execution.context),
        "rollback_errors": list(execution.rollback_errors),
        "steps": [
            {
                "path": step.path,
                "name": step.name,
                "kind": step.kind,
                "status": step.status.value,
                "error": step.error,
            }
            for step in execution.steps
        ],
    }


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
    table = Table(
        title="Steps",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
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


def find_saga(engine: Engine, execution_id: UUID) -> SagaExecutionSummary | None:
    repo = saga_repository(engine)
    if repo is None:
        return None
    try:
        return repo.load_sync(execution_id)
    except SagaExecutionNotFoundException:
        return None


def _moment(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError):
        return None


def not_found(execution_id: UUID) -> CLIError:
    return CLIError(f"no execution with id {execution_id}")


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
                f"(durably worker {target.partition(':')[0]}) will resume it",
                err=True,
            )
            raise click.exceptions.Exit(130) from None
        finish_run(engine, result, out, db, as_json, [target.partition(":")[0]])


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
@common_options
def worker(
    modules: tuple[str, ...], concurrency: int | None, lease: float, db: str | None, as_json: bool
) -> None:
    """Serve queued executions until SIGTERM or SIGINT.

    Registers every Workflow (and saga) defined at the top level of each MODULE.
    """
    imported = import_modules(modules)
    workflows: list[Workflow] = []
    sagas: list[Any] = []
    for module in imported:
        workflows.extend(wf for wf in top_level_workflows(module) if wf not in workflows)
        sagas.extend(top_level_sagas(module))
    if not workflows and not sagas:
        raise CLIError(
            f"no durably.Workflow or saga at the top level of {', '.join(modules)}: "
            "nothing to serve"
        )
    with open_engine(db, workflows=workflows, lease=lease, concurrency=concurrency) as engine:
        try:
            serving = engine.worker(concurrency=concurrency)
        except ModuleNotFoundError as exc:
            if exc.name != "durably.worker":
                raise
            raise CLIError(
                "this build of durably has no worker (durably.worker is missing)"
            ) from exc
        announce(
            as_json,
            "worker_started",
            f"worker serving {len(workflows)} workflow(s) "
            f"({', '.join(wf.name for wf in workflows) or '-'}) and {len(sagas)} saga(s) "
            f"on {resolve_url(db)}; Ctrl-C or SIGTERM to stop",
            workflows=[wf.name for wf in workflows],
            sagas=len(sagas),
            database=resolve_url(db),
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
            serving.stop()

        previous = install_handlers(stop)
        try:
            serving.run()
        finally:
            restore_handlers(previous)
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
        rows = [summary_json(r) for r in engine.list(status=status, workflow=workflow, limit=limit)]
        rows.extend(saga_rows(engine, status, workflow, limit))
    rows.sort(key=lambda row: row["created_at"] or "", reverse=True)
    rows = rows[:limit]
    if as_json:
        print_json(rows)
        return
    out = console()
    if not rows:
        out.print(Text("no executions", style="dim"))
        return
    out.print(executions_table(rows, out.width))


def executions_table(rows: list[dict[str, Any]], width: int) -> Table:
    """id, workflow and status always; then kind, created, took and error while they fit."""
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
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
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


def saga_rows(
    engine: Engine, status: str | None, name: str | None, limit: int
) -> list[dict[str, Any]]:
    repo = saga_repository(engine)
    if repo is None:
        return []
    rows = [saga_summary_json(e) for e in repo.list_executions(status=status, limit=limit)]
    return [row for row in rows if name is None or row["workflow"] == name]


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
        try:
            result = engine.get(key)
        except ExecutionNotFound:
            saga = find_saga(engine, key)
            if saga is None:
                raise not_found(key) from None
            if as_json:
                print_json(saga_json(saga))
            else:
                console().print(render_saga(saga))
            return
        if as_json:
            print_json(execution_json(engine, result))
        else:
            console().print(render_execution(engine, result))


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
        try:
            result = engine.get(key)
        except ExecutionNotFound:
            saga = find_saga(engine, key)
            if saga is None:
                raise not_found(key) from None
            if task is not None:
                raise CLIError(
                    f"{key} is a saga execution: it has no tasks (drop --task)"
                ) from None
            data = saga.context
        else:
            if task is None:
                data = result.context
            elif task not in result.tasks:
                raise CLIError(
                    f"execution {key} has no task {task!r} (tasks: {', '.join(result.tasks)})"
                )
            elif result.tasks[task].context is None:
                raise CLIError(
                    f"task {task!r} did not complete ({result.tasks[task].status}): "
                    "it saved no context"
                )
            else:
                data = engine.task_context(key, task)
    if as_json:
        print_json(encode_context(data))
    else:
        console().print(context_table(data))


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


@cli.command()
@click.argument("execution_id", metavar="ID")
@common_options
def cancel(execution_id: str, db: str | None, as_json: bool) -> None:
    """Cancel an execution: tasks not started are skipped, running ones finish."""
    key = parse_uuid(execution_id)
    with open_engine(db) as engine:
        try:
            before = engine.get(key)
        except ExecutionNotFound:
            if find_saga(engine, key) is not None:
                raise CLIError(f"{key} is a saga execution: sagas cannot be cancelled") from None
            raise not_found(key) from None
        if before.status in EXECUTION_TERMINAL and before.status != "cancelled":
            raise CLIError(f"execution {key} is already {before.status}: nothing to cancel")
        result = engine.cancel(key)
    if as_json:
        print_json(summary_json(result))
    else:
        console().print(outcome(result))


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
            raise CLIError(
                f"execution {key} has no task {from_task!r} (tasks: {', '.join(result.tasks)})"
            )
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

    store = open_store(db)
    try:
        applied = store.migrate()
        version = store.schema_version()
    finally:
        store.close()
    if as_json:
        print_json({"database": resolve_url(db), "applied": applied, "schema_version": version})
    else:
        click.echo(f"{resolve_url(db)}: schema at version {version}, up to date")


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
