"""The actions (``POST`` only): cancel, retry, resume, send an event, fork from a task with
an edited context; and ``/login``. Each is checked by the guard (CSRF, origin, token) and
its input by :mod:`.forms` before anything is written; a refusal answers with the reason,
on the page the form was on.
"""

from __future__ import annotations

from urllib.parse import quote
from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..engine import Engine
from ..exceptions import DurablyError, ExecutionNotFound
from ..lookup import find_saga
from . import actions, forms
from .pages import execution_context, execution_id, fork_context
from .rendering import Dashboard, dashboard_of, error_page, render, status_of
from .security import COOKIE, Refused

ACTIONS = ("cancel", "retry", "resume", "send", "fork")


def _back(key: UUID, notice: str) -> Response:
    return RedirectResponse(f"/executions/{key}?notice={quote(notice)}", status_code=303)


def _is_saga(engine: Engine, key: UUID) -> bool:
    try:
        engine.snapshot(key, initial=False)
    except ExecutionNotFound:
        if find_saga(engine, key) is None:
            raise
        return True
    return False


def _perform(state: Dashboard, key: UUID, action: str, form: dict[str, str]) -> Response:
    """The action, on a worker thread (it blocks on the database)."""
    engine = state.engine
    if action == "cancel":
        saga = _is_saga(engine, key)
        actions.cancel(engine, state.db, key, saga)
        return _back(key, "rolled back" if saga else "cancelled")
    if action == "retry":
        actions.retry(engine, state.jobs, key)
        return _back(key, "retrying in the dashboard process")
    if action == "resume":
        actions.resume(engine, state.jobs, key)
        return _back(key, "resumed in the dashboard process")
    if action == "send":
        payload = forms.payload(form.get("payload", ""))
        name = form.get("name", "")
        stored = actions.send(engine, key, name, payload, form.get("key", "").strip() or None)
        return _back(key, f"event {name.strip()!r} " + ("sent" if stored else "already sent"))
    raise ExecutionNotFound(f"no action {action!r}")


async def act(request: Request) -> Response:
    action = request.path_params["action"]
    state = dashboard_of(request)
    try:
        key = execution_id(request)
        if action not in ACTIONS:
            raise ExecutionNotFound(f"no action {action!r} (one of: {', '.join(ACTIONS)})")
        form = await forms.read_form(request)
        state.guard.check(form, request.headers, request.cookies)
        if action == "fork":
            return await _fork(request, state, key, form)
        return await run_in_threadpool(_perform, state, key, action, form)
    except (Refused, DurablyError, ValueError, TypeError) as exc:
        return await _refused(request, exc)


async def _refused(request: Request, exc: BaseException) -> Response:
    """The execution's page with the reason on top (a plain error page if there is none)."""
    try:
        key = execution_id(request)
        template, context = await run_in_threadpool(execution_context, request, key)
    except (DurablyError, ValueError):
        return error_page(request, exc)
    return render(request, template, {**context, "error": str(exc)}, status_of(exc))


async def _fork(request: Request, state: Dashboard, key: UUID, form: dict[str, str]) -> Response:
    task = form.get("task", "")
    text = form.get("context", "")
    context = await run_in_threadpool(fork_context, request, key, task)
    try:
        original = await run_in_threadpool(_input_of, state.engine, key, task)
        patch = forms.edited_context(text, original, state.engine.max_context_bytes)
        forked = await run_in_threadpool(actions.fork, state.engine, state.jobs, key, task, patch)
    except (forms.BadInput, DurablyError, ValueError) as exc:
        # Nothing was written: the editor comes back with the text as typed and the reason.
        return render(
            request, "fork.html", {**context, "text": text, "error": str(exc)}, status_of(exc)
        )
    return RedirectResponse(
        f"/executions/{forked}?notice={quote(f'forked from {key} at {task}')}", status_code=303
    )


def _input_of(engine: Engine, key: UUID, task: str) -> dict[str, object]:
    from ..diffs import task_inputs

    inputs, _ = task_inputs(engine, engine.get(key))
    if task not in inputs:
        raise forms.BadInput(f"the input of task {task!r} cannot be rebuilt here")
    return dict(inputs[task].data)


async def login(request: Request) -> Response:
    guard = dashboard_of(request).guard
    try:
        form = await forms.read_form(request, limit=16 * 1024)
        guard.check_forgery(form, request.headers)
    except Refused as exc:
        return render(request, "login.html", {"error": str(exc)}, exc.status)
    if guard.token is None:
        return render(request, "login.html", {"error": "this dashboard has no token"}, 400)
    if not guard.login(form.get("token")):
        return render(request, "login.html", {"error": "wrong token"}, 401)
    response = RedirectResponse("/", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, form["token"], httponly=True, samesite="strict", secure=secure)
    return response
