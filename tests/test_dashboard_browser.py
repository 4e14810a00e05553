"""The dashboard in a real headless browser: Debian's chromium driven by Playwright, against
the app served by uvicorn on a loopback port. Under CI a missing browser fails these tests
(``.ci/run`` installs it); elsewhere they skip."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from durably import Engine
from tests import dashboard_app as apps
from tests.dashboard_support import CHROMIUM_ARGS, chromium_or_skip, serving

pytest.importorskip("starlette")

TIMEOUT = 15_000  # ms


def run(engine: Engine, wf: Any, context: dict[str, Any]) -> Any:
    """``engine.run`` off this thread: Playwright's sync API keeps an event loop on it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(engine.run, wf, context).result(60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(f"sqlite:///{tmp_path}/browser.db") as opened:
        yield opened


@pytest.fixture
def site(engine: Engine) -> Iterator[str]:
    from durably.dashboard import create_app

    with serving(create_app(engine, db=None, poll_ms=200)) as url:
        yield url


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT)
    try:
        yield opened
    finally:
        context.close()


def test_the_list_updates_live_when_an_execution_starts(
    site: str, page: Any, engine: Engine
) -> None:
    first = run(engine, apps.diamond, {"amount": 1})
    page.goto(site + "/")
    page.wait_for_selector(f'tr[data-id="{first.execution_id}"]')
    page.evaluate("window.__sameDocument = true")
    started = engine.start(apps.slow, {})
    page.wait_for_selector(f'tr[data-id="{started}"]')
    assert page.evaluate("window.__sameDocument") is True  # no reload: the fragment was polled
    assert page.inner_text('[data-count="all"]') == "2"
    assert page.inner_text('[data-count="running"]') == "1"


def test_the_dag_is_drawn_with_status_colours(site: str, page: Any, engine: Engine) -> None:
    apps.FAIL["on"] = True
    failed = run(engine, apps.flaky, {})
    done = run(engine, apps.diamond, {"amount": 2})
    page.goto(f"{site}/executions/{done.execution_id}")
    nodes = page.locator("#dag g.node")
    assert nodes.count() == 4
    box = page.locator("#dag").bounding_box()
    assert box is not None
    assert box["width"] > 300
    assert box["height"] > 40
    fills = page.eval_on_selector_all(
        "#dag g.node rect", "rects => rects.map(r => getComputedStyle(r).fill)"
    )
    assert fills == ["rgb(134, 239, 172)"] * 4  # completed: green
    assert page.locator("#dag path.edge").count() == 4
    diff = page.locator("#task-total .diff").inner_text()
    assert "+ total" in diff
    assert "5" in diff
    page.goto(f"{site}/executions/{failed.execution_id}")
    fill = page.eval_on_selector(
        '#dag g.node[data-task="fragile"] rect', "r => getComputedStyle(r).fill"
    )
    assert fill == "rgb(252, 165, 165)"  # failed: red
    assert "fragile is broken" in page.inner_text("#task-fragile")


def test_forking_with_an_edited_context_runs_it(site: str, page: Any, engine: Engine) -> None:
    source = run(engine, apps.diamond, {"amount": 3})
    page.goto(f"{site}/executions/{source.execution_id}")
    page.click("#task-double a.fork-link")
    editor = page.locator("#context-editor")
    assert json.loads(editor.input_value()) == {"amount": 3, "base": 3}
    editor.fill(json.dumps({"amount": 3, "base": 40}, indent=2))
    page.click("#fork-form button[type=submit]")
    page.wait_for_url(re.compile(r"/executions/(?!" + str(source.execution_id) + ")[0-9a-f-]{36}"))
    page.wait_for_function(
        "document.getElementById('execution-status').textContent.trim() === 'completed'"
    )
    context = json.loads(page.inner_text("#context"))
    assert context["doubled"] == 80
    assert context["total"] == 81
    assert "forked from" in page.inner_text(".notice")
    forked = page.url.rsplit("/", 1)[1].split("?")[0]
    assert engine.get(forked).parent_id == source.execution_id


def test_invalid_json_in_the_editor_shows_the_reason(site: str, page: Any, engine: Engine) -> None:
    source = run(engine, apps.diamond, {"amount": 3})
    page.goto(f"{site}/executions/{source.execution_id}/fork?task=double")
    editor = page.locator("#context-editor")
    editor.fill('{"amount": 3, "base": ')
    assert "not valid JSON" in page.inner_text("#json-check")  # said while typing
    page.click("#fork-form button[type=submit]")
    error = page.inner_text("#error")
    assert "the context is not valid JSON" in error
    assert editor.input_value() == '{"amount": 3, "base": '  # kept as typed
    assert len(engine.list(workflow="dash_diamond")) == 1  # nothing was written


def test_an_action_without_the_token_is_refused(engine: Engine, page: Any) -> None:
    from durably.dashboard import create_app

    # As bound beyond loopback: any Host name is answered, and actions need the token.
    app = create_app(engine, token="open-sesame", allowed_hosts=["*"], poll_ms=200)
    with serving(app) as url:
        queued = engine.start(apps.slow, {})
        page.goto(f"{url}/executions/{queued}")
        page.click("form[action$='/cancel'] button")
        assert "needs the dashboard's access token" in page.inner_text("#error")
        assert engine.get(queued).status == "running"
        page.goto(f"{url}/login")
        page.fill("input[name=token]", "open-sesame")
        page.click("form[action='/login'] button")
        page.wait_for_url(url + "/")
        assert "actions unlocked" in page.inner_text("header")
        page.goto(f"{url}/executions/{queued}")
        page.click("form[action$='/cancel'] button")
        page.wait_for_selector(".notice")
        assert engine.get(queued).status == "cancelled"
