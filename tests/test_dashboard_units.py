"""The dashboard's pure parts: DAG layout, timeline bars, list filters and cursors, the edited
context of a fork, the security checks; and the ``durably dashboard`` command itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from durably.cli import cli
from durably.dashboard import graph, timeline
from durably.dashboard.security import Guard, Refused, check_binding, is_loopback
from durably.listing import Cursor, ListFilter

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# -- graph -------------------------------------------------------------------------------------


def test_levels_follow_the_deepest_dependency() -> None:
    deps = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ("a", "d"), "f": ()}
    assert graph.levels(deps) == [["a", "f"], ["b", "c"], ["d"], ["e"]]


def test_layout_places_nodes_by_level_and_colours_them() -> None:
    laid = graph.layout(
        {"a": (), "b": ("a",), "c": ("a",)},
        {"a": "completed", "b": "failed"},
        {"c": {"completed": 2, "failed": 1}},
    )
    nodes = {n.name: n for n in laid.nodes}
    assert nodes["a"].x < nodes["b"].x == nodes["c"].x
    assert nodes["b"].y < nodes["c"].y
    assert nodes["a"].fill == graph.COLOURS["completed"]
    assert nodes["b"].fill == graph.COLOURS["failed"]
    assert nodes["c"].status == "not_started"
    assert nodes["c"].counts == "2 completed · 1 failed"
    assert [(e.source, e.target) for e in laid.edges] == [("a", "b"), ("a", "c")]
    assert laid.width > 2 * graph.NODE_W
    assert laid.height > 2 * graph.NODE_H


def test_a_long_name_is_shortened_on_its_node() -> None:
    [node] = graph.layout({"x" * 40: ()}, {}).nodes
    assert len(node.label) == 22
    assert node.label.endswith("…")


def test_an_empty_or_odd_graph_still_lays_out() -> None:
    assert graph.layout({}, {}).nodes == []
    laid = graph.layout({"a": ("gone", "a")}, {})  # unknown and self dependencies
    assert [n.name for n in laid.nodes] == ["a"]
    assert laid.edges == [graph.Edge("a", "a", laid.edges[0].path)]


# -- timeline ------------------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_retries_and_waits_become_bars() -> None:
    spans = timeline.attempt_spans([(1, "failed", at(0), at(1)), (2, "completed", at(3), at(4))])
    assert [s.kind for s in spans] == ["failed", "retry-wait", "completed"]
    built = timeline.build([("t", spans)], at(0), at(10))
    bars = built.rows[0].bars
    assert [(b.kind, b.left, b.width) for b in bars] == [
        ("failed", 0.0, 10.0), ("retry-wait", 10.0, 20.0), ("completed", 30.0, 10.0),
    ]  # fmt: skip
    assert built.seconds == 10


def test_a_waiting_task_waits_up_to_now() -> None:
    spans = timeline.attempt_spans(
        [(1, "failed", at(0), at(2))], waiting_since=at(0), waiting_for="waits for event 'go'"
    )
    assert spans[-1] == timeline.Span("waiting", at(2), None, "waits for event 'go'")
    bars = timeline.build([("t", spans)], at(0), at(4)).rows[0].bars
    assert (bars[-1].left, bars[-1].width) == (50.0, 50.0)
    running = timeline.attempt_spans([(1, "running", at(1), None)])
    assert timeline.build([("r", running)], at(0), at(2)).rows[0].bars[0].width == 50.0


def test_an_instant_attempt_stays_visible_and_nothing_started_is_empty() -> None:
    built = timeline.build([("t", timeline.attempt_spans([(1, "completed", at(0), at(0))]))],
                           at(0), at(100))  # fmt: skip
    assert built.rows[0].bars[0].width == timeline.MIN_WIDTH
    empty = timeline.build([("t", [])], None, at(1))
    assert empty.rows[0].bars == []
    assert empty.seconds == 0


# -- list filters and cursors ----------------------------------------------------------------------


def test_a_cursor_round_trips_and_rejects_garbage() -> None:
    cursor = Cursor(T0, "0a000000-0000-0000-0000-000000000001")
    assert Cursor.parse(str(cursor)) == cursor
    for bad in ("nonsense", "2024-05-01T12:00:00_notauuid", "2024-05-01T12:00:00_" + "0" * 32):
        with pytest.raises(ValueError):
            Cursor.parse(bad)


def test_filter_params_bound_every_range() -> None:
    params = ListFilter().params(10)
    assert params["since"] < params["before_at"]
    assert params["before_id"].startswith("ffff")
    until = ListFilter(until=T0).params(10)
    assert until["before_at"] == until["until"] == "2024-05-01T12:00:00.000000+00:00"
    assert until["before_id"] == "00000000-0000-0000-0000-000000000000"
    paged = ListFilter(
        until=T0, after=Cursor(T0 - timedelta(hours=1), "a" * 8 + "-0000-0000-0000-" + "0" * 12)
    ).params(5)
    assert paged["before_at"] == "2024-05-01T11:00:00.000000+00:00"
    assert ListFilter(status="failed", after=Cursor(T0, "x")).unpaged() == ListFilter()


def test_parse_filter() -> None:
    from durably.dashboard.listing import BadFilter, parse_filter

    where, limit = parse_filter({"status": "failed", "since": "2024-05-01T12:00", "limit": "25"})
    assert (where.status, where.since, limit) == ("failed", T0, 25)
    local = parse_filter({"since": "2024-05-01T14:00+02:00"})[0].since
    assert local == T0
    with pytest.raises(BadFilter, match="limit must be one of"):
        parse_filter({"limit": "-1"})


# -- the fork editor -------------------------------------------------------------------------------


def test_edited_context_is_the_patch_of_what_changed() -> None:
    from durably.dashboard.forms import edited_context

    original = {"a": 1, "price": Decimal("2.50"), "keep": [1]}
    text = '{"a": 2, "price": {"$durably": "decimal", "v": "2.50"}, "keep": [1], "new": null}'
    assert edited_context(text, original, 1 << 20) == {"a": 2, "new": None}
    assert edited_context('{"a": 1, "price": {"$durably": "decimal", "v": "2.50"}, "keep": [1]}',
                          original, 1 << 20) == {}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not valid JSON"),
        ("{'a': 1}", "not valid JSON"),
        ("null", "must be a JSON object, not NoneType"),
        ('{"a": {"$durably": "nope", "v": 1}}', "unknown tag"),
        ('{"b": 1}', "cannot remove keys"),
        ('{"a": "' + "x" * 200 + '"}', "store the data elsewhere"),
    ],
)
def test_a_bad_edited_context_says_why(text: str, reason: str) -> None:
    from durably.dashboard.forms import BadInput, edited_context

    with pytest.raises(BadInput, match=reason):
        edited_context(text, {"a": 1}, 100)


# -- security --------------------------------------------------------------------------------------


def test_loopback_and_binding() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.1", "example.com"))
    assert "localhost" in check_binding("127.0.0.1", None)
    assert check_binding("0.0.0.0", "t") == ["*"]
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_binding("0.0.0.0", None)


def test_guard_checks() -> None:
    guard = Guard(token="tok")
    ok_headers = {"host": "h:1", "origin": "http://h:1"}
    guard.check({"csrf": guard.csrf, "token": "tok"}, ok_headers, {})
    guard.check({"csrf": guard.csrf}, {"authorization": "Bearer tok"}, {})
    with pytest.raises(Refused) as refused:
        guard.check({"csrf": guard.csrf}, {}, {})
    assert refused.value.status == 401
    with pytest.raises(Refused, match="CSRF"):
        guard.check({"csrf": Guard().csrf, "token": "tok"}, {}, {})
    with pytest.raises(Refused, match="cross-origin"):
        guard.check({"csrf": guard.csrf}, {"host": "h:1", "origin": "http://evil"}, {})
    assert Guard().csrf != Guard().csrf
    assert not Guard().login("x")


# -- the command -----------------------------------------------------------------------------------


def test_the_command_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["dashboard", "--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path}/d.db"]
    )
    assert result.exit_code != 0
    assert "refusing to listen on 0.0.0.0" in result.output
    assert "--token" in result.output


def test_without_the_extra_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "starlette" else real(name, *a),
    )
    result = CliRunner().invoke(cli, ["dashboard", "--db", f"sqlite:///{tmp_path}/d.db"])
    assert result.exit_code == 1
    assert "pip install 'durably[dashboard]'" in result.output
    assert "Traceback" not in result.output


def test_importing_durably_imports_no_web_stack() -> None:
    code = (
        "import sys, durably, durably.cli\n"
        "web = ('starlette', 'uvicorn', 'jinja2', 'durably.dashboard.app')\n"
        "heavy = [m for m in web if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_command_serves_the_dashboard(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DURABLY_DASHBOARD_TOKEN": "t0k"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durably", "dashboard", "--port", str(port),
         "--db", f"sqlite:///{tmp_path}/d.db"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert "Executions" in page
        assert "Log in to act" in page
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"durably dashboard on http://127.0.0.1:{port}/" in err
    assert "actions need the token" in err
