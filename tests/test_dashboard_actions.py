"""The dashboard's actions (POST, CSRF-checked) on SQLite and PostgreSQL: cancel, retry,
resume, send, fork from a task with an edited context; and every refusal writing nothing."""

from __future__ import annotations

import html
import json
import queue
import threading
import time
from collections.abc import Iterator
from uuid import UUID

import pytest

from durably import Engine
from durably.listing import ListFilter
from tests import dashboard_app as apps
from tests.dashboard_support import Dash, make_dash

pytest.importorskip("starlette")


@pytest.fixture
def dash(store_url: str) -> Iterator[Dash]:
    yield from make_dash(store_url)


def count(dash: Dash, workflow: str) -> int:
    with dash.engine.store.read() as tx:
        return len(dash.engine.runtime.repo.page_executions(tx, ListFilter(workflow=workflow), 200))


def shown(response: object) -> str:
    return html.unescape(response.text)  # type: ignore[attr-defined]


def new_id(response: object) -> UUID:
    location = response.headers["location"]  # type: ignore[attr-defined]
    return UUID(location.split("/executions/")[1].split("?")[0])


# -- cancel, retry, resume, send ------------------------------------------------------------------


def test_cancel(dash: Dash) -> None:
    queued = dash.engine.start(apps.slow, {})
    response = dash.post(f"/executions/{queued}/cancel")
    assert response.status_code == 303
    assert "notice=cancelled" in response.headers["location"]
    assert dash.engine.get(queued).status == "cancelled"
    again = dash.post(f"/executions/{queued}/cancel")
    assert again.status_code == 409
    assert "already cancelled: nothing to cancel" in shown(again)


def test_retry_runs_the_failed_tasks_again(dash: Dash) -> None:
    apps.FAIL["on"] = True
    failed = dash.engine.run(apps.flaky, {})
    assert failed.status == "failed"
    apps.FAIL["on"] = False
    response = dash.post(f"/executions/{failed.execution_id}/retry")
    assert response.status_code == 303, shown(response)
    result = dash.engine.wait(failed.execution_id, timeout=20)
    assert result.status == "completed"
    assert result.context["fixed"] is True
    refused = dash.post(f"/executions/{failed.execution_id}/retry")
    assert refused.status_code == 409
    assert "only failed or cancelled executions can be retried" in shown(refused)


def test_send_then_resume_completes_with_the_payload(dash: Dash) -> None:
    queued = dash.engine.start(apps.approval, {})
    sent = dash.post(
        f"/executions/{queued}/send",
        {
            "name": "approved",
            "payload": '{"by": "ann", "at": {"$durably": "date", "v": "2024-05-01"}}',
            "key": "k1",
        },
    )
    assert sent.status_code == 303
    assert "sent" in sent.headers["location"]
    repeated = dash.post(
        f"/executions/{queued}/send", {"name": "approved", "payload": "1", "key": "k1"}
    )
    assert "already%20sent" in repeated.headers["location"]
    resumed = dash.post(f"/executions/{queued}/resume")
    assert resumed.status_code == 303, shown(resumed)
    result = dash.engine.wait(queued, timeout=20)
    assert result.status == "completed"
    import datetime

    assert result.context["decided"] == {"by": "ann", "at": datetime.date(2024, 5, 1)}
    finished = dash.post(f"/executions/{queued}/resume")
    assert finished.status_code == 409
    assert "it is finished" in shown(finished)


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"name": "approved", "payload": "{oops"}, "the payload is not valid JSON"),
        ({"name": "approved", "payload": '{"$durably": "socket", "v": 1}'}, "unknown tag"),
        ({"name": "  ", "payload": "1"}, "the event needs a name"),
    ],
)
def test_a_bad_event_is_refused_and_nothing_is_stored(
    dash: Dash, form: dict[str, str], reason: str
) -> None:
    queued = dash.engine.start(apps.approval, {})
    response = dash.post(f"/executions/{queued}/send", {**form, "key": "once"})
    assert response.status_code == 400
    assert reason in shown(response)
    assert dash.engine.send(queued, "approved", 1, key="once") is True  # the key was never used


def test_resume_of_a_changed_workflow_is_refused(dash: Dash, store_url: str) -> None:
    from durably import Engine, Workflow

    first = Workflow("dash_redefined")
    first.task(name="one")(lambda ctx: None)
    with Engine(store_url) as other:
        queued = other.start(first, {})
    # The process now has another definition of that name (a deploy changed it).
    Workflow("dash_redefined").task(name="two")(lambda ctx: None)
    response = dash.post(f"/executions/{queued}/resume")
    assert response.status_code == 409
    assert "changed since execution" in shown(response)
    assert dash.engine.get(queued).status == "running"


