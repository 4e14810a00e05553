"""``durably list --stranded``: queued executions that nothing can run (SPEC §3.5).

Without modules it asks the database what the live workers advertised (each worker refreshes
its list every few seconds, and an advertisement counts as live for two of its leases); with
``-m MODULE`` it judges by the definitions of those modules instead, as a worker started with
them would.
"""

from __future__ import annotations

import click
from rich.text import Text

from .cli_common import console, print_json
from .deployments import Stranded, stranded
from .engine import Engine
from .loading import import_modules, top_level_workflows
from .views import borderless_table, clock


def print_stranded(engine: Engine, modules: tuple[str, ...], limit: int, as_json: bool) -> None:
    definitions = None
    if modules:
        definitions = [
            wf for module in import_modules(modules) for wf in top_level_workflows(module)
        ]
    found, workers = stranded(engine.runtime, definitions, limit=limit)
    if definitions is None and workers == 0:
        click.echo(
            "no live worker advertised what it serves: every queued execution is listed "
            "(pass -m MODULE to judge by those modules' definitions instead)",
            err=True,
        )
    if as_json:
        print_json([_json(row) for row in found])
        return
    out = console()
    if not found:
        out.print(Text("no stranded executions", style="dim"))
        return
    table = borderless_table()
    columns = ["id", "workflow", "needs version"]
    if out.width >= 100:  # the others must fit first: an id is 36 characters
        columns.append("created")
    for name in columns:
        table.add_column(name, overflow="fold", style="bold" if name == "workflow" else "")
    for row in found:
        cells = [row.execution_id, row.workflow, row.version, clock(row.created_at, date=True)]
        table.add_row(*cells[: len(columns)])
    out.print(table)


def _json(row: Stranded) -> dict[str, object]:
    return {
        "id": row.execution_id,
        "workflow": row.workflow,
        "status": row.status,
        "version": row.version,
        "shape": row.shape,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }
