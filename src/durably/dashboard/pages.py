"""The pages (``GET``): the executions list, one execution (workflow or saga), the fork
editor and the login form; and the fragments the pages poll to update themselves live.

Plain functions: Starlette runs them on its thread pool, since reading the database blocks.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from ..exceptions import ExecutionNotFound
from ..json_views import SAGA_TERMINAL, encode_context
from ..lookup import find_saga, saga_repository
from . import detail, listing
from .forms import BadInput
from .listing import BadFilter
from .rendering import dashboard_of, error_page, render


def execution_id(request: Request) -> UUID:
    raw = request.path_params["id"]
    try:
        return UUID(raw)
    except ValueError:
        raise ExecutionNotFound(f"{raw!r} is not an execution id") from None


def _list_context(request: Request) -> dict[str, Any]:
    where, limit = listing.parse_filter(request.query_params)
    page = listing.load(dashboard_of(request).engine, where, limit)
    return {
        "page": page,
        "statuses": listing.STATUSES,
        "page_sizes": listing.PAGE_SIZES,
        "query": listing.query_string(where, limit),
        "query_for": lambda **changes: listing.query_string(where, limit, **changes),
        "live": where.after is None,
    }


def executions(request: Request) -> Response:
    try:
        return render(request, "executions.html", _list_context(request))
    except BadFilter as exc:
        return error_page(request, exc)


def executions_fragment(request: Request) -> Response:
    try:
        return render(request, "_executions.html", _list_context(request))
    except BadFilter as exc:
        return error_page(request, exc)


def _saga_context(request: Request, key: UUID) -> dict[str, Any]:
    engine = dashboard_of(request).engine
    saga = find_saga(engine, key)
    if saga is None:
        raise ExecutionNotFound(f"no execution with id {key}")
    repo = saga_repository(engine)
    pending_body = None
    if saga.pending is not None:
        pending_body = detail.pretty(_json_or_text(saga.pending.body))
    return {
        "saga": saga,
        "done": saga.status.value in SAGA_TERMINAL,
        "pending_body": pending_body,
        "outbox": repo.outbox_count(key) if repo is not None else 0,
        "context_json": detail.pretty(encode_context(saga.context)),
    }


def _json_or_text(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body


def execution_context(request: Request, key: UUID) -> tuple[str, dict[str, Any]]:
    """The template and its context for execution ``key``, a workflow's or a saga's."""
    try:
        view = detail.build(dashboard_of(request).engine, key)
    except ExecutionNotFound:
        return "saga.html", _saga_context(request, key)
    return "execution.html", {"view": view, "result": view.result}


def execution(request: Request) -> Response:
    try:
        template, context = execution_context(request, execution_id(request))
    except ExecutionNotFound as exc:
        return error_page(request, exc)
    return render(request, template, context)


def execution_fragment(request: Request) -> Response:
    try:
        template, context = execution_context(request, execution_id(request))
    except ExecutionNotFound as exc:
        return error_page(request, exc)
    return render(request, "_" + template, context)


def fork_context(request: Request, key: UUID, task: str) -> dict[str, Any]:
    """The editor for forking ``key`` from ``task``, pre-filled with the task's input."""
    view = detail.build(dashboard_of(request).engine, key)
    found = next((t for t in view.tasks if t.name == task), None)
    if found is None:
        raise BadInput(f"execution {key} has no task {task!r}")
    return {
        "view": view,
        "result": view.result,
        "task": found,
        "text": found.input_json or "{}",
        "exact": view.exact_inputs,
    }


def fork_form(request: Request) -> Response:
    try:
        key = execution_id(request)
        context = fork_context(request, key, request.query_params.get("task", ""))
    except (ExecutionNotFound, BadInput) as exc:
        return error_page(request, exc)
    return render(request, "fork.html", context)


def login_form(request: Request) -> Response:
    return render(request, "login.html", {})
