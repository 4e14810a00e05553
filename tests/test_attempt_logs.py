"""Per-attempt logs (SPEC §8): what a task logs is stored with its attempt, bounded, shown by
``durably show`` and ``--json``, and on ``TaskResult.history``."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import pytest
from click.testing import CliRunner

from durably import Engine, RetryPolicy, TaskHandle, Workflow
from durably.attempt_logs import MAX_MESSAGE, TRUNCATED, AttemptLog, entries_of
from durably.cli import cli as durably_cli
from durably.exceptions import StoreError

from .conftest import unique
from .workers import running_worker

RETRY = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False)


def messages(attempt: Any) -> list[str]:
    return [entry.message for entry in attempt.logs]


def flaky_workflow() -> Workflow:
    wf = Workflow(unique("logs"))

    @wf.task(retry=RETRY)
    def charge(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.info("charging attempt %d", handle.attempt)
        if handle.attempt < 3:
            handle.logger.warning("card declined")
            raise RuntimeError("declined")
        ctx["charged"] = True

    return wf


@pytest.mark.parametrize("where", ["in_process", "worker"])
def test_a_failed_attempts_logs_stay_visible_after_a_retry_succeeds(
    engine: Engine, where: str
) -> None:
    wf = flaky_workflow()
    if where == "in_process":
        result = engine.run(wf)
    else:
        with running_worker(engine):
            result = engine.wait(engine.start(wf), timeout=30)
    assert result.status == "completed", result.error
    history = result.tasks["charge"].history
    assert [a.status for a in history] == ["failed", "failed", "completed"]
    assert messages(history[0]) == ["charging attempt 1", "card declined"]
    assert messages(history[1]) == ["charging attempt 2", "card declined"]
    assert messages(history[2]) == ["charging attempt 3"]
    assert [e.level for e in history[0].logs] == ["INFO", "WARNING"]
    assert {e.logger for e in history[2].logs} == {"durably.task.charge"}
    assert history[0].logs[0].at <= history[0].logs[1].at <= history[2].logs[0].at


def test_an_outcome_saved_again_after_a_failed_transaction_keeps_its_logs(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose transaction fails saves the outcomes again in the next one (the
    database refused something, or went away): the attempt's logs go with them again."""
    wf = Workflow(unique("logs_saved_again"))

    @wf.task()
    def charge(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.info("charged")
        ctx["charged"] = True

    repo = engine.runtime.repo
    failures: list[str] = []

    def failing_once(method: str) -> Any:
        real = getattr(repo, method)

        def once(*args: Any, **kw: Any) -> Any:
            answer = real(*args, **kw)  # the logs were taken for it
            if not failures:
                failures.append(method)
                raise StoreError("the first transaction fails")
            return answer

        return once

    for method in ("complete_task", "plan_complete"):  # SQLite's record, PostgreSQL's batch
        monkeypatch.setattr(repo, method, failing_once(method))
    with running_worker(engine):
        result = engine.wait(engine.start(wf), timeout=30)
    assert failures, "the save never failed"
    assert result.status == "completed", result.error
    [attempt] = result.tasks["charge"].history
    assert messages(attempt) == ["charged"]


def test_an_attempt_after_a_retry_that_logs_nothing_stores_nothing(engine: Engine) -> None:
    """retry() numbers the task's attempts from 1 again: the new first attempt, which logs
    nothing, gets none of the old first attempt's logs."""
    wf = Workflow(unique("logs_renumbered"))
    calls: list[int] = []

    @wf.task()
    def charge(ctx: Any, handle: TaskHandle) -> None:
        calls.append(handle.attempt)
        if len(calls) == 1:
            handle.logger.warning("card declined")
            raise RuntimeError("declined")

    first = engine.run(wf)
    assert first.status == "failed"
    again = engine.retry(first.execution_id)
    assert again.status == "completed", again.error
    assert calls == [1, 1]
    assert messages(again.tasks["charge"].history[-1]) == []


def test_retry_keeps_the_logs_of_the_attempt_it_supersedes(engine: Engine) -> None:
    wf = Workflow(unique("logs"))
    runs = []

    @wf.task()
    def step(ctx: Any, handle: TaskHandle) -> None:
        runs.append(1)
        handle.logger.info("run %d", len(runs))
        if len(runs) == 1:
            raise RuntimeError("once")

    failed = engine.run(wf)
    assert failed.status == "failed"
    assert messages(failed.tasks["step"].history[-1]) == ["run 1"]
    retried = engine.retry(failed.execution_id)
    assert retried.status == "completed", retried.error
    history = retried.tasks["step"].history
    assert [(a.status, messages(a)) for a in history] == [
        ("failed", ["run 1"]),
        ("completed", ["run 2"]),
    ]


def test_a_task_that_logs_nothing_stores_nothing(engine: Engine) -> None:
    wf = Workflow(unique("logs"))

    @wf.task()
    def quiet(ctx: Any) -> None:
        ctx["x"] = 1

    result = engine.run(wf)
    assert result.tasks["quiet"].history[0].logs == ()
    with engine.store.read() as tx:
        tasks = engine.runtime.repo.tasks(tx, str(result.execution_id))
    assert tasks[0].logs_text is None
    assert engine.runtime.logs.take(tasks[0].id, 1) is None


def test_logs_are_bounded_per_attempt_and_say_so(engine: Engine) -> None:
    wf = Workflow(unique("logs"))

    @wf.task()
    def chatty(ctx: Any, handle: TaskHandle) -> None:
        for i in range(1500):
            handle.logger.info("line %d", i)

    @wf.task(dependencies=["chatty"])
    def wordy(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.info("x" * 200_000)  # one huge record is cut, not dropped
        for _ in range(10):
            handle.logger.info("y" * 10_000)

    result = engine.run(wf)
    logs = result.tasks["chatty"].history[0].logs
    assert len(logs) == 1001
    assert logs[999].message == "line 999"
    assert logs[-1].message == TRUNCATED.format(500) == "… truncated (500 more records)"
    words = result.tasks["wordy"].history[0].logs
    assert words[0].message.startswith("x" * 1000)
    assert words[0].message.endswith(f"({200_000 - MAX_MESSAGE} bytes cut)")
    kept = sum(len(e.message.encode()) for e in words[:-1])
    assert kept <= 64 * 1024
    assert words[-1].message == f"… truncated ({11 - (len(words) - 1)} more records)"


def test_non_ascii_lone_surrogates_and_nul_are_saved(engine: Engine) -> None:
    wf = Workflow(unique("logs"))

    @wf.task()
    def odd(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.info("naïve ☃ 日本")
        handle.logger.info("lone \udcff and \ud800 surrogates")
        handle.logger.info("nul \x00 byte")
        try:
            raise ValueError("bad \udc80")
        except ValueError:
            handle.logger.exception("with a traceback")

    result = engine.run(wf)
    assert result.status == "completed", result.error
    got = messages(result.tasks["odd"].history[0])
    assert got[0] == "naïve ☃ 日本"
    assert got[1] == "lone \\udcff and \\ud800 surrogates"
    assert got[2] == "nul \x00 byte"
    assert got[3].startswith("with a traceback\nTraceback")
    assert "ValueError: bad \\udc80" in got[3]


def test_an_async_task_logs_with_its_attempt(store_url: str) -> None:
    wf = Workflow(unique("logs"))
    module = logging.getLogger(unique("app"))
    module.setLevel(logging.INFO)

    @wf.task()
    async def fetch(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.info("fetching")
        await asyncio.sleep(0.01)
        module.info("from the app's logger")
        await asyncio.gather(helper(), helper())

    async def helper() -> None:
        module.warning("from a child asyncio task")

    with Engine(store_url, capture_logs=True) as engine:
        result = engine.run(wf)
    assert messages(result.tasks["fetch"].history[0]) == [
        "fetching",
        "from the app's logger",
        "from a child asyncio task",
        "from a child asyncio task",
    ]


def test_concurrent_tasks_get_only_their_own_records(store_url: str) -> None:
    """Two tasks running at once on two threads (and then on a worker's threads), logging
    through handle.logger and through a shared module logger (captured)."""
    wf = Workflow(unique("logs"))
    shared = logging.getLogger(unique("shared"))
    shared.setLevel(logging.INFO)
    both_running = threading.Barrier(2, timeout=10)

    def make(name: str) -> None:
        @wf.task(name=name, timeout=30)
        def task(ctx: Any, handle: TaskHandle) -> None:
            both_running.wait()
            for i in range(50):
                handle.logger.info("%s own %d", name, i)
                shared.info("%s shared %d", name, i)

    make("left")
    make("right")
    with Engine(store_url, capture_logs=True, concurrency=4) as engine:
        results = [engine.run(wf)]
        both_running.reset()
        with running_worker(engine):
            results.append(engine.wait(engine.start(wf), timeout=30))
    for result in results:
        assert result.status == "completed", result.error
        for name in ("left", "right"):
            got = messages(result.tasks[name].history[0])
            assert len(got) == 100
            assert all(message.startswith(f"{name} ") for message in got)
            assert got[:2] == [f"{name} own 0", f"{name} shared 0"]


def test_without_capture_only_the_handles_logger_is_stored(engine: Engine) -> None:
    wf = Workflow(unique("logs"))
    app = logging.getLogger(unique("app"))
    app.setLevel(logging.INFO)

    @wf.task()
    def step(ctx: Any, handle: TaskHandle) -> None:
        app.info("not stored")
        handle.logger.debug("below INFO: not stored")
        handle.logger.info("stored")

    result = engine.run(wf)
    assert messages(result.tasks["step"].history[0]) == ["stored"]


def test_the_handles_records_reach_the_application_with_the_fields(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    wf = Workflow(unique("logs"))

    @wf.task()
    def step(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.warning("careful")

    with caplog.at_level(logging.INFO, logger="durably.task"):
        result = engine.run(wf)
    [record] = [r for r in caplog.records if r.name == "durably.task.step"]
    assert record.getMessage() == "careful"
    assert record.__dict__["execution_id"] == str(result.execution_id)
    assert record.__dict__["workflow"] == wf.name
    assert record.__dict__["task"] == "step"
    assert record.__dict__["attempt"] == 1
    assert record.__dict__["action"] == "task_log"


def test_capture_logs_must_be_a_bool(store_url: str) -> None:
    with pytest.raises(TypeError, match="capture_logs must be a bool, not str"):
        Engine(store_url, capture_logs="yes")  # type: ignore[arg-type]


def test_capture_stops_when_the_engine_closes(store_url: str) -> None:
    before = list(logging.getLogger().handlers)
    with Engine(store_url, capture_logs=True):
        assert len(logging.getLogger().handlers) == len(before) + 1
    assert logging.getLogger().handlers == before


def test_show_and_json_list_the_logs_under_their_attempt(store_url: str) -> None:
    wf = flaky_workflow()
    with Engine(store_url) as engine:
        execution_id = str(engine.run(wf).execution_id)
    shown = CliRunner().invoke(durably_cli, ["show", execution_id, "--db", store_url])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "Logs" in out
    first = out.index("charge attempt 1 (failed)")
    assert first < out.index("card declined") < out.index("charge attempt 3 (completed)")
    assert "WARNING card declined" in " ".join(out.split())
    as_json = CliRunner().invoke(durably_cli, ["show", execution_id, "--db", store_url, "--json"])
    assert as_json.exit_code == 0, as_json.output
    history = json.loads(as_json.output)["tasks"]["charge"]["history"]
    assert [[e["message"] for e in a["logs"]] for a in history] == [
        ["charging attempt 1", "card declined"],
        ["charging attempt 2", "card declined"],
        ["charging attempt 3"],
    ]
    assert history[0]["logs"][1]["level"] == "WARNING"
    assert history[0]["logs"][1]["logger"] == "durably.task.charge"


def test_a_log_read_back_from_bad_text_says_so() -> None:
    assert entries_of(None) == ()
    assert entries_of("not json")[0].message == "unreadable logs"
    log = AttemptLog({"task": "t"}, max_records=1)
    assert log.text() is None