# -- fork from a task with an edited context -------------------------------------------------------


def test_fork_form_is_prefilled_with_the_task_input(dash: Dash) -> None:
    result = dash.engine.run(apps.diamond, {"amount": 5})
    page = dash.client.get(f"/executions/{result.execution_id}/fork?task=double")
    assert page.status_code == 200
    editor = shown(page).split('id="context-editor"')[1].split("</textarea>")[0]
    assert json.loads(editor.split(">", 1)[1]) == {"amount": 5, "base": 5}
    assert dash.client.get(f"/executions/{result.execution_id}/fork?task=nope").status_code == 400


def test_fork_with_an_edited_context_runs_a_new_execution(dash: Dash) -> None:
    result = dash.engine.run(apps.diamond, {"amount": 5})
    edited = json.dumps({"amount": 5, "base": 50, "extra": {"$durably": "decimal", "v": "1.5"}})
    response = dash.post(
        f"/executions/{result.execution_id}/fork", {"task": "double", "context": edited}
    )
    assert response.status_code == 303, shown(response)
    forked = dash.engine.wait(new_id(response), timeout=20)
    assert forked.status == "completed"
    assert forked.parent_id == result.execution_id
    assert forked.context["doubled"] == 100
    assert forked.context["total"] == 101
    from decimal import Decimal

    assert forked.context["extra"] == Decimal("1.5")
    page = shown(dash.client.get(f"/executions/{forked.execution_id}"))
    assert "with --set base, extra" in page  # the patch is only what changed
    assert f"/executions/{result.execution_id}" in page  # linked to where it came from


def test_a_fork_shows_its_own_execution_while_another_process_forks_the_same(
    dash: Dash,
) -> None:
    # The dashboard used to guess its fork as the newest child of the source since the
    # click: a fork of the same execution by another process, a moment later, was taken.
    apps.RELEASE.set()
    source = dash.engine.run(apps.slow, {}).execution_id
    apps.RELEASE.clear()
    theirs: queue.SimpleQueue[UUID] = queue.SimpleQueue()

    def other_process() -> None:
        time.sleep(0.15)  # after this dashboard's fork is created, before it answers
        with Engine(dash.url) as other:
            other.fork(source, "hold", on_start=theirs.put)

    thread = threading.Thread(target=other_process)
    thread.start()
    try:
        response = dash.post(f"/executions/{source}/fork", {"task": "hold", "context": "{}"})
        other_id = theirs.get(timeout=10)
    finally:
        apps.RELEASE.set()
        thread.join(10)
    assert response.status_code == 303, shown(response)
    ours = new_id(response)
    assert ours != other_id
    assert dash.engine.wait(ours, timeout=20).parent_id == source
    assert dash.engine.wait(other_id, timeout=20).parent_id == source


def test_fork_on_start_names_the_new_execution_before_it_runs(dash: Dash) -> None:
    source = dash.engine.run(apps.diamond, {"amount": 5})
    seen: list[tuple[UUID, str]] = []

    def on_start(new: UUID) -> None:
        seen.append((new, dash.engine.get(new).tasks["double"].status))

    forked = dash.engine.fork(source.execution_id, "double", {"base": 7}, on_start=on_start)
    assert seen == [(forked.execution_id, "running")]  # claimed in the fork's transaction
    assert forked.context["doubled"] == 14


def test_a_fork_with_an_uncallable_on_start_is_refused_and_writes_nothing(dash: Dash) -> None:
    source = dash.engine.run(apps.diamond, {"amount": 5})
    with pytest.raises(TypeError, match="on_start must be callable, not str"):
        dash.engine.fork(source.execution_id, "double", on_start="print")  # type: ignore[arg-type]
    assert count(dash, "dash_diamond") == 1


def test_a_failing_on_start_runs_nothing_and_leaves_the_fork_resumable(dash: Dash) -> None:
    source = dash.engine.run(apps.diamond, {"amount": 5})
    seen: list[UUID] = []

    def on_start(new: UUID) -> None:
        seen.append(new)
        raise RuntimeError("the caller broke")

    with pytest.raises(RuntimeError, match="the caller broke"):
        dash.engine.fork(source.execution_id, "double", on_start=on_start)
    left = dash.engine.get(seen[0])
    assert left.status == "running"
    assert left.tasks["double"].status == "running"  # claimed, never run
    with dash.engine.store.read() as tx:
        record = dash.engine.runtime.repo.execution(tx, str(seen[0]))
    assert record is not None
    assert record.claimed_by is None  # the execution's claim given back
    assert dash.engine.resume(seen[0]).status == "completed"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"base": 50,', "the context is not valid JSON"),
        ("[1, 2]", "the context must be a JSON object, not list"),
        ('{"amount": 5, "base": {"$durably": "dataclass", "c": "nowhere:Nothing", "v": {}}}',
         "the context cannot be used"),
        ('{"amount": 5}', "a fork cannot remove keys from the task's input ('base')"),
    ],
)  # fmt: skip
def test_a_bad_edited_context_is_refused_and_nothing_is_written(
    dash: Dash, text: str, reason: str
) -> None:
    result = dash.engine.run(apps.diamond, {"amount": 5})
    before = count(dash, "dash_diamond")
    response = dash.post(
        f"/executions/{result.execution_id}/fork", {"task": "double", "context": text}
    )
    assert response.status_code == 400
    body = shown(response)
    assert reason in body
    assert text in body  # the editor keeps what was typed
    assert count(dash, "dash_diamond") == before


