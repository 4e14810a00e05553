"""The ``durably`` command line (SPEC §6), through click's CliRunner and one real subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from durably import Engine, cli_common
from durably.cli import cli as durably_cli
from durably.registry import Registry
from durably.shape import StoredShape

from . import cli_app

ROOT = Path(__file__).resolve().parent.parent
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ENV_NAMES = (
    "DURABLY_DATABASE_URL",
    "DURABLY_JSON",
    "DURABLY_MODULES",
    "DURABLY_RUN_CONTEXT",
    "DURABLY_CONCURRENCY",
    "DURABLY_LEASE",
    "DURABLY_TRACEBACK",
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)  # `tests.cli_app` is importable from here, as a user's module is
    monkeypatch.setattr(cli_app, "FAIL_FRAGILE", True)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def invoke(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(durably_cli, list(args), env=env, input=stdin)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def run_id(result: Result) -> str:
    found = UUID_RE.search(result.stdout)
    assert found, result.stdout
    return found.group(0)


def run_pipeline(db: str, *extra: str) -> str:
    return run_id(ok(invoke("run", "tests.cli_app:pipeline", "--db", db, *extra)))


def run_flaky(db: str) -> str:
    result = invoke("run", "tests.cli_app:flaky", "--db", db, "--context", '{"amount": 3}')
    assert result.exit_code == 1, result.output
    return run_id(result)


# -- help and environment twins ------------------------------------------------------------------


def test_every_option_has_an_environment_twin_shown_in_help() -> None:
    commands = {
        "run", "worker", "list", "show", "context", "cancel", "retry", "fork", "migrate", "demo",
        "start", "resume", "send", "prune", "schedules", "dashboard",
    }  # fmt: skip
    # The commands are imported when asked for (cli_common.COMMANDS): ask for each.
    ctx = click.Context(durably_cli)
    assert set(durably_cli.list_commands(ctx)) == commands
    for name in sorted(commands):
        command = durably_cli.get_command(ctx, name)
        assert command is not None, name
        options = [p for p in command.params if isinstance(p, click.Option)]
        assert {"db", "as_json"} <= {p.name for p in options}, name
        for option in options:
            assert option.envvar, (name, option.name)
            assert option.show_envvar, (name, option.name)
        help_text = ok(invoke(name, "--help")).stdout
        assert "DURABLY_DATABASE_URL" in help_text
        assert "DURABLY_JSON" in help_text
    worker_help = ok(invoke("worker", "--help")).stdout
    assert "DURABLY_CONCURRENCY" in worker_help
    assert "DURABLY_LEASE" in worker_help
    assert "DURABLY_RUN_CONTEXT" in ok(invoke("run", "--help")).stdout


def test_python_m_durably_help_in_a_real_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "durably", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: durably" in done.stdout
    for command in ("run", "worker", "list", "show", "context", "fork", "migrate", "demo"):
        assert command in done.stdout


# -- run ----------------------------------------------------------------------------------------


def test_run_shows_tasks_and_the_final_context(db: str) -> None:
    result = ok(invoke("run", "tests.cli_app:pipeline", "--db", db, "--context", '{"x": 1}'))
    for task in ("start", "left", "right", "join"):
        assert task in result.stdout
    assert "completed" in result.stdout
    execution_id = run_id(result)
    assert f"durably show {execution_id}" in result.stdout
    context = as_json(invoke("context", execution_id, "--db", db, "--json"))
    # right is the last declared dependency of join: it wins though left finished last.
    assert context == {
        "x": 1,
        "stage": "right",
        "left": 1,
        "right": 2,
        "when": {"$durably": "date", "v": "2024-05-01"},
        "seen": "right",
    }


def test_run_json_prints_the_execution(db: str) -> None:
    data = as_json(invoke("run", "tests.cli_app:pipeline", "--db", db, "--json"))
    assert data["status"] == "completed"
    assert data["workflow"] == "cli_pipeline"
    assert list(data["tasks"]) == ["start", "left", "right", "join"]
    assert data["context"]["seen"] == "right"
    uuid.UUID(data["id"])


def test_run_exits_1_when_the_execution_fails(db: str) -> None:
    result = invoke("run", "tests.cli_app:flaky", "--db", db)
    assert result.exit_code == 1
    assert "failed" in result.stdout
    assert "fragile is broken" in result.stdout


def test_run_reads_the_context_from_a_file_or_stdin(db: str, tmp_path: Path) -> None:
    path = tmp_path / "ctx.json"
    tagged = {"$durably": "uuid", "v": str(uuid.UUID(int=1))}
    path.write_text(json.dumps({"amount": 5, "at": tagged}))
    execution_id = run_id(invoke("run", "tests.cli_app:flaky", "--db", db, "--context", f"@{path}"))
    context = as_json(invoke("context", execution_id, "--db", db, "--json"))
    assert context["prepared"] == 5
    assert context["at"] == {"$durably": "uuid", "v": str(uuid.UUID(int=1))}
    from_stdin = invoke(
        "run", "tests.cli_app:pipeline", "--db", db, "--context", "@-", stdin='{"y": 2}'
    )
    assert as_json(invoke("context", run_id(ok(from_stdin)), "--db", db, "--json"))["y"] == 2


def test_run_accepts_a_module_with_one_workflow(db: str, tmp_path: Path) -> None:
    (tmp_path / "single_flow.py").write_text(
        "from durably import Workflow\n"
        "wf = Workflow('cli_single')\n"
        "@wf.task()\n"
        "def only(ctx):\n"
        "    ctx['only'] = True\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        result = ok(invoke("run", "single_flow", "--db", db))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("single_flow", None)
    assert as_json(invoke("context", run_id(result), "--db", db, "--json")) == {"only": True}


# -- list, show, context ---------------------------------------------------------------------------


def test_list_json_and_filters(db: str) -> None:
    completed = run_pipeline(db)
    failed = run_flaky(db)
    rows = as_json(invoke("list", "--db", db, "--json"))
    assert [row["id"] for row in rows] == [failed, completed]  # newest first
    for row in rows:
        assert {"id", "kind", "workflow", "status", "created_at", "completed_at", "error"} <= set(
            row
        )
    assert rows[0]["status"] == "failed"
    assert "fragile is broken" in rows[0]["error"]
    assert rows[1] == {**rows[1], "workflow": "cli_pipeline", "kind": "workflow"}
    only_failed = as_json(invoke("list", "--db", db, "--json", "--status", "failed"))
    assert [row["id"] for row in only_failed] == [failed]
    by_name = as_json(invoke("list", "--db", db, "--json", "--workflow", "cli_pipeline"))
    assert [row["id"] for row in by_name] == [completed]
    assert len(as_json(invoke("list", "--db", db, "--json", "--limit", "1"))) == 1
    table = ok(invoke("list", "--db", db)).stdout
    assert completed in table
    assert failed in table


def test_db_and_json_environment_twins(db: str) -> None:
    execution_id = run_pipeline(db)
    rows = as_json(invoke("list", env={"DURABLY_DATABASE_URL": db, "DURABLY_JSON": "1"}))
    assert [row["id"] for row in rows] == [execution_id]
    shown = as_json(
        invoke("show", execution_id, env={"DURABLY_DATABASE_URL": db, "DURABLY_JSON": "1"})
    )
    assert shown["status"] == "completed"
    human = ok(invoke("list", env={"DURABLY_DATABASE_URL": db})).stdout
    assert execution_id in human
    assert not human.lstrip().startswith("[")


def test_show_prints_the_timeline_and_context_diffs(db: str) -> None:
    execution_id = run_pipeline(db, "--context", '{"x": 1}')
    data = as_json(invoke("show", execution_id, "--db", db, "--json", "-m", "tests.cli_app"))
    assert data["status"] == "completed"
    assert data["diff_basis"] == "dependencies"
    tasks = data["tasks"]
    assert list(tasks) == ["start", "left", "right", "join"]
    assert tasks["left"]["attempts"] == 1
    assert tasks["left"]["started_at"]
    assert tasks["left"]["completed_at"]
    assert tasks["start"]["diff"] == {
        "added": {"started": True, "stage": "start"},
        "changed": {},
        "removed": [],
    }
    assert tasks["left"]["diff"] == {
        "added": {"left": 1},
        "changed": {"stage": {"old": "start", "new": "left"}},
        "removed": [],
    }
    # join's input is left's and right's outputs merged, right (declared last) winning.
    assert tasks["join"]["input_from"].startswith("left + right")
    assert tasks["join"]["diff"] == {
        "added": {"seen": "right"},
        "changed": {},
        "removed": ["started"],
    }
    human = ok(invoke("show", execution_id, "--db", db)).stdout
    for fragment in ("Context changes", "+ seen", "- started", "~ stage", "Final context"):
        assert fragment in human


def test_show_without_the_workflow_uses_the_stored_dependencies(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = run_pipeline(db)
    monkeypatch.setattr(Registry, "find", lambda self, name, version, shape=None: None)
    data = as_json(invoke("show", execution_id, "--db", db, "--json"))
    # Each task's dependencies are stored with it, so the input is rebuilt exactly.
    assert data["diff_basis"] == "dependencies"
    assert "left" not in data["tasks"]["right"]["diff"]["removed"]


def test_show_without_any_dependencies_diffs_against_the_previous_task(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = run_pipeline(db)
    monkeypatch.setattr(Registry, "find", lambda self, name, version, shape=None: None)
    monkeypatch.setattr(StoredShape, "of", classmethod(lambda cls, records: None))
    data = as_json(invoke("show", execution_id, "--db", db, "--json"))
    assert data["diff_basis"] == "previous_task"
    # right is compared with left's output (its predecessor in declaration order).
    assert data["tasks"]["right"]["diff"]["removed"] == ["left"]
    assert "previous task" in ok(invoke("show", execution_id, "--db", db)).stdout


def test_show_a_failed_execution_with_errors(db: str) -> None:
    execution_id = run_flaky(db)
    data = as_json(invoke("show", execution_id, "--db", db, "--json"))
    assert data["status"] == "failed"
    assert data["tasks"]["fragile"]["status"] == "failed"
    assert "fragile is broken" in data["tasks"]["fragile"]["error"]
    assert data["tasks"]["fragile"]["diff"] is None
    assert data["tasks"]["last"]["status"] == "upstream_failed"
    human = ok(invoke("show", execution_id, "--db", db)).stdout
    assert "fragile is broken" in human


def test_context_of_one_task(db: str) -> None:
    execution_id = run_pipeline(db)
    left = as_json(invoke("context", execution_id, "--task", "left", "--db", db, "--json"))
    assert left == {"started": True, "stage": "left", "left": 1}
    assert "left" in ok(invoke("context", execution_id, "--task", "left", "--db", db)).stdout
    assert_one_line_error(
        invoke("context", execution_id, "--task", "nope", "--db", db), "no task 'nope'"
    )
    failed = run_flaky(db)
    assert_one_line_error(
        invoke("context", failed, "--task", "fragile", "--db", db), "did not complete"
    )


# -- operations ------------------------------------------------------------------------------------


def test_cancel_a_queued_execution(db: str) -> None:
    with Engine(db) as engine:
        queued = str(engine.start(cli_app.pipeline, {}))
    data = as_json(invoke("cancel", queued, "--db", db, "--json"))
    assert data["status"] == "cancelled"
    assert "cancelled" in ok(invoke("cancel", queued, "--db", db)).stdout  # idempotent
    completed = run_pipeline(db)
    assert_one_line_error(invoke("cancel", completed, "--db", db), "already completed")


def test_retry_reruns_the_failed_tasks(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    execution_id = run_flaky(db)
    monkeypatch.setattr(cli_app, "FAIL_FRAGILE", False)
    result = ok(invoke("retry", execution_id, "--db", db, "-m", "tests.cli_app"))
    assert "completed" in result.stdout
    context = as_json(invoke("context", execution_id, "--db", db, "--json"))
    assert context == {"amount": 3, "prepared": 3, "fragile": "ok", "done": 4}
    assert_one_line_error(invoke("retry", execution_id, "--db", db), "only failed or cancelled")


def test_retry_that_fails_again_exits_1(db: str) -> None:
    execution_id = run_flaky(db)
    before = as_json(invoke("show", execution_id, "--db", db, "--json"))
    result = invoke("retry", execution_id, "--db", db, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "failed"
    fragile = data["tasks"]["fragile"]
    assert fragile["started_at"] > before["tasks"]["fragile"]["started_at"]  # it ran again


def test_retry_and_fork_need_the_workflow_imported(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = run_flaky(db)
    monkeypatch.setattr(cli_common, "registered", lambda name: None)
    assert_one_line_error(invoke("retry", execution_id, "--db", db), "--module")
    assert_one_line_error(invoke("fork", execution_id, "--from", "fragile", "--db", db), "--module")


def test_fork_with_a_patched_input(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    execution_id = run_flaky(db)
    monkeypatch.setattr(cli_app, "FAIL_FRAGILE", False)
    data = as_json(
        invoke(
            "fork", execution_id, "--from", "prepare", "--set", "amount=10",
            "--set", 'note="hi"', "--db", db, "--json",
        )
    )  # fmt: skip
    assert data["id"] != execution_id
    assert data["status"] == "completed"
    assert data["context"] == {
        "amount": 10,
        "note": "hi",
        "prepared": 10,
        "fragile": "ok",
        "done": 11,
    }
    forked = as_json(invoke("show", data["id"], "--db", db, "--json"))["tasks"]["prepare"]
    assert "--set amount, note" in forked["input_from"]  # the patch is input, not a change
    assert forked["diff"] == {"added": {"prepared": 10}, "changed": {}, "removed": []}
    human = ok(invoke("fork", execution_id, "--from", "fragile", "--db", db))
    assert run_id(human) != execution_id


def test_migrate(db: str) -> None:
    data = as_json(invoke("migrate", "--db", db, "--json"))  # a new database
    assert data["schema_version"] >= 1
    assert data["applied"] == data["schema_version"]
    again = as_json(invoke("migrate", "--db", db, "--json"))
    assert again == {**data, "applied": 0}
    assert "0 migration(s) applied" in ok(invoke("migrate", "--db", db)).stdout


# -- worker ----------------------------------------------------------------------------------------


class _FakeWorker:
    """Stands in for Worker: run() gets SIGINT, as from Ctrl-C, and waits for stop()."""

    def __init__(self) -> None:
        self.stopped = False

    def run(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopped = True


def test_worker_registers_the_modules_workflows_and_stops_on_a_signal(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeWorker()
    seen: dict[str, Any] = {}

    def worker(self: Engine, concurrency: int | None = None, **options: Any) -> _FakeWorker:
        seen["workflows"] = sorted(name for name, _ in self.registry.versions())
        seen["concurrency"] = concurrency
        seen["lease"] = self.lease
        return fake

    monkeypatch.setattr(Engine, "worker", worker)
    result = invoke(
        "worker", "tests.cli_app", "--db", db, "--lease", "7",
        env={"DURABLY_CONCURRENCY": "3"},
    )  # fmt: skip
    ok(result)
    assert fake.stopped
    assert seen == {"workflows": ["cli_flaky", "cli_pipeline"], "concurrency": 3, "lease": 7.0}
    assert "worker stopped" in result.stderr


@pytest.mark.slow
def test_worker_process_serves_queued_executions_until_sigterm(db: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DURABLY_DATABASE_URL": db}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durably", "worker", "tests.cli_app", "--lease", "5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Engine(db) as engine:
            execution_id = engine.start(cli_app.pipeline, {"via": "worker"})
            result = engine.wait(execution_id, timeout=30)
        assert result.status == "completed"
        assert result.context["seen"] == "right"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "worker stopped" in stderr


# -- demo ----------------------------------------------------------------------------------------


def test_demo_runs_and_shows_how_to_inspect(db: str) -> None:
    started = time.monotonic()
    result = ok(invoke("demo", "--db", db))
    assert time.monotonic() - started < 10
    out = result.stdout
    for fragment in ("validate", "reserve_stock", "charge_card", "ship", "Compensations"):
        assert fragment in out
    assert f"durably show {run_id(result)} --db {db}" in out
    rows = as_json(invoke("list", "--db", db, "--json", "--workflow", "demo_order"))
    assert sorted(row["status"] for row in rows) == ["completed", "failed"]


def test_demo_json_summary(db: str) -> None:
    data = as_json(invoke("demo", "--db", db, "--json"))
    shipped, failed = data["executions"]
    assert shipped["status"] == "completed"
    assert failed["status"] == "failed"
    assert [line.split(":")[0] for line in data["compensations"]] == [
        "charge_card",
        "reserve_stock",
        "validate",
    ]
    shown = as_json(invoke("show", shipped["id"], "--db", db, "--json"))
    assert shown["tasks"]["charge_card"]["attempts"] == 2  # failed once, then retried
    assert shown["tasks"]["ship"]["context"]["stage_seen_by_ship"] == "payment captured"
    compensations = {name: t["compensation"] for name, t in as_json(
        invoke("show", failed["id"], "--db", db, "--json")
    )["tasks"].items()}  # fmt: skip
    assert compensations == {
        "validate": "completed",
        "reserve_stock": "completed",
        "charge_card": "completed",
        "ship": None,
    }
    if data["saga_demo"]:
        sagas = [r for r in as_json(invoke("list", "--db", db, "--json")) if r["kind"] == "saga"]
        assert sorted(r["status"] for r in sagas) == ["errored", "finished"]
        saga = as_json(invoke("show", sagas[0]["id"], "--db", db, "--json"))
        assert saga["kind"] == "saga"
        assert saga["steps"]
        assert "order_id" in as_json(invoke("context", sagas[0]["id"], "--db", db, "--json"))
        assert "saga" in ok(invoke("show", sagas[0]["id"], "--db", db)).stdout
        assert_one_line_error(invoke("cancel", sagas[0]["id"], "--db", db), "saga")


def test_demo_defaults_to_a_temporary_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = ok(invoke("demo"))
    assert f"sqlite:///{tmp_path}" in result.stdout
    assert list(tmp_path.glob("durably-demo-*/demo.db"))


# -- errors: one line on stderr, no traceback, exit status 1 ------------------------------------

MISSING_ID = str(uuid.UUID(int=7))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "no_such_module_xyz:wf"], "cannot import module 'no_such_module_xyz'"),
        (["run", "tests.cli_app:nope"], "has no attribute 'nope'"),
        (["run", "tests.cli_app:not_a_workflow"], "not a durably.Workflow"),
        (["run", "tests.cli_app"], "several workflows"),
        (["run", "tests.cli_app:"], "name the workflow"),
        (["run", "tests/cli_app.py:pipeline"], "is a file path"),
        (["run", "tests.cli_app:pipeline", "--context", "{bad"], "not valid JSON"),
        (["run", "tests.cli_app:pipeline", "--context", "[1]"], "must be a JSON object"),
        (["run", "tests.cli_app:pipeline", "--context", "@/no/such/file.json"], "cannot read"),
        (["fork", MISSING_ID, "--from", "x", "--set", "a=nope"], "not valid JSON"),
        (["fork", MISSING_ID, "--from", "x", "--set", "novalue"], "expected KEY=JSON"),
        (["show", "not-a-uuid"], "not a valid execution id"),
        (["show", MISSING_ID], f"no execution with id {MISSING_ID}"),
        (["context", MISSING_ID], "no execution"),
        (["cancel", MISSING_ID], "no execution"),
        (["retry", MISSING_ID], "no execution"),
        (["fork", MISSING_ID, "--from", "start"], "no execution"),
        (["retry", "123"], "not a valid execution id"),
        (["worker", "no_such_module_xyz"], "cannot import module"),
        (["show", MISSING_ID, "-m", "no_such_module_xyz"], "cannot import module"),
    ],
)
def test_errors_are_one_line(db: str, args: list[str], fragment: str) -> None:
    assert_one_line_error(invoke(*args, "--db", db), fragment)


def test_bad_database_url_is_one_line() -> None:
    assert_one_line_error(invoke("list", "--db", "mysql://nope/x"), "unsupported database URL")


def test_module_that_fails_on_import_is_one_line(db: str, tmp_path: Path) -> None:
    (tmp_path / "broken_flow.py").write_text("raise RuntimeError('broken at import')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        result = invoke("run", "broken_flow:wf", "--db", db)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_flow", None)
    assert_one_line_error(result, "error while importing module 'broken_flow'", "broken at import")


def test_worker_with_nothing_to_serve(db: str, tmp_path: Path) -> None:
    (tmp_path / "empty_flow.py").write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert_one_line_error(invoke("worker", "empty_flow", "--db", db), "nothing to serve")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("empty_flow", None)


def test_unexpected_errors_are_one_line_unless_traceback_is_asked(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Iterator[Any]:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(Engine, "list", boom)
    assert_one_line_error(invoke("list", "--db", db), "RuntimeError: boom second line")
    result = CliRunner().invoke(durably_cli, ["--traceback", "list", "--db", db])
    assert isinstance(result.exception, RuntimeError)


def test_demo_runs_a_bulk_order_through_a_sub_workflow(db: str) -> None:
    data = as_json(invoke("demo", "--db", db, "--json"))
    assert data["bulk"]["status"] == "completed"
    shown = as_json(invoke("show", data["bulk"]["id"], "--db", db, "--json"))
    child_id = shown["tasks"]["fulfil"]["child_id"]
    child = as_json(invoke("show", child_id, "--db", db, "--json"))
    assert child["parent_id"] == data["bulk"]["id"]
    assert [child["tasks"][f"reserve_line[{i}]"]["status"] for i in range(3)] == ["completed"] * 3
    assert shown["tasks"]["invoice"]["context"]["invoice"] == "INV-B-2001: 3 lines, 2 parcels"
