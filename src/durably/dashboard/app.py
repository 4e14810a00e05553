"""The dashboard's ASGI application: its routes, static files and error pages.

Pages (``GET``) are in :mod:`.pages`, actions (``POST``) in :mod:`.posts`; both read and write
through one :class:`~.rendering.Dashboard` and answer through :mod:`.rendering`. Every asset
is served from this package: nothing comes from a CDN.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..engine import Engine
from . import pages, posts
from .rendering import Dashboard, error_page, render
from .security import LOOPBACK_NAMES, Guard


def create_app(
    engine: Engine,
    *,
    db: str | None = None,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
    poll_ms: int = 2000,
) -> Starlette:
    """The dashboard over ``engine``'s database. ``allowed_hosts`` are the ``Host`` names it
    answers (default: the loopback names; ``["*"]`` for any, when bound elsewhere)."""
    routes = [
        Route("/", pages.executions, name="executions"),
        Route("/fragments/executions", pages.executions_fragment, name="executions_fragment"),
        Route("/executions/{id}", pages.execution, name="execution"),
        Route("/fragments/executions/{id}", pages.execution_fragment, name="execution_fragment"),
        Route("/executions/{id}/fork", pages.fork_form, name="fork_form"),
        Route("/executions/{id}/{action}", posts.act, methods=["POST"], name="act"),
        Route("/login", pages.login_form, name="login_form"),
        Route("/login", posts.login, methods=["POST"], name="login"),
        Mount("/static", StaticFiles(packages=[("durably.dashboard", "static")]), name="static"),
    ]
    hosts = allowed_hosts if allowed_hosts is not None else list(LOOPBACK_NAMES)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)],
        exception_handlers={Exception: error_page, 404: _not_found},
    )
    app.state.dashboard = Dashboard(engine, db, Guard(token), poll_ms=poll_ms)
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", {"error": "no such page", "status": 404}, 404)
