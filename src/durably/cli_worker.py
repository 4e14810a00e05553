"""``durably worker``: serve queued executions, saga participants and saga replies."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from .backends import open_store, resolve_url
from .broker import Broker, InMemoryBroker, broker_from_url
from .cli_common import (
    CLIError,
    cli,
    common_options,
    one_line,
    open_engine,
)
from .cli_logging import LEVELS, worker_logs
from .cli_ops import duration_option
from .loading import (
    import_modules,
    top_level_brokers,
    top_level_sagas,
    top_level_workflows,
)
from .logs import fields as log_fields
from .repository import Repository
from .saga import Saga
from .saga_manager import DEFAULT_REPLY_TO
from .saga_service import SagaService
from .workflow import Workflow

if TYPE_CHECKING:
    from .worker import Worker


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
@click.option(
    "--retain",
    metavar="AGE",
    envvar="DURABLY_RETAIN",
    show_envvar=True,
    help="Prune, in the background, executions that finished longer ago than AGE (30d, 12h, "
    "...), as `durably prune --older-than AGE` does [default: keep everything].",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    envvar="DURABLY_LOG_LEVEL",
    show_envvar=True,
    help="durably's log records at this level and above go to stderr, one line each (JSON "
    "lines with --json), unless the modules configured logging themselves.",
)
@click.option(
    "--capture-logs/--no-capture-logs",
    default=False,
    envvar="DURABLY_CAPTURE_LOGS",
    show_envvar=True,
    help="Store with each attempt what any logger emits on the task's thread or asyncio task "
    "while it runs, not only handle.logger's records.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    envvar="DURABLY_METRICS_PORT",
    show_envvar=True,
    help="Serve Prometheus metrics on this port at /metrics (pip install 'durably[metrics]') "
    "[default: no metrics].",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",
    show_default=True,
    envvar="DURABLY_METRICS_HOST",
    show_envvar=True,
    help="The address the metrics endpoint binds to.",
)
@common_options
def worker(
    modules: tuple[str, ...],
    concurrency: int | None,
    lease: float,
    broker_url: str | None,
    reply_to: str,
    retain: str | None,
    log_level: str,
    capture_logs: bool,
    metrics_port: int | None,
    metrics_host: str,
    db: str | None,
    as_json: bool,
) -> None:
    """Serve queued executions until SIGTERM or SIGINT.

    Registers every Workflow and saga defined at the top level of each MODULE, serves the
    participants (@broker.service) of its brokers and resumes paused sagas as their replies
    arrive.
    """
    retention = duration_option(retain, "--retain") if retain is not None else None
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
        stack.enter_context(worker_logs(log_level.upper(), as_json))
        if workflows or retention is not None:
            engine = stack.enter_context(
                open_engine(
                    db,
                    workflows=workflows,
                    lease=lease,
                    concurrency=concurrency,
                    capture_logs=capture_logs,
                )
            )
            try:
                serving = engine.worker(concurrency=concurrency, retain=retention)
            except ModuleNotFoundError as exc:
                if exc.name != "durably.worker":
                    raise
                raise CLIError(
                    "this build of durably has no worker (durably.worker is missing)"
                ) from exc
        if metrics_port is not None:
            stack.enter_context(serve_metrics(db, metrics_host, metrics_port, as_json))
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


@contextlib.contextmanager
def serve_metrics(db: str | None, host: str, port: int, as_json: bool) -> Iterator[None]:
    """Metrics for this process, read from its own store (scrapes never touch the worker's
    connections), until the worker stops."""
    from . import metrics

    store = open_store(db)
    try:
        served = metrics.start(store, Repository(), port, host)
    except metrics.MetricsUnavailable as exc:
        store.close()
        raise CLIError(str(exc)) from exc
    except OSError as exc:
        store.close()
        raise CLIError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    announce(as_json, "metrics_serving", f"metrics on http://{host}:{served.port}/metrics")
    try:
        yield
    finally:
        metrics.stop()
        store.close()


def announce(as_json: bool, action: str, message: str, **fields: Any) -> None:
    if as_json:
        line = {**log_fields(action), "message": message, **fields}
        click.echo(json.dumps(line))
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