def test_a_fork_over_the_context_limit_is_refused(dash: Dash) -> None:
    result = dash.engine.run(apps.diamond, {"amount": 5})
    big = json.dumps({"amount": 5, "base": "x" * (1024 * 1024 + 10)})
    response = dash.post(
        f"/executions/{result.execution_id}/fork", {"task": "double", "context": big}
    )
    assert response.status_code == 400
    assert "store the data elsewhere" in shown(response)
    assert count(dash, "dash_diamond") == 1


def test_a_fork_from_an_unknown_task_is_refused(dash: Dash) -> None:
    result = dash.engine.run(apps.diamond, {"amount": 5})
    response = dash.post(
        f"/executions/{result.execution_id}/fork", {"task": "nope", "context": "{}"}
    )
    assert response.status_code == 400
    assert "has no task 'nope'" in shown(response)


# -- refusals before anything runs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "headers", "reason"),
    [
        ({}, {}, "missing or invalid CSRF token"),
        ({"csrf": "forged"}, {}, "missing or invalid CSRF token"),
        (None, {"origin": "http://evil.example"}, "cross-origin request refused"),
    ],
)
def test_a_forged_request_is_refused(
    dash: Dash, form: dict[str, str] | None, headers: dict[str, str], reason: str
) -> None:
    queued = dash.engine.start(apps.slow, {})
    data = {"csrf": dash.csrf} if form is None else form
    response = dash.client.post(
        f"/executions/{queued}/cancel", data=data, headers=headers, follow_redirects=False
    )
    assert response.status_code == 403
    assert reason in shown(response)
    assert dash.engine.get(queued).status == "running"


def test_a_huge_body_is_refused(dash: Dash) -> None:
    queued = dash.engine.start(apps.approval, {})
    payload = json.dumps(["x" * 1024] * 3000)  # 3 MiB
    response = dash.post(f"/executions/{queued}/send", {"name": "approved", "payload": payload})
    assert response.status_code == 413
    assert "request body over" in shown(response)
    assert dash.engine.send(queued, "approved", 1, key="fresh") is True
    assert dash.engine.get(queued).tasks["decide"].status != "completed"


def test_a_request_to_another_host_name_is_refused(dash: Dash) -> None:
    # Bound to loopback: a page of another site reaching it by DNS rebinding gets nothing.
    response = dash.client.get("/", headers={"host": "evil.example"})
    assert response.status_code == 400


def test_with_a_token_actions_need_it(store_url: str) -> None:
    for dash in make_dash(store_url, token="s3cret", allowed_hosts=["*"]):
        queued = dash.engine.start(apps.slow, {})
        path = f"/executions/{queued}/cancel"
        refused = dash.post(path)
        assert refused.status_code == 401
        assert "needs the dashboard's access token" in shown(refused)
        assert dash.post(path, {"token": "wrong"}).status_code == 401
        assert dash.engine.get(queued).status == "running"
        page = dash.client.get(f"/executions/{queued}")
        assert page.status_code == 200  # reading needs no token
        assert 'name="token"' in page.text
        bad = dash.post("/login", {"token": "nope"})
        assert bad.status_code == 401
        assert dash.client.post("/login", data={"token": "s3cret"}).status_code == 403  # no csrf
        login = dash.post("/login", {"token": "s3cret"})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert dash.post(path).status_code == 303  # the cookie now carries the token
        assert dash.engine.get(queued).status == "cancelled"
        other = dash.engine.start(apps.slow, {})
        dash.client.cookies.clear()
        bearer = dash.post(
            f"/executions/{other}/cancel", headers={"authorization": "Bearer s3cret"}
        )
        assert bearer.status_code == 303
        assert (
            dash.post(
                f"/executions/{dash.engine.start(apps.slow, {})}/cancel", {"token": "s3cret"}
            ).status_code
            == 303
        )
