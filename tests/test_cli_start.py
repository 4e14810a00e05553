"""``durably start``, ``resume`` and ``send`` (SPEC §6) on both backends, through CliRunner."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import pytest

from durably import Engine, cli_run
from durably.statuses import NOT_STARTED, READY

from . import cli_app
from .test_cli import ENV_NAMES, ROOT, as_json, assert_one_line_error, invoke, ok

NEW_ENV_NAMES = (
    "DURABLY_START_CONTEXT",
    "DURABLY_START_KEY",
    "DURABLY_SEND_PAYLOAD",
    "DURABLY_SEND_KEY",
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV_NAMES, *NEW_ENV_NAMES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)  # `tests.cli_app` is importable from here, as a user's module is
    monkeypatch.setattr(cli_app, "FAIL_FRAGILE", True)


def start(db: str, *extra: str) -> str:
    return str(
        as_json(invoke("start", "tests.cli_app:pipeline", "--db", db, "--json", *extra))["id"]
    )


def needs_send() -> None:
    if not hasattr(Engine, "send"):
        pytest.xfail("Engine.send not built yet")


# -- start -------------------------------------------------------------------------------------


def test_start_prints_the_id_and_queues_the_execution_for_workers(store_url: str) -> None:
    result = ok(
        invoke("start", "tests.cli_app:pipeline", "--db", store_url, "--context", '{"x": 1}')
    )
    execution_id = UUID(result.stdout.strip())  # the id alone: ID=$(durably start ...)
    with Engine(store_url) as engine:
        queued = engine.get(execution_id)
    assert queued.status == "running"
    assert queued.key is None
    assert {name: task.status for name, task in queued.tasks.items()} == {
        "start": READY,
        "left": NOT_STARTED,
        "right": NOT_STARTED,
        "join": NOT_STARTED,
    }
    time.sleep(0.2)  # nothing runs it: no worker, and start returned
    with Engine(store_url) as engine:
        assert engine.get(execution_id).tasks["start"].status == READY
    assert as_json(invoke("context", str(execution_id), "--db", store_url, "--json")) == {"x": 1}


def test_start_json_and_a_repeated_key(store_url: str) -> None:
    first = as_json(
        invoke("start", "tests.cli_app:pipeline", "--db", store_url, "--json", "--key", "order-7")
    )
    assert first["workflow"] == "cli_pipeline"
    assert first["key"] == "order-7"
    assert first["created"] is True
    again = as_json(
        invoke("start", "tests.cli_app:pipeline", "--db", store_url, "--json", "--key", "order-7")
    )
    assert again == {**first, "created": False}
    plain = ok(invoke("start", "tests.cli_app:pipeline", "--db", store_url, "--key", "order-7"))
    assert plain.stdout.strip() == first["id"]
    assert "nothing started" in plain.stderr
    other = as_json(invoke("start", "tests.cli_app:pipeline", "--db", store_url, "--json"))
    assert other["id"] != first["id"]
    assert other["key"] is None
    assert other["created"] is True
    with Engine(store_url) as engine:
        assert engine.get(first["id"]).key == "order-7"
        assert len(engine.list(workflow="cli_pipeline")) == 2


def test_start_options_from_the_environment(store_url: str) -> None:
    env = {
        "DURABLY_DATABASE_URL": store_url,
        "DURABLY_START_CONTEXT": '{"amount": 5}',
        "DURABLY_START_KEY": "from-env",
        "DURABLY_JSON": "1",
    }
    data = as_json(invoke("start", "tests.cli_app:flaky", env=env))
    assert data["key"] == "from-env"
    with Engine(store_url) as engine:
        assert engine.get(data["id"]).context == {"amount": 5}
    help_text = ok(invoke("start", "--help")).stdout
    assert "DURABLY_START_CONTEXT" in help_text
    assert "DURABLY_START_KEY" in help_text


def test_start_refuses_bad_input_in_one_line(store_url: str, tmp_path: Path) -> None:
    pipeline = "tests.cli_app:pipeline"
    assert_one_line_error(
        invoke("start", pipeline, "--db", store_url, "--context", "{nope"), "not valid JSON"
    )
    assert_one_line_error(
        invoke("start", pipeline, "--db", store_url, "--context", "[1, 2]"),
        "must be a JSON object, not a JSON array",
    )
    missing = tmp_path / "missing.json"
    assert_one_line_error(
        invoke("start", pipeline, "--db", store_url, "--context", f"@{missing}"),
        "cannot read context file",
    )
    assert_one_line_error(invoke("start", pipeline, "--db", store_url, "--key", ""), "--key")
    assert_one_line_error(invoke("start", "tests.cli_app:nowhere", "--db", store_url), "nowhere")
    assert_one_line_error(invoke("start", "tests.cli_app:not_a_workflow", "--db", store_url))
    with Engine(store_url) as engine:
        assert engine.list() == []  # nothing was queued by the refused starts


def test_start_reads_the_context_from_stdin(store_url: str) -> None:
    data = as_json(
        invoke(
            "start", "tests.cli_app:pipeline", "--db", store_url, "--json", "--context", "@-",
            stdin='{"from": "stdin"}',
        )
    )  # fmt: skip
    with Engine(store_url) as engine:
        assert engine.get(data["id"]).context == {"from": "stdin"}


# -- resume ------------------------------------------------------------------------------------


def test_resume_runs_a_queued_execution_to_its_end(store_url: str) -> None:
    execution_id = start(store_url, "--context", '{"x": 1}')
    result = ok(invoke("resume", execution_id, "--db", store_url, "--module", "tests.cli_app"))
    for task in ("start", "left", "right", "join"):
        assert task in result.stdout
    assert "completed" in result.stdout
    with Engine(store_url) as engine:
        done = engine.get(execution_id)
    assert done.status == "completed"
    assert done.context["seen"] == "right"
    assert done.context["x"] == 1


def test_resume_json_by_prefix_and_a_finished_execution(store_url: str) -> None:
    execution_id = start(store_url)
    data = as_json(
        invoke("resume", execution_id[:8], "--db", store_url, "-m", "tests.cli_app", "--json")
    )
    assert data["id"] == execution_id
    assert data["status"] == "completed"
    # Finished: its result again, without the workflow imported (nothing runs).
    again = as_json(invoke("resume", execution_id, "--db", store_url, "--json"))
    assert again["status"] == "completed"
    assert again["context"] == data["context"]
    assert "completed" in ok(invoke("resume", execution_id, "--db", store_url)).stdout


def test_resume_of_a_failed_execution_prints_it_and_exits_1(store_url: str) -> None:
    with Engine(store_url) as engine:
        failed = engine.run(cli_app.flaky, {"amount": 1})
    assert failed.status == "failed"
    result = invoke("resume", str(failed.execution_id), "--db", store_url)
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout
    assert "fragile is broken" in result.stdout


def test_resume_needs_the_workflow_and_refuses_a_live_owner(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = start(store_url)
    with monkeypatch.context() as patch:  # as in a process that did not import tests.cli_app
        patch.setattr(cli_run, "registered", lambda name: None)
        assert_one_line_error(
            invoke("resume", execution_id, "--db", store_url), "--module", "cli_pipeline"
        )
    # A live process on another host drives it (its heartbeat is fresh).
    with Engine(store_url) as engine, engine.store.transaction() as tx:
        assert engine.runtime.repo.claim_execution(
            tx, execution_id, "elsewhere:4242:cafe", None, engine.runtime.now()
        )
    for extra in ((), ("--json",)):
        result = invoke("resume", execution_id, "--db", store_url, "-m", "tests.cli_app", *extra)
        assert_one_line_error(result, "being run by live process elsewhere:4242:cafe")
    with Engine(store_url) as engine:
        assert engine.get(execution_id).tasks["start"].status == READY  # untouched


def test_resume_errors(store_url: str) -> None:
    assert_one_line_error(
        invoke("resume", "6f1c9a8e-0000-4000-8000-000000000000", "--db", store_url),
        "no execution",
    )
    assert_one_line_error(invoke("resume", "6f1c9a8", "--db", store_url), "too short")


# -- send --------------------------------------------------------------------------------------


def test_send_stores_an_event_once_per_key(store_url: str) -> None:
    needs_send()
    execution_id = start(store_url)
    result = ok(
        invoke(
            "send", execution_id, "approved", "--db", store_url, "--payload", '{"by": "ann"}',
            "--key", "approval-1",
        )
    )  # fmt: skip
    assert "approved" in result.stdout
    repeated = invoke(
        "send", execution_id[:8], "approved", "--db", store_url, "--json", "--key", "approval-1"
    )
    assert as_json(repeated) == {
        "id": execution_id,
        "event": "approved",
        "key": "approval-1",
        "stored": False,
    }
    # Without a key every send is stored; any JSON value is a payload.
    for payload in ('"yes"', "3", "[1, 2]", "null"):
        data = as_json(
            invoke("send", execution_id, "note", "--db", store_url, "--json", "--payload", payload)
        )
        assert data["stored"] is True
    assert as_json(invoke("send", execution_id, "bare", "--db", store_url, "--json"))["stored"]


def test_send_options_from_the_environment(store_url: str, tmp_path: Path) -> None:
    needs_send()
    execution_id = start(store_url)
    payload = tmp_path / "payload.json"
    payload.write_text('{"amount": 12}', encoding="utf-8")
    env = {
        "DURABLY_DATABASE_URL": store_url,
        "DURABLY_SEND_PAYLOAD": f"@{payload}",
        "DURABLY_SEND_KEY": "env-key",
        "DURABLY_JSON": "1",
    }
    assert as_json(invoke("send", execution_id, "paid", env=env))["stored"] is True
    assert as_json(invoke("send", execution_id, "paid", env=env))["stored"] is False


def test_send_refuses_unknown_and_finished_executions(store_url: str) -> None:
    needs_send()
    unknown = "6f1c9a8e-0000-4000-8000-000000000000"
    assert_one_line_error(invoke("send", unknown, "approved", "--db", store_url), unknown)
    with Engine(store_url) as engine:
        done = engine.run(cli_app.pipeline, {})
    assert_one_line_error(
        invoke("send", str(done.execution_id), "approved", "--db", store_url),
        str(done.execution_id),
    )


def test_send_refuses_bad_input_before_the_database(store_url: str) -> None:
    execution_id = start(store_url)
    assert_one_line_error(
        invoke("send", execution_id, "approved", "--db", store_url, "--payload", "{oops"),
        "--payload is not valid JSON",
    )
    assert_one_line_error(
        invoke("send", execution_id, "approved", "--db", store_url, "--key", ""), "--key"
    )
    assert_one_line_error(invoke("send", "abc", "approved", "--db", store_url), "too short")


def test_start_send_resume_delivers_the_payload_to_the_waiting_task(store_url: str) -> None:
    needs_send()
    app = "tests.cli_wait_app"
    execution_id = str(
        as_json(invoke("start", f"{app}:approval", "--db", store_url, "--json"))["id"]
    )
    sent = invoke(
        "send", execution_id[:8], "approved", "--db", store_url, "--json",
        "--payload", '{"by": "ann"}', "--key", "approval-1",
    )  # fmt: skip
    assert as_json(sent)["stored"] is True
    data = as_json(invoke("resume", execution_id[:8], "--db", store_url, "-m", app, "--json"))
    assert data["status"] == "completed"
    assert data["context"]["decision"] == {"by": "ann"}
    assert data["context"]["approved_by"] == "ann"


def test_start_with_a_priority(store_url: str) -> None:
    low = start(store_url)
    high = start(store_url, "--priority", "7")
    with Engine(store_url) as engine:
        assert engine.snapshot(low).execution.priority == 0
        assert engine.snapshot(high).execution.priority == 7


@pytest.mark.parametrize("bad", ["high", "1.5", str(2**31)])
def test_start_with_a_bad_priority(store_url: str, bad: str) -> None:
    result = invoke("start", "tests.cli_app:pipeline", "--db", store_url, "--priority", bad)
    assert result.exit_code != 0
    assert "--priority" in result.output
    assert "Traceback" not in result.output
