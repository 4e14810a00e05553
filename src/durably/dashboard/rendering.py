"""What every dashboard request works with, and how it answers: the :class:`Dashboard` (the
engine, its database URL, the security guard and the background runs), the templates, the
security headers every page carries, and the status and page an error answers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from ..engine import Engine
from ..exceptions import (
    DurablyError,
    ExecutionNotFound,
    ExecutionStateError,
    SagaExecutionNotFoundException,
)
from .actions import Background
from .forms import BadInput
from .graph import COLOURS, NODE_H, NODE_W
from .listing import BadFilter
from .security import COOKIE, Guard, Refused


@dataclass
class Dashboard:
    """What every request works with."""

    engine: Engine
    db: str | None
    guard: Guard
    jobs: Background = field(default_factory=Background)
    poll_ms: int = 2000


def when(moment: datetime | None) -> str:
    """A time for people: UTC, to the second (every time on the pages is UTC)."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_when(value: str | None) -> str:
    return when(datetime.fromisoformat(value)) if value else ""


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("durably.dashboard", "templates"),
        autoescape=True,  # every value shown is data from the database
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=when, iso_when=iso_when)
    env.globals.update(colours=COLOURS, node_w=NODE_W, node_h=NODE_H)
    return Jinja2Templates(env=env)


TEMPLATES = _templates()


# Defence in depth: scripts and styles only from the app (the timeline's bars are positioned
# with style attributes), no framing, no referrer leaving the site.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def dashboard_of(request: Request) -> Dashboard:
    state: Dashboard = request.app.state.dashboard
    return state


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    state = dashboard_of(request)
    base = {
        "csrf": state.guard.csrf,
        "token_required": state.guard.token is not None,
        "logged_in": state.guard.login(request.cookies.get(COOKIE)),
        "poll_ms": state.poll_ms,
        "notice": request.query_params.get("notice", "")[:300],
        "error": None,
    }
    return TEMPLATES.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code, headers=HEADERS
    )


def status_of(exc: BaseException) -> int:
    """The HTTP status an error answers with."""
    if isinstance(exc, Refused):
        return exc.status
    if isinstance(exc, ExecutionNotFound | SagaExecutionNotFoundException):
        return 404
    if isinstance(exc, ExecutionStateError):
        return 409
    if isinstance(exc, BadInput | BadFilter | ValueError | TypeError | DurablyError):
        return 400
    return 500


def error_page(request: Request, exc: BaseException) -> Response:
    status = status_of(exc)
    message = str(exc) if status != 500 else f"{type(exc).__name__}: {exc}"
    return render(request, "error.html", {"error": message, "status": status}, status)
