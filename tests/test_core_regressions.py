"""Regression tests for the execution core's semantics and the defects issue 9 lists (SPEC
§3-§3.3, §8): one test per item, on both backends unless marked PostgreSQL-only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from durably import (
    Context,
    Engine,
    ExecutionResult,
    ExecutionStateError,
    RetryPolicy,
    StoreConnectionError,
    StoreError,
    TaskHandle,
    Workflow,
    WorkflowDefinitionError,
    WorkflowNotRegistered,
    ownership,
)
from durably.cli import cli as durably_cli
from durably.clock import ManualClock

from . import crash_app
from .conftest import unique, wait_until

ROOT = Path(__file__).resolve().parent.parent
LOG_FIELDS = ("execution_id", "workflow", "task", "attempt", "action")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` on a daemon thread; its return value (or exception) lands in the list."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # reported by the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: list[Any], timeout: float, what: str) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), f"{what} did not return within {timeout}s"
    [value] = out
    if isinstance(value, BaseException):
        raise value
    return value


def task_row(engine: Engine, execution_id: object, name: str) -> dict[str, Any]:
    with engine.store.read() as tx:
        rows = tx.fetch_all("get_tasks", {"id": str(execution_id)})
    # keys(): iterating a sqlite3.Row yields its values, not its column names.
    row = next(row for row in rows if row["task_name"] == name)
    return {key: row[key] for key in row.keys()}  # noqa: SIM118


@contextlib.contextmanager
def serving(engine: Engine, concurrency: int = 1) -> Iterator[None]:
    """A worker of ``engine`` running on a thread for the duration of the block."""
    worker = engine.worker(concurrency=concurrency, poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the worker did not stop"


# -- the handle goes only to a second parameter without a default -----------------------------


def test_a_loop_bound_default_gets_its_value_not_the_handle(engine: Engine) -> None:
    wf = Workflow(unique())
    for i in range(2):

        @wf.task(name=f"box{i}")
        def step(ctx: Context, i: int = i) -> None:
            ctx[f"box{i}"] = f"box {i}"

    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    assert result.context == {"box0": "box 0", "box1": "box 1"}


# -- engine.run inside a running event loop ----------------------------------------------------


def test_run_inside_an_event_loop_points_to_run_async(engine: Engine) -> None:
    wf = Workflow(unique())
    wf.task(name="t")(lambda ctx: ctx.update(done=True))

    async def main() -> ExecutionResult:
        with pytest.raises(ExecutionStateError, match=r"run_async") as info:
            engine.run(wf, {})
        assert "event loop" in str(info.value)
        assert engine.list() == []  # nothing was created
        return await engine.run_async(wf, {"x": 1})

    result = asyncio.run(main())
    assert result.status == "completed", result.error
    assert result.context == {"x": 1, "done": True}
    assert [e.execution_id for e in engine.list()] == [result.execution_id]


# -- every attempt is kept ---------------------------------------------------------------------


def test_every_attempt_is_kept_and_shown(engine: Engine, store_url: str) -> None:
    wf = Workflow(unique())

    @wf.task(retry=RetryPolicy(max_attempts=3, initial_delay=0, jitter=False))
    def flaky(ctx: Context, handle: TaskHandle) -> None:
        if handle.attempt < 3:
            raise ConnectionError(f"attempt {handle.attempt} refused")
        ctx["ok"] = handle.attempt

    result = engine.run(wf, {})
    assert result.status == "completed", result.error
    task = result.tasks["flaky"]
    assert task.attempts == 3
    assert task.error is None
    history = task.history
    assert [(a.number, a.status) for a in history] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert "ConnectionError: attempt 1 refused" in (history[0].error or "")
    assert "ConnectionError: attempt 2 refused" in (history[1].error or "")
    assert history[2].error is None
    for attempt in history:
        assert attempt.worker == engine.worker_id
        assert attempt.started_at is not None
        assert attempt.finished_at is not None
        assert attempt.started_at <= attempt.finished_at
    assert history[0].finished_at <= history[1].started_at  # type: ignore[operator]
    assert engine.get(result.execution_id).tasks["flaky"].history == history  # as stored

    runner = CliRunner()
    shown = runner.invoke(
        durably_cli, ["show", str(result.execution_id), "--db", store_url, "--json"]
    )
    assert shown.exit_code == 0, (shown.output, shown.exception)
    data = json.loads(shown.output)
    tasks = data["tasks"]
    flaky_json = (
        tasks["flaky"]
        if isinstance(tasks, dict)
        else next(t for t in tasks if t["name"] == "flaky")
    )
    assert [a["status"] for a in flaky_json["history"]] == ["failed", "failed", "completed"]
    assert "attempt 1 refused" in flaky_json["history"][0]["error"]
    assert "history" in flaky_json

    human = runner.invoke(
        durably_cli, ["show", str(result.execution_id), "--db", store_url], env={"COLUMNS": "200"}
    )
    assert human.exit_code == 0, (human.output, human.exception)
    assert "attempt 1 refused" in human.output
    assert "attempt 2 refused" in human.output


# -- idempotent starts -------------------------------------------------------------------------


def test_idempotent_starts_by_key(engine: Engine) -> None:
    calls: Counter[str] = Counter()
    wf = Workflow(unique("order"))

    @wf.task()
    def charge(ctx: Context) -> None:
        calls["charge"] += 1
        ctx["charged"] = True

    first = engine.start(wf, {"n": 1}, key="order-1")
    again = engine.start(wf, {"n": 2}, key="order-1")
    assert again == first
    assert [e.execution_id for e in engine.list()] == [first]
    assert engine.get(first).key == "order-1"

    # run on the queued key: the existing execution, run here to its end.
    queued = engine.run(wf, {"n": 5}, key="order-1")
    assert queued.execution_id == first
    assert queued.status == "completed"
    assert queued.context == {"n": 1, "charged": True}
    assert calls["charge"] == 1
    assert engine.start(wf, {}, key="order-1") == first  # whatever its status

    # The key is per workflow: another workflow's "order-1" is another execution.
    other = Workflow(unique("other"))
    other.task(name="t")(lambda ctx: None)
    elsewhere = engine.start(other, {}, key="order-1")
    assert elsewhere != first
    assert len(engine.list()) == 2
    assert len(engine.list(workflow=wf.name)) == 1


def test_run_with_the_key_of_a_completed_execution_returns_it(engine: Engine) -> None:
    calls: Counter[str] = Counter()
    wf = Workflow(unique("order"))

    @wf.task()
    def charge(ctx: Context) -> None:
        calls["charge"] += 1
        ctx["charged"] = True

    done = engine.run(wf, {"n": 1}, key="order-2")
    assert done.status == "completed"
    assert calls["charge"] == 1
    assert done.key == "order-2"
    repeat = engine.run(wf, {"n": 2}, key="order-2")
    assert repeat.execution_id == done.execution_id
    assert repeat.status == "completed"
    assert repeat.key == "order-2"
    assert repeat.context == {"n": 1, "charged": True}
    assert calls["charge"] == 1  # nothing ran again
    assert len(engine.list()) == 1


def test_resume_of_a_finished_execution_returns_its_result(engine: Engine) -> None:
    # SQLite once failed here: resume read the result inside its own write transaction.
    wf = Workflow(unique())
    wf.task(name="t")(lambda ctx: ctx.update(t=True))
    done = engine.run(wf, {})
    again = engine.resume(done.execution_id)
    assert again.status == "completed"
    assert again.context == {"t": True}


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (123, TypeError),
        (b"order-1", TypeError),
        ("", TypeError),
        ("k" * 5000, ValueError),
        ("caf\udce9", ValueError),
    ],
    ids=["int", "bytes", "empty", "5000-chars", "lone-surrogate"],
)
def test_a_bad_key_is_refused_and_writes_nothing(
    engine: Engine, key: Any, error: type[Exception]
) -> None:
    wf = Workflow(unique())
    ran: list[str] = []
    wf.task(name="t")(lambda ctx: ran.append("t"))
    with pytest.raises(error):
        engine.start(wf, {}, key=key)
    with pytest.raises(error):
        engine.run(wf, {}, key=key)
    assert engine.list() == []
    assert ran == []


def test_start_by_registered_name(engine: Engine) -> None:
    wf = Workflow(unique("named"))
    wf.task(name="t")(lambda ctx: ctx.update(by_name=True))
    engine.register(wf)
    execution_id = engine.start(wf.name, {"n": 1})
    assert engine.get(execution_id).workflow == wf.name
    with serving(engine):
        result = engine.wait(execution_id, timeout=10)
    assert result.status == "completed", result.error
    assert result.context == {"n": 1, "by_name": True}
    with pytest.raises(WorkflowNotRegistered, match="no_such_workflow"):
        engine.start(unique("no_such_workflow"), {})
    assert len(engine.list()) == 1


# -- SystemExit and KeyboardInterrupt in a task -------------------------------------------------


def interrupting(kind: type[BaseException], how: str) -> Workflow:
    wf = Workflow(unique(how))
    policy = RetryPolicy(max_attempts=3, initial_delay=0, jitter=False)
    if how == "async":

        @wf.task(name="boom", retry=policy)
        async def boom_async(ctx: Context) -> None:
            raise kind("stop everything")

    else:

        @wf.task(name="boom", retry=policy, timeout=5)
        def boom_sync(ctx: Context) -> None:
            raise kind("stop everything")

    @wf.task(name="fine")
    async def fine(ctx: Context) -> None:
        await asyncio.sleep(0)
        ctx["fine"] = True

    return wf


@pytest.mark.parametrize(
    ("kind", "how"),
    [(SystemExit, "async"), (KeyboardInterrupt, "async"), (SystemExit, "sync_timeout")],
    ids=["async-SystemExit", "async-KeyboardInterrupt", "sync-timeout-SystemExit"],
)
def test_a_task_raising_system_exit_fails_its_attempt_and_the_engine_survives(
    engine: Engine, kind: type[BaseException], how: str
) -> None:
    wf = interrupting(kind, how)
    thread, out = in_thread(lambda: engine.run(wf, {}))
    result = joined(thread, out, 15, "engine.run")
    assert result.status == "failed"
    boom = result.tasks["boom"]
    assert boom.status == "failed"
    assert "TaskInterrupted" in (boom.error or "")
    assert kind.__name__ in (boom.error or "")
    assert boom.attempts == 1  # not retried, even with a RetryPolicy
    assert result.tasks["fine"].status == "completed"

    # The event loop thread (and the pool) survived: the same engine runs async tasks again.
    after = Workflow(unique("after"))

    @after.task()
    async def again(ctx: Context) -> None:
        await asyncio.sleep(0.01)
        ctx["again"] = True

    thread, out = in_thread(lambda: engine.run(after, {}))
    assert joined(thread, out, 15, "the second engine.run").context == {"again": True}


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt], ids=lambda k: k.__name__)
def test_a_worker_survives_a_task_raising_system_exit(
    engine: Engine, kind: type[BaseException]
) -> None:
    wf = interrupting(kind, "async")
    engine.register(wf)
    with serving(engine):  # it must also stop when asked, not beat the claim forever
        failed = engine.wait(engine.start(wf, {}), timeout=15)
        served = engine.wait(engine.start(wf, {}), timeout=15)
    for result in (failed, served):
        assert result.status == "failed"
        assert result.tasks["boom"].attempts == 1
        assert "TaskInterrupted" in (result.tasks["boom"].error or "")
        assert result.tasks["fine"].status == "completed"


# -- lone surrogates ---------------------------------------------------------------------------


def test_a_lone_surrogate_in_an_output_fails_the_task_not_the_execution(engine: Engine) -> None:
    wf = Workflow(unique())

    @wf.task(retry=RetryPolicy(max_attempts=3, initial_delay=0, jitter=False))
    def poison(ctx: Context) -> None:
        ctx["f"] = "caf\udce9"

    @wf.task()
    def raises(ctx: Context) -> None:
        raise ValueError("caf\udce9")

    wf.task(name="after", dependencies=["poison"])(lambda ctx: None)

    thread, out = in_thread(lambda: engine.run(wf, {}))
    result = joined(thread, out, 15, "engine.run")
    assert result.status == "failed"
    assert engine.get(result.execution_id).status == "failed"  # stored, not left running
    poisoned = result.tasks["poison"]
    assert poisoned.status == "failed"
    assert poisoned.attempts == 1
    assert "ContextSerializationError" in (poisoned.error or "")
    assert result.tasks["after"].status == "upstream_failed"
    raised = result.tasks["raises"]
    assert raised.status == "failed"
    assert "ValueError: caf\\udce9" in (raised.error or "")  # escaped, still readable
    (raised.error or "").encode("utf-8")  # valid text
    (result.error or "").encode("utf-8")


@pytest.mark.postgres
def test_a_poison_output_fails_the_task_and_the_worker_keeps_serving(postgres_url: str) -> None:
    wf = Workflow(unique("poison"))

    @wf.task()
    def poison(ctx: Context) -> None:
        if ctx.get("poison"):
            ctx["f"] = "caf\udce9"
        ctx["ran"] = True

    with Engine(postgres_url, workflows=[wf]) as engine, serving(engine):
        bad = engine.start(wf, {"poison": True})
        failed = engine.wait(bad, timeout=15)
        good = engine.start(wf, {"poison": False})
        served = engine.wait(good, timeout=15)

    assert failed.status == "failed"
    assert failed.tasks["poison"].status == "failed"
    assert "ContextSerializationError" in (failed.tasks["poison"].error or "")
    assert served.status == "completed", served.error
    assert served.context == {"poison": False, "ran": True}


# -- numbers that break later are refused at definition -----------------------------------------


@pytest.mark.parametrize(
    "lease", [math.nan, math.inf, -math.inf, 0, -1, True, "30", None, 10**9], ids=repr
)
def test_engine_lease_must_be_a_finite_positive_number(tmp_path: Path, lease: Any) -> None:
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    with pytest.raises(ValueError, match="lease must be a finite number of seconds"):
        Engine(url, lease=lease)
    assert not (tmp_path / "lease.db").exists()  # refused before the store was opened


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_nan_and_inf_delays_and_timeouts_are_refused(value: float) -> None:
    with pytest.raises(WorkflowDefinitionError, match="initial_delay"):
        RetryPolicy(initial_delay=value)
    with pytest.raises(WorkflowDefinitionError, match="timeout"):
        Workflow(unique()).task(timeout=value)


def test_sqlite_single_slash_url_is_refused_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="sqlite:///"):
        Engine("sqlite:/x")
    assert not (tmp_path / "x").exists()
    assert os.listdir(tmp_path) == []


# -- the execution's error is capped ------------------------------------------------------------


def test_sixty_failed_tasks_make_a_short_error(engine: Engine) -> None:
    wf = Workflow(unique())
    for i in range(60):

        @wf.task(name=f"t{i:02d}")
        def fail(ctx: Context, i: int = i) -> None:
            raise RuntimeError(f"task {i} failed: " + "x" * 500)

    result = engine.run(wf, {})
    assert result.status == "failed"
    error = result.error or ""
    assert len(error) < 2000, len(error)
    named = [f"t{i:02d}" for i in range(60) if f"'t{i:02d}'" in error]
    assert len(named) == 3, named
    assert "and 57 more failed" in error
    assert all(task.status == "failed" for task in result.tasks.values())


# -- retries follow the injected clock ----------------------------------------------------------


def test_retries_follow_the_engine_clock_not_real_sleep(store_url: str) -> None:
    clock = ManualClock()
    wf = Workflow(unique())
    attempts: list[int] = []

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=3600, jitter=False))
    def later(ctx: Context, handle: TaskHandle) -> None:
        attempts.append(handle.attempt)
        if handle.attempt == 1:
            raise ConnectionError("not yet")
        ctx["done"] = handle.attempt

    began = time.monotonic()
    with Engine(store_url, clock=clock) as engine:
        thread, out = in_thread(lambda: engine.run(wf, {}))

        def waiting_for_retry() -> bool:
            found = engine.list()
            if not found:
                return False
            row = task_row(engine, found[0].execution_id, "later")
            return row["status"] == "ready" and row["retry_at"] is not None

        wait_until(waiting_for_retry, "the retry to be scheduled", timeout=5)
        [execution] = engine.list()
        assert engine.get(execution.execution_id).tasks["later"].status == "ready"
        time.sleep(0.2)  # real time passing does not start the retry
        assert attempts == [1]
        clock.advance(3601)
        result = joined(thread, out, 5, "engine.run after the clock moved")
    assert result.status == "completed", result.error
    assert result.context == {"done": 2}
    assert attempts == [1, 2]
    assert time.monotonic() - began < 10


# -- claims orphaned by an error are not kept alive --------------------------------------------


class Outage:
    """Makes a store's transactions and reads fail as if the database went away."""

    def __init__(self, engine: Engine) -> None:
        self.store = engine.store
        self.down = threading.Event()
        self._transaction = self.store.transaction
        self._read = self.store.read

        def guard(real: Callable[[], Any]) -> Callable[[], Any]:
            def call() -> Any:
                if self.down.is_set():
                    raise StoreConnectionError("simulated outage: connection refused")
                return real()

            return call

        self.store.transaction = guard(self._transaction)  # type: ignore[method-assign]
        self.store.read = guard(self._read)  # type: ignore[method-assign]

    def restore(self) -> None:
        self.down.clear()
        del self.store.transaction
        del self.store.read


