"""The pieces every command-line view is made of: a status in its colour, a value as text,
times and durations, a context's table and the borderless look of every other table.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from . import codec
from .exceptions import DurablyError

__all__ = [
    "STYLES",
    "borderless_table",
    "clock",
    "context_table",
    "duration",
    "show_value",
    "styled",
]

STYLES = {
    "completed": "green",
    "finished": "green",
    "failed": "bold red",
    "errored": "bold red",
    "abandoned": "bold magenta",
    "upstream_failed": "red",
    "waiting": "bold cyan",
    "cancelled": "yellow",
    "skipped": "yellow",
    "paused": "yellow",
    "running": "cyan",
    "ready": "blue",
    "pending": "blue",
    "created": "blue",
    "not_started": "dim",
}


def styled(status: str | None) -> Text:
    status = status or ""
    return Text(status, style=STYLES.get(status, ""))


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


def context_table(ctx: Mapping[str, Any], title: str | None = None) -> RenderableType:
    if not ctx:
        return Text("(empty context)", style="dim")
    table = Table(title=title, title_justify="left", show_header=True, header_style="bold")
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in ctx.items():
        table.add_row(key, show_value(value, limit=None))
    return table


def borderless_table(title: str | None = None) -> Table:
    """The look of every table but a context's: a rule under the header, no box."""
    return Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
