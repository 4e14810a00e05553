"""``durably dashboard``: serve the web UI (SPEC §8) from the database.

The web stack (Starlette, uvicorn, Jinja2) is the optional ``dashboard`` extra, imported only
when this command runs: ``import durably`` and every other command stay without it.
"""

from __future__ import annotations

import importlib.util

import click

from .backends import resolve_url
from .cli_common import CLIError, cli, common_options, modules_option, open_engine
from .dashboard.security import check_binding
from .loading import import_modules

EXTRA = ("starlette", "uvicorn", "jinja2")


def _require_extra() -> None:
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise CLIError(
            f"the dashboard needs {', '.join(missing)}: pip install 'durably[dashboard]'"
        )


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="DURABLY_DASHBOARD_HOST",
    show_envvar=True,
    help="Address to listen on. Anything but a loopback address needs --token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    envvar="DURABLY_DASHBOARD_PORT",
    show_envvar=True,
    help="Port to listen on.",
)
@click.option(
    "--token",
    metavar="TOKEN",
    envvar="DURABLY_DASHBOARD_TOKEN",
    show_envvar=True,
    help="Access token the actions (cancel, retry, resume, send, fork) require; pages stay "
    "readable. Required to listen beyond this machine.",
)
@modules_option
@common_options
def dashboard(
    host: str,
    port: int,
    token: str | None,
    modules: tuple[str, ...],
    db: str | None,
    as_json: bool,
) -> None:
    """Serve the web dashboard: executions of workflows and sagas updated live, each one's
    DAG, timeline, inputs and context diffs, and the actions cancel, retry, resume, send an
    event and fork from a task with an edited context (import the workflows with -m for
    retry, resume and fork: they run in this process)."""
    try:
        allowed = check_binding(host, token)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _require_extra()
    import uvicorn

    from .dashboard import create_app

    import_modules(modules)
    with open_engine(db) as engine:
        app = create_app(engine, db=db, token=token or None, allowed_hosts=allowed)
        click.echo(
            f"durably dashboard on http://{_url_host(host)}:{port}/ for {resolve_url(db)}"
            + (" (actions need the token)" if token else ""),
            err=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="warning")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
