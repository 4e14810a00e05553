"""What the dashboard tests share: an app over a test database, its CSRF token, a paused saga,
and the browser (Debian's chromium, driven by Playwright: browser downloads are impossible)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from durably import Engine, InMemoryBroker, SagaExecutionRepository, SagaManager
from tests import saga_cancel_app
from tests.conftest import IN_CI

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Dash:
    engine: Engine
    client: Any  # starlette.testclient.TestClient
    app: Any
    url: str

    @property
    def csrf(self) -> str:
        token: str = self.app.state.dashboard.guard.csrf
        return token

    def post(self, path: str, data: dict[str, str] | None = None, **kw: Any) -> Any:
        form = {"csrf": self.csrf, **(data or {})}
        return self.client.post(path, data=form, follow_redirects=False, **kw)


def make_dash(url: str, **options: Any) -> Iterator[Dash]:
    from starlette.testclient import TestClient

    from durably.dashboard import create_app

    engine = Engine(url)
    app = create_app(engine, db=url, poll_ms=200, **options)
    try:
        with TestClient(app, base_url="http://127.0.0.1:8080") as client:
            yield Dash(engine, client, app, url)
    finally:
        engine.close()


def paused_saga(url: str) -> UUID:
    """A saga paused on a remote step nobody serves (its local step done)."""
    repo = SagaExecutionRepository(url)

    async def start() -> Any:
        async with SagaManager(repo, InMemoryBroker()) as manager:
            return await manager.run(
                saga_cancel_app.saga, {"order": 9}, pause_on_disk=True, return_execution=False
            )

    try:
        uuid: UUID = asyncio.run(start())
    finally:
        repo.close()
    return uuid


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-id="([0-9a-f-]{36})"', html)


def chromium_or_skip() -> str:
    """The browser's path; a missing browser fails the test under CI, skips it elsewhere."""
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if found is None:
        message = "browser tests need Debian's chromium (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{message}: CI requires it", pytrace=False)
        pytest.skip(message)
    try:
        import playwright  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("browser tests need playwright (pip install -e '.[dev]')", pytrace=False)
        pytest.skip("browser tests need playwright")
    return found


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a real HTTP server on a free loopback port, in a thread; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
