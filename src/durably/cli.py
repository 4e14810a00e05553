"""The ``durably`` command line: run, serve, inspect and repair executions (SPEC §6).

The group and what the commands share are in :mod:`durably.cli_common`; the commands in
:mod:`durably.cli_run` (run, start, resume, send, retry, fork), :mod:`durably.cli_worker`,
:mod:`durably.cli_inspect` (list, show, context), :mod:`durably.cli_ops` (prune,
schedules) and :mod:`durably.cli_dashboard`; cancel, migrate and demo are here. Each module
is imported when one of its commands runs (``cli_common.COMMANDS``), and each command imports
what only it needs when it runs: a command's start costs what that command uses.

Every option has an environment-variable twin, shown in ``--help``. Every error goes through
one handler (:class:`DurablyGroup`), which prints it on one line and exits 1.

What the commands print is in :mod:`durably.views` (tables) and :mod:`durably.json_views`
(``--json``); :mod:`durably.loading` imports the user's modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from .backends import resolve_url
from .cli_common import (
    CLIError,
    cli,
    common_options,
    console,
    modules_option,
    open_engine,
    print_json,
)

if TYPE_CHECKING:
    from uuid import UUID


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
    from .json_views import summary_json
    from .lookup import find_execution, parse_id, resolve_id
    from .results import ExecutionResult
    from .statuses import EXECUTION_TERMINAL
    from .views import outcome

    ref = parse_id(execution_id)
    with open_engine(db) as engine:
        key = resolve_id(engine, ref)
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
    from .broker import InMemoryBroker, broker_from_url
    from .json_views import saga_json
    from .loading import import_modules, top_level_brokers
    from .saga_repository import SagaExecutionRepository
    from .saga_service import rollback_saga
    from .views import render_saga

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
@common_options
def migrate(db: str | None, as_json: bool) -> None:
    """Bring the database schema up to date (opening a database also does this)."""
    from .backends import open_store

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


# The other commands are in their modules (cli_common.COMMANDS).
__all__ = ["cancel", "cli", "demo", "main", "migrate"]