def test_claims_orphaned_by_an_error_go_stale_and_resume_elsewhere(store_url: str) -> None:
    clock = ManualClock()
    wf = Workflow(unique())
    calls: Counter[str] = Counter()
    outage_started = threading.Event()

    @wf.task()
    def first(ctx: Context) -> None:
        calls["first"] += 1
        if calls["first"] == 1:
            outage.down.set()  # the database goes away while this task runs
            outage_started.set()
        ctx["first"] = True

    @wf.task(dependencies=[first])
    def second(ctx: Context) -> None:
        calls["second"] += 1
        ctx["second"] = True

    failing = Engine(store_url, lease=5.0, clock=clock)
    rescuer = Engine(store_url, lease=5.0, clock=clock, workflows=[wf])
    try:
        outage = Outage(failing)
        thread, out = in_thread(lambda: failing.run(wf, {}))
        assert outage_started.wait(10)
        time.sleep(0.1)  # the runner is retrying its commit
        clock.advance(6)  # past the lease: the runner gives up
        thread.join(10)
        assert not thread.is_alive(), "engine.run kept retrying past its lease"
        [error] = out
        assert isinstance(error, StoreConnectionError), error
        outage.restore()
        [execution] = rescuer.list()
        assert str(execution.execution_id) in str(error)
        assert execution.status == "running"

        clock.advance(6)
        failing.runtime.heartbeat.beat()  # an orphaned claim would be refreshed here
        thread, out = in_thread(lambda: rescuer.resume(execution.execution_id))
        result = joined(thread, out, 10, "resume")
    finally:
        failing.close()
        rescuer.close()
    assert result.status == "completed", result.error
    assert result.context == {"first": True, "second": True}
    assert calls == {"first": 2, "second": 1}  # the lost attempt ran again, once
    assert [a.status for a in result.tasks["first"].history][-1] == "completed"


