"""The web dashboard (``durably dashboard``, SPEC §8): executions of workflows and sagas,
filtered and updated live; one execution's DAG, timeline of attempts, inputs and diffs; and
the actions cancel, retry, resume, send an event and fork from a task with an edited
context. Needs the ``dashboard`` extra (``pip install 'durably[dashboard]'``): importing
:mod:`durably` never imports this package.

Modules: :mod:`.app` (the ASGI app), :mod:`.pages` and :mod:`.posts` (what each route
answers), :mod:`.rendering` (the state every request shares, templates, error pages),
:mod:`.listing` and :mod:`.detail` (what the pages show, read through the
repositories and the CLI's own views), :mod:`.graph` and :mod:`.timeline` (pure layout),
:mod:`.actions`, :mod:`.forms` and :mod:`.security` (what an action checks and does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI checks its binding with .security before the web stack is imported.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
