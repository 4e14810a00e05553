"""The dashboard's pages and actions through Starlette's TestClient, on SQLite and PostgreSQL:
what each page shows, every action, and the refusals (bad input, unknown ids, CSRF, token,
size) that must write nothing."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from durably import SagaExecutionRepository, SagaStatus
from tests import dashboard_app as apps
from tests.dashboard_support import Dash, make_dash, paused_saga, row_ids

pytest.importorskip("starlette")


@pytest.fixture
def dash(store_url: str) -> Iterator[Dash]:
    yield from make_dash(store_url)


def text_of(response: object) -> str:
    return html.unescape(response.text)  # type: ignore[attr-defined]


# -- the list ---------------------------------------------------------------------------------


def test_list_shows_workflows_and_sagas_with_counts_and_filters(dash: Dash) -> None:
    engine = dash.engine
    done = engine.run(apps.diamond, {"amount": 5})
    apps.FAIL["on"] = True
    failed = engine.run(apps.flaky, {})
    queued = engine.start(apps.approval, {}, key="order-7")
    saga = paused_saga(dash.url)

    page = dash.client.get("/")
    assert page.status_code == 200
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
    assert page.headers["x-frame-options"] == "DENY"
    ids = row_ids(page.text)
    assert ids == [str(saga), str(queued), str(failed.execution_id), str(done.execution_id)]
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', page.text))
    assert counts == {"all": "4", "running": "1", "completed": "1", "failed": "1", "paused": "1"}

    def listed(query: str) -> list[str]:
        response = dash.client.get("/?" + query)
        assert response.status_code == 200, response.text
        return row_ids(response.text)

    assert listed("status=failed") == [str(failed.execution_id)]
    assert listed("status=paused") == [str(saga)]
    assert listed("workflow=dash_diamond") == [str(done.execution_id)]
    assert listed("workflow=dash_diamond&status=failed") == []
    assert listed("key=order-7") == [str(queued)]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert listed(f"since={future}") == []
    assert listed(f"until={past}") == []
    assert len(listed(f"since={past}&until={future}")) == 4
    # The counts follow the filter (all but its status).
    narrowed = dash.client.get("/?workflow=dash_flaky&status=completed").text
    assert dict(re.findall(r'data-count="(\w+)">(\d+)<', narrowed)) == {"all": "1", "failed": "1"}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("status=exploded", "unknown status 'exploded'"),
        ("since=yesterday", "since 'yesterday' is not a date and time"),
        ("since=2030-01-01T00:00&until=2020-01-01T00:00", "since must be before until"),
        ("after=nonsense", "bad page cursor"),
        ("limit=7", "limit must be one of 25, 50, 100, 200"),
        ("workflow=" + "x" * 600, "workflow is longer than 500 characters"),
    ],
)
def test_a_bad_filter_is_refused_with_its_reason(dash: Dash, query: str, reason: str) -> None:
    response = dash.client.get("/?" + query)
    assert response.status_code == 400
    assert reason in text_of(response)
    assert dash.client.get("/fragments/executions?" + query).status_code == 400


def test_pages_of_the_list_follow_each_other(dash: Dash) -> None:
    started = [str(dash.engine.start(apps.slow, {"n": n})) for n in range(30)]
    first = dash.client.get("/?limit=25")
    ids = row_ids(first.text)
    assert ids == started[::-1][:25]
    older = re.search(r'href="(/\?[^"]*after=[^"]*)" rel="next"', first.text)
    assert older is not None
    second = dash.client.get(html.unescape(older.group(1)))
    assert row_ids(second.text) == started[::-1][25:]
    assert 'rel="next"' not in second.text
    assert "data-live" not in second.text  # only the first page follows new executions


def test_the_live_fragment_has_the_rows_without_the_page(dash: Dash) -> None:
    before = dash.client.get("/fragments/executions")
    assert before.status_code == 200
    assert "<html" not in before.text
    assert row_ids(before.text) == []
    started = dash.engine.start(apps.slow, {})
    assert row_ids(dash.client.get("/fragments/executions").text) == [str(started)]


# -- one execution ----------------------------------------------------------------------------


def test_execution_page_draws_the_dag_timeline_inputs_and_diffs(dash: Dash) -> None:
    result = dash.engine.run(apps.diamond, {"amount": 5})
    assert result.status == "completed"
    page = dash.client.get(f"/executions/{result.execution_id}")
    assert page.status_code == 200
    body = text_of(page)
    nodes = re.findall(r'<g class="node" data-task="(\w+)" data-status="(\w+)">', page.text)
    assert nodes == [(n, "completed") for n in ("prepare", "double", "note", "total")]
    assert page.text.count('fill="#86efac"') == 4  # completed green
    assert len(re.findall(r'<path class="edge"', page.text)) == 4
    # note's first attempt failed: a failed bar, a retry wait, then a completed bar.
    note_row = page.text.split('<span class="tl-name">note</span>')[1].split("</div></div>")[0]
    kinds = re.findall(r'class="bar kind-([\w-]+)"', note_row)
    assert kinds == ["failed", "retry-wait", "completed"]
    assert "ConnectionError: flaky note service" in body
    assert "double + note, merged latest_wins" in body  # total's input, by the §3.1 rule
    total = body.split('id="task-total"')[1].split("</article>")[0]
    assert "+ total</b> <code>11</code>" in total
    assert "after double, note" in total
    assert 'data-finished="1"' in page.text


def test_a_mapped_task_is_one_node_with_counts(dash: Dash) -> None:
    result = dash.engine.run(apps.mapped, {})
    assert result.status == "completed"
    page = dash.client.get(f"/executions/{result.execution_id}")
    nodes = re.findall(r'data-task="([\w\[\]]+)" data-status', page.text)
    assert nodes == ["items", "square"]
    assert "3 completed" in page.text
    assert "3 instances" in page.text
    assert "square[2]" in page.text


def test_parent_and_child_executions_link_each_other(dash: Dash) -> None:
    from durably import Workflow

    child = Workflow("dash_child")
    child.task(name="inner")(lambda ctx: ctx.update(inner=True))
    parent = Workflow("dash_parent")
    parent.subworkflow("sub", child)
    result = dash.engine.run(parent, {})
    assert result.status == "completed", result.error
    child_id = result.tasks["sub"].child_id
    page = text_of(dash.client.get(f"/executions/{result.execution_id}"))
    assert f'runs sub-workflow execution <a href="/executions/{child_id}"' in page
    child_page = text_of(dash.client.get(f"/executions/{child_id}"))
    assert f'sub-workflow of <a href="/executions/{result.execution_id}"' in child_page
    assert "(task sub)" in child_page


def test_a_running_execution_is_followed_live(dash: Dash) -> None:
    queued = dash.engine.start(apps.approval, {})
    page = dash.client.get(f"/executions/{queued}")
    assert f'data-live="/fragments/executions/{queued}"' in page.text
    assert 'data-finished="0"' in page.text
    fragment = dash.client.get(f"/fragments/executions/{queued}")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text
    assert "Send an event" in page.text
    assert "Cancel" in fragment.text


def test_saga_page_shows_steps_request_and_compensations(dash: Dash) -> None:
    uuid = paused_saga(dash.url)
    page = dash.client.get(f"/executions/{uuid}")
    assert page.status_code == 200
    body = text_of(page)
    assert "saga " in body
    assert "paused" in body
    assert "nobody-serves-this" in body
    assert '"order": 9' in body
    assert "finished" in body  # the local step
    response = dash.post(f"/executions/{uuid}/cancel")
    assert response.status_code == 303, response.text
    repo = SagaExecutionRepository(dash.url)
    try:
        summary = repo.load_sync(uuid)
    finally:
        repo.close()
    assert summary.status is SagaStatus.Errored
    after = text_of(dash.client.get(f"/executions/{uuid}"))
    assert "Compensated: 0 local book" in after


@pytest.mark.parametrize(
    "path", ["/executions/not-an-id", f"/executions/{'0' * 8}-0000-0000-0000-{'0' * 12}"]
)
def test_an_unknown_execution_is_404(dash: Dash, path: str) -> None:
    assert dash.client.get(path).status_code == 404
    assert dash.client.get(path.replace("/executions", "/fragments/executions")).status_code == 404
    assert dash.post(path + "/cancel").status_code == 404
    assert dash.client.get(path + "/fork?task=x").status_code == 404


def test_an_unknown_page_or_action_is_404(dash: Dash) -> None:
    assert dash.client.get("/nothing/here").status_code == 404
    queued = dash.engine.start(apps.slow, {})
    assert dash.post(f"/executions/{queued}/explode").status_code == 404
    assert dash.client.get(f"/executions/{queued}/cancel").status_code == 405  # POST only
    assert dash.client.get("/static/dashboard.css").status_code == 200
    assert dash.client.get("/static/dashboard.js").status_code == 200