def spawn(url: str, mode: str, marks: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "DURABLY_MARKS": str(marks), "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_app", url, mode], cwd=ROOT, env=environ
    )


def marks_of(marks: Path) -> Counter[str]:
    return Counter(marks.read_text().split()) if marks.exists() else Counter()


@pytest.mark.slow
def test_resume_takes_over_when_the_task_owner_process_exits(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process (live, fresh heartbeats) runs `slow` while this process resumes the
    execution; once that worker is killed, resume takes its claim over at once (the owner's
    process is gone) instead of polling until the 30 s lease, or forever."""
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    with Engine(store_url, workflows=[crash_app.crash]) as engine:
        execution_id = engine.start(crash_app.crash, {"order_id": 3})
        child = spawn(store_url, "worker", marks, DURABLY_BLOCK="slow")
        try:
            wait_until(lambda: marks_of(marks)["slow"] == 1, "the worker to run slow")
            thread, out = in_thread(lambda: engine.resume(execution_id))
            time.sleep(0.5)
            assert thread.is_alive()  # following the live worker's claim
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        began = time.monotonic()
        result = joined(thread, out, 15, "resume after the owner exited")
    assert time.monotonic() - began < 10  # well within the 30 s lease
    assert result.status == "completed", result.error
    counts = marks_of(marks)
    assert counts["prepare"] == 1
    assert counts["slow"] == 2
    assert counts["finish"] == 1


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    return child.pid


def test_resume_takes_over_claims_of_a_process_that_no_longer_exists(store_url: str) -> None:
    """An execution and its running task claimed by a process of this host that is gone, with
    heartbeats still fresh (it died a moment ago): resume takes both over at once instead of
    waiting for the 30 s lease (or polling forever)."""
    wf = Workflow(unique())
    calls: Counter[str] = Counter()

    @wf.task()
    def work(ctx: Context) -> None:
        calls["work"] += 1
        ctx["work"] = True

    with Engine(store_url, workflows=[wf]) as engine:
        execution_id = engine.start(wf, {})
        gone = f"{ownership.HOST}:{dead_pid()}:deadbeef"
        assert ownership.owner_is_dead(gone)
        repo, now = engine.runtime.repo, engine.runtime.now()
        with engine.store.transaction() as tx:
            [task] = repo.tasks(tx, str(execution_id))
            assert repo.start_task(tx, task.id, gone, now)
            assert repo.claim_execution(tx, str(execution_id), gone, None, now)
        before = engine.get(execution_id)
        assert before.status == "running"
        assert before.tasks["work"].status == "running"

        thread, out = in_thread(lambda: engine.resume(execution_id))
        result = joined(thread, out, 10, "resume of a dead process's execution")
    assert result.status == "completed", result.error
    assert calls == {"work": 1}
    history = result.tasks["work"].history
    assert [(a.number, a.status) for a in history] == [(1, "lost"), (2, "completed")]
    assert history[0].worker == gone


# -- PostgreSQL outages during an in-process run ------------------------------------------------


class FlakyProxy:
    """A TCP proxy to PostgreSQL that can cut every connection and refuse new ones for a
    while (a network partition, or a server restart)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._refuse_until = 0.0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def cut(self, seconds: float) -> None:
        """Drop every open connection; refuse new ones for ``seconds``."""
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            conns, self._open = list(self._open), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def heal(self) -> None:
        with self._lock:
            self._refuse_until = 0.0

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refusing = time.monotonic() < self._refuse_until
            if refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    pair[source].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open.discard(client)
                self._open.discard(upstream)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.cut(0)
        self._thread.join(timeout=2)


@pytest.fixture
def proxy() -> Iterator[FlakyProxy]:
    opened = FlakyProxy(("127.0.0.1", 5432))
    yield opened
    opened.close()


def chain_with_cut(proxy: FlakyProxy, seconds: float, calls: Counter[str]) -> Workflow:
    wf = Workflow(unique("outage"))

    @wf.task()
    def before(ctx: Context) -> None:
        calls["before"] += 1
        ctx["before"] = True

    @wf.task(dependencies=[before])
    def during(ctx: Context) -> None:
        calls["during"] += 1
        if calls["during"] == 1:
            proxy.cut(seconds)  # its commit meets the outage
        ctx["during"] = True

    @wf.task(dependencies=[during])
    def after(ctx: Context) -> None:
        calls["after"] += 1
        ctx["after"] = True

    return wf


@pytest.mark.postgres
def test_a_short_outage_mid_run_is_ridden_out(postgres_url: str, proxy: FlakyProxy) -> None:
    calls: Counter[str] = Counter()
    wf = chain_with_cut(proxy, 1.5, calls)
    database = urlsplit(postgres_url).path.lstrip("/")
    with Engine(proxy.url(database), lease=10) as engine:
        thread, out = in_thread(lambda: engine.run(wf, {}))
        result = joined(thread, out, 30, "engine.run through a 1.5 s outage")
    assert result.status == "completed", result.error
    assert result.context == {"before": True, "during": True, "after": True}
    assert calls == {"before": 1, "during": 1, "after": 1}  # every task ran exactly once
    assert all(len(task.history) == 1 for task in result.tasks.values())


@pytest.mark.postgres
def test_an_outage_longer_than_the_lease_names_the_execution(
    postgres_url: str, proxy: FlakyProxy
) -> None:
    calls: Counter[str] = Counter()
    wf = chain_with_cut(proxy, 3600, calls)
    database = urlsplit(postgres_url).path.lstrip("/")
    with Engine(proxy.url(database) + "?timeout=2", lease=2) as engine:
        thread, out = in_thread(lambda: engine.run(wf, {}))
        thread.join(40)
        assert not thread.is_alive(), "engine.run never gave up"
        [error] = out
        proxy.heal()
    assert isinstance(error, StoreConnectionError), repr(error)
    with Engine(postgres_url, lease=2) as direct:
        [execution] = direct.list()
        assert str(execution.execution_id) in str(error)
        assert "resume" in str(error)
        assert "max_size" not in str(error)  # an outage, not a busy pool
        # The claims left behind (the database was down, they could not be released) go
        # stale with the lease; resumed then, it completes: `during` runs again (its output
        # was never saved), the others once.
        time.sleep(2.5)
        result = direct.resume(execution.execution_id)
    assert result.status == "completed", result.error
    assert calls == {"before": 1, "during": 2, "after": 1}


# -- logs --------------------------------------------------------------------------------------


def durably_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "durably" or r.name.startswith("durably.")]


def assert_structured(records: list[logging.LogRecord]) -> None:
    assert records
    for record in records:
        missing = [f for f in LOG_FIELDS if f not in record.__dict__]
        assert not missing, (record.name, record.getMessage(), missing)
        assert "\n" not in record.getMessage(), record.getMessage()


def logging_workflow() -> Workflow:
    wf = Workflow(unique("logs"))

    @wf.task()
    def ok(ctx: Context) -> None:
        ctx["ok"] = True

    @wf.task()
    def broken(ctx: Context) -> None:
        raise RuntimeError("broken on purpose")

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=False))
    def flaky(ctx: Context, handle: TaskHandle) -> None:
        if handle.attempt == 1:
            raise ConnectionError("once")

    return wf


def test_in_process_runs_log_structured_records(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    wf = logging_workflow()
    with caplog.at_level(logging.INFO, logger="durably"):
        result = engine.run(wf, {})
    assert result.status == "failed"
    records = durably_records(caplog)
    assert_structured(records)
    execution_id = str(result.execution_id)
    by_action = {(r.action, r.task): r for r in records}  # type: ignore[attr-defined]
    completed = by_action[("task_completed", "ok")]
    failed = by_action[("task_failed", "broken")]
    retried = by_action[("task_retry", "flaky")]
    for record in (completed, failed, retried):
        assert record.execution_id == execution_id  # type: ignore[attr-defined]
        assert record.workflow == wf.name  # type: ignore[attr-defined]
        assert record.attempt == 1  # type: ignore[attr-defined]
        message = record.getMessage()
        assert execution_id in message
        assert repr(record.task) in message
    assert "broken on purpose" in failed.getMessage()
    assert failed.levelno == logging.WARNING


def test_workers_log_each_claim_completion_failure_and_retry(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    wf = logging_workflow()
    engine.register(wf)
    with caplog.at_level(logging.INFO, logger="durably"):
        execution_id = engine.start(wf, {})
        with serving(engine):
            result = engine.wait(execution_id, timeout=15)
    assert result.status == "failed"
    records = durably_records(caplog)
    assert_structured(records)
    worker_records = [
        r for r in records if r.name == "durably.worker" or r.action.startswith("task_")
    ]  # type: ignore[attr-defined]
    actions = Counter((r.action, r.task) for r in worker_records)  # type: ignore[attr-defined]
    assert actions[("task_claimed", "ok")] == 1
    assert actions[("task_claimed", "broken")] == 1
    assert actions[("task_claimed", "flaky")] == 2
    assert actions[("task_completed", "ok")] == 1
    assert actions[("task_completed", "flaky")] == 1
    assert actions[("task_failed", "broken")] == 1
    assert actions[("task_retry", "flaky")] == 1
    for record in worker_records:
        if record.action in ("task_claimed", "task_completed", "task_failed", "task_retry"):  # type: ignore[attr-defined]
            message = record.getMessage()
            assert str(execution_id) in message, message
            assert repr(record.task) in message, message  # type: ignore[attr-defined]
            assert record.execution_id == str(execution_id)  # type: ignore[attr-defined]
            assert record.workflow == wf.name  # type: ignore[attr-defined]
            assert isinstance(record.attempt, int)  # type: ignore[attr-defined]
