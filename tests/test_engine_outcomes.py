"""Task and execution outcomes on the real store (SPEC §3, §3.2): statuses, retries, timeouts,
triggers, context errors, compensation, and the Engine's operations."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from durably import (
    Context,
    ContextConflictError,
    ContextSerializationError,
    ContextTooLargeError,
    DurablyError,
    Engine,
    ExecutionNotFound,
    ExecutionStateError,
    NonRetryable,
    RetryPolicy,
    TaskHandle,
    TaskReturnError,
    Workflow,
    WorkflowDefinitionError,
    WorkflowNotRegistered,
    all_of,
    any_of,
    none_of,
    when,
)
from durably.store import parse_timestamp

from .conftest import unique, wait_until

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False)


def task_rows(engine: Engine, execution_id: Any) -> dict[str, dict[str, Any]]:
    """The stored task_executions rows of an execution, by task name."""
    with engine.store.read() as tx:
        rows = tx.fetch_all("get_tasks", {"id": str(execution_id)})
    return {row["task_name"]: _as_dict(row) for row in rows}


def _as_dict(row: Any) -> dict[str, Any]:
    # sqlite3.Row iterates its values and a PostgreSQL dict row its keys: go by keys().
    columns = list(row.keys())
    return {column: row[column] for column in columns}


def statuses(result: Any) -> dict[str, str]:
    return {name: task.status for name, task in result.tasks.items()}


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # pragma: no cover - reported by the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# -- statuses ---------------------------------------------------------------------------------


def test_a_completed_execution(engine: Engine) -> None:
    wf = Workflow(unique())
    wf.task(name="a")(lambda ctx: ctx.update(a=1))
    wf.task(name="b", dependencies=["a"])(lambda ctx: ctx.update(b=2))
    result = engine.run(wf, {"x": 0})
    assert result.status == "completed"
    assert result.done
    assert result.error is None
    assert result.workflow == wf.name
    assert result.version == wf.version
    assert isinstance(result.execution_id, uuid.UUID)
    assert result.created_at is not None
    assert result.completed_at is not None
    assert statuses(result) == {"a": "completed", "b": "completed"}
    assert list(result.tasks) == list(wf.tasks)  # declaration order
    for task in result.tasks.values():
        assert task.attempts == 1
        assert task.error is None
        assert task.compensation is None
        assert task.started_at is not None
        assert task.completed_at is not None
        assert task.started_at <= task.completed_at


def test_a_failed_task_fails_the_execution_and_its_dependents_are_upstream_failed(
    engine: Engine,
) -> None:
    wf = Workflow(unique())
    calls: list[str] = []

    @wf.task()
    def a(ctx: Context) -> None:
        calls.append("a")
        raise RuntimeError("kaboom")

    wf.task(name="b", dependencies=["a"])(lambda ctx: calls.append("b"))
    wf.task(name="c", dependencies=["b"])(lambda ctx: calls.append("c"))
    wf.task(name="d")(lambda ctx: calls.append("d"))
    wf.task(name="e", dependencies=["d", "a"])(lambda ctx: calls.append("e"))
    wf.task(name="f", dependencies=["d"])(lambda ctx: calls.append("f"))
    result = engine.run(wf)

    assert result.status == "failed"
    assert result.done
    assert sorted(calls) == ["a", "d", "f"]
    assert statuses(result) == {
        "a": "failed",
        "b": "upstream_failed",
        "c": "upstream_failed",
        "d": "completed",
        "e": "upstream_failed",
        "f": "completed",
    }
    assert "kaboom" in (result.error or "")
    assert "'a'" in (result.error or "")
    assert "kaboom" in (result.tasks["a"].error or "")
    assert "RuntimeError" in (result.tasks["a"].error or "")
    assert result.tasks["a"].attempts == 1
    for name in ("b", "c", "e"):
        assert result.tasks[name].attempts == 0
        assert result.tasks[name].context is None


# -- retries ----------------------------------------------------------------------------------


def test_retries_count_attempts_and_store_them(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()

    @wf.task(retry=FAST)
    def flaky(ctx: Context, handle: TaskHandle) -> None:
        calls["flaky"] += 1
        if handle.attempt < 3:
            raise ConnectionError(f"attempt {handle.attempt} failed")
        ctx["ok"] = True

    @wf.task(retry=FAST)
    def hopeless(ctx: Context, handle: TaskHandle) -> None:
        calls["hopeless"] += 1
        raise ConnectionError(f"attempt {handle.attempt} failed")

    @wf.task(retry=RetryPolicy(max_attempts=4, backoff="linear", initial_delay=0.005))
    async def flaky_async(ctx: Context, handle: TaskHandle) -> None:
        calls["flaky_async"] += 1
        if handle.attempt < 2:
            raise ConnectionError("async attempt failed")

    result = engine.run(wf)
    assert calls == {"flaky": 3, "hopeless": 3, "flaky_async": 2}
    assert result.status == "failed"
    flaky_result, hopeless_result = result.tasks["flaky"], result.tasks["hopeless"]
    assert flaky_result.status == "completed"
    assert flaky_result.attempts == 3
    assert flaky_result.error is None
    assert flaky_result.context == {"ok": True}
    assert hopeless_result.status == "failed"
    assert hopeless_result.attempts == 3
    assert "attempt 3 failed" in (hopeless_result.error or "")
    assert result.tasks["flaky_async"].attempts == 2
    assert result.tasks["flaky_async"].status == "completed"

    rows = task_rows(engine, result.execution_id)
    assert rows["flaky"]["attempt"] == 3
    assert rows["flaky"]["max_attempts"] == 3
    assert rows["hopeless"]["attempt"] == 3
    assert "attempt 3 failed" in rows["hopeless"]["last_error"]
    assert "attempt 2 failed" in rows["flaky"]["last_error"]  # the last failure is kept
    assert rows["flaky_async"]["max_attempts"] == 4


def test_the_retry_schedule_is_stored_while_a_retry_waits(engine: Engine) -> None:
    wf = Workflow(unique())
    ids: list[uuid.UUID] = []
    calls: list[int] = []

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=30, max_delay=90, jitter=False))
    def later(ctx: Context, handle: TaskHandle) -> None:
        assert ctx.scope is not None
        ids.append(ctx.scope.execution_id)
        calls.append(handle.attempt)
        raise ConnectionError("try later")

    wf.task(name="after", dependencies=["later"])(lambda ctx: calls.append(99))
    thread, out = in_thread(lambda: engine.run(wf))
    wait_until(lambda: bool(ids), "the first attempt")
    wait_until(
        lambda: task_rows(engine, ids[0])["later"]["status"] == "ready", "the retry to be stored"
    )
    row = task_rows(engine, ids[0])["later"]
    assert row["attempt"] == 1
    assert row["max_attempts"] == 2
    assert "try later" in row["last_error"]
    retry_at = parse_timestamp(row["retry_at"])
    failed_at = parse_timestamp(row["updated_at"])
    assert retry_at is not None
    assert failed_at is not None
    # The policy's delay for attempt 2 (exponential: initial * 2**0) after the failure.
    assert 29.99 <= (retry_at - failed_at).total_seconds() <= 31
    assert engine.get(ids[0]).tasks["later"].status == "ready"
    assert engine.get(ids[0]).status == "running"

    engine.cancel(ids[0])  # no need to wait for it
    thread.join(20)
    assert not thread.is_alive()
    result = out[0]
    assert result.status == "cancelled"
    assert calls == [1]
    assert statuses(result) == {"later": "skipped", "after": "skipped"}


def test_non_retryable_errors_are_never_retried(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()
    many = RetryPolicy(max_attempts=5, initial_delay=0.01, jitter=False)

    class PaymentDeclined(NonRetryable):
        pass

    @wf.task(retry=many)
    def declined(ctx: Context) -> None:
        calls["declined"] += 1
        raise PaymentDeclined("card declined")

    @wf.task(retry=many)
    def plain(ctx: Context) -> None:
        calls["plain"] += 1
        raise NonRetryable("stop")

    @wf.task(retry=RetryPolicy(max_attempts=5, initial_delay=0.01, give_up_on=(ValueError,)))
    def given_up(ctx: Context) -> None:
        calls["given_up"] += 1
        raise ValueError("bad input")

    @wf.task(retry=RetryPolicy(max_attempts=5, initial_delay=0.01, retry_on=(ConnectionError,)))
    def not_listed(ctx: Context) -> None:
        calls["not_listed"] += 1
        raise KeyError("missing")

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, retry_on=(ConnectionError,)))
    def listed(ctx: Context) -> None:
        calls["listed"] += 1
        raise ConnectionError("down")

    result = engine.run(wf)
    assert calls == {"declined": 1, "plain": 1, "given_up": 1, "not_listed": 1, "listed": 2}
    assert result.status == "failed"
    assert all(task.status == "failed" for task in result.tasks.values())
    assert result.tasks["declined"].attempts == 1
    assert "card declined" in (result.tasks["declined"].error or "")
    assert result.tasks["listed"].attempts == 2


# -- timeouts ---------------------------------------------------------------------------------


def test_timeout_fails_an_attempt_which_may_be_retried(engine: Engine) -> None:
    wf = Workflow(unique())
    release = threading.Event()
    calls: Counter[str] = Counter()
    once_more = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False)

    @wf.task(timeout=0.5, retry=once_more)
    def sync_retried(ctx: Context, handle: TaskHandle) -> None:
        calls["sync_retried"] += 1
        if handle.attempt == 1:
            release.wait(30)  # blocks past the deadline
        ctx["sync_attempt"] = handle.attempt

    @wf.task(timeout=0.5, retry=once_more)
    async def async_retried(ctx: Context, handle: TaskHandle) -> None:
        calls["async_retried"] += 1
        if handle.attempt == 1:
            await asyncio.sleep(30)  # cancelled at the deadline
        ctx["async_attempt"] = handle.attempt

    @wf.task(timeout=0.5)
    def sync_fails(ctx: Context) -> None:
        calls["sync_fails"] += 1
        release.wait(30)

    @wf.task(timeout=0.5)
    async def async_fails(ctx: Context) -> None:
        calls["async_fails"] += 1
        await asyncio.sleep(30)

    wf.task(name="after_sync", dependencies=["sync_fails"])(lambda ctx: calls.update(["x"]))
    try:
        result = engine.run(wf)
    finally:
        release.set()

    assert calls == {"sync_retried": 2, "async_retried": 2, "sync_fails": 1, "async_fails": 1}
    assert result.status == "failed"
    assert statuses(result) == {
        "sync_retried": "completed",
        "async_retried": "completed",
        "sync_fails": "failed",
        "async_fails": "failed",
        "after_sync": "upstream_failed",
    }
    assert result.tasks["sync_retried"].attempts == 2
    assert result.tasks["async_retried"].attempts == 2
    assert result.tasks["sync_retried"].context == {"sync_attempt": 2}
    assert result.tasks["async_retried"].context == {"async_attempt": 2}
    for name in ("sync_fails", "async_fails"):
        error = result.tasks[name].error or ""
        assert "TaskTimeoutError" in error
        assert "timed out" in error
        assert result.tasks[name].attempts == 1


# -- triggers ---------------------------------------------------------------------------------


def test_trigger_rules_decide_run_or_skip(engine: Engine) -> None:
    wf = Workflow(unique())
    ran: dict[str, dict[str, Any]] = {}

    def record(name: str) -> Callable[[Context], None]:
        def fn(ctx: Context) -> None:
            ran[name] = dict(ctx)

        return fn

    def task(name: str, deps: list[str], trigger: Any = None) -> None:
        wf.task(name=name, dependencies=deps, trigger=trigger)(record(name))

    wf.task(name="ok")(lambda ctx: ctx.update(total=150, tags=["vip", "eu"]))

    @wf.task()
    def bad(ctx: Context) -> None:
        raise RuntimeError("bad failed")

    task("default_after_fail", ["ok", "bad"])
    task("all_done_after_fail", ["ok", "bad"], "all_done")
    task("one_failed_after_fail", ["ok", "bad"], "one_failed")
    task("one_failed_all_ok", ["ok"], "one_failed")
    task("none_failed_after_fail", ["ok", "bad"], "none_failed")
    task("when_true", ["ok"], when("total", ">", 100))
    task("when_false", ["ok"], when("total", "<", 100))
    task("after_when_false", ["when_false"])
    task("none_failed_after_skip", ["ok", "when_false"], "none_failed")
    task("all_done_after_skip", ["when_false"], "all_done")
    task("one_failed_after_skip", ["when_false"], "one_failed")
    task("when_after_fail", ["bad"], when("anything", "not_exists"))
    task("all_of_all_done_when", ["ok", "bad"], all_of("all_done", when("total", ">=", 150)))
    task("any_of_true", ["ok"], any_of(when("total", "==", 1), when("total", "in", [150, 9])))
    task("none_of_false", ["ok"], none_of(when("total", "exists")))
    task("contains_true", ["ok"], when("tags", "contains", "vip"))
    task("exists_false", ["ok"], when("missing", "exists"))
    task("ne_true", ["ok"], when("total", "!=", 0))
    task("type_mismatch", ["ok"], when("tags", ">", 100))  # list > int: an error
    result = engine.run(wf)

    expected_run = {
        "all_done_after_fail",
        "one_failed_after_fail",
        "when_true",
        "none_failed_after_skip",
        "all_done_after_skip",
        "all_of_all_done_when",
        "any_of_true",
        "contains_true",
        "ne_true",
    }
    assert set(ran) == expected_run
    expected = dict.fromkeys(expected_run, "completed")
    expected.update(
        ok="completed",
        bad="failed",
        default_after_fail="upstream_failed",
        one_failed_all_ok="skipped",
        none_failed_after_fail="upstream_failed",
        when_false="skipped",
        after_when_false="skipped",
        one_failed_after_skip="skipped",
        when_after_fail="upstream_failed",
        none_of_false="skipped",
        exists_false="skipped",
        type_mismatch="failed",
    )
    assert statuses(result) == expected
    assert result.status == "failed"
    # A task that runs after a failed dependency receives the completed dependencies' outputs.
    assert ran["all_done_after_fail"] == {"total": 150, "tags": ["vip", "eu"]}
    not_run = ("skipped", "upstream_failed")
    assert all(result.tasks[name].attempts == 0 for name in expected if expected[name] in not_run)
    assert "trigger" in (result.tasks["when_false"].error or "")
    assert "tags" in (result.tasks["type_mismatch"].error or "")
    assert result.tasks["type_mismatch"].attempts == 0


def test_a_condition_skipping_a_branch_does_not_fail_the_execution(engine: Engine) -> None:
    wf = Workflow(unique())
    wf.task(name="price")(lambda ctx: ctx.update(total=50))
    wf.task(name="big_order", dependencies=["price"], trigger=when("total", ">", 100))(
        lambda ctx: ctx.update(flagged=True)
    )
    wf.task(name="notify", dependencies=["big_order"])(lambda ctx: ctx.update(notified=True))
    result = engine.run(wf, {"order": 1})
    assert result.status == "completed"
    assert result.error is None
    assert statuses(result) == {"price": "completed", "big_order": "skipped", "notify": "skipped"}
    # No leaf completed: the outputs nearest to them stand in for them.
    assert result.context == {"order": 1, "total": 50}


# -- context errors ---------------------------------------------------------------------------


def test_an_unserializable_context_fails_the_task_without_retry(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()

    @wf.task(retry=FAST)
    def callback(ctx: Context) -> None:
        calls["callback"] += 1
        ctx["on_done"] = lambda: None

    @wf.task(retry=FAST)
    async def nested(ctx: Context) -> None:
        calls["nested"] += 1
        ctx["outer"] = {"inner": [1, {"deep": threading.Lock()}]}

    @wf.task(retry=FAST)
    def bad_keys(ctx: Context) -> dict[Any, Any]:
        calls["bad_keys"] += 1
        return {"ok": {1: "int key"}}

    wf.task(name="after", dependencies=["callback"])(lambda ctx: calls.update(["after"]))

    # The same errors raised by the task itself.
    raised = {
        "raises_serialization": ContextSerializationError("bad value at x"),
        "raises_too_large": ContextTooLargeError("too big"),
        "raises_conflict": ContextConflictError("two values"),
        "raises_return": TaskReturnError("bad return"),
    }

    def raising(name: str) -> Callable[[Context], None]:
        def fn(ctx: Context) -> None:
            calls[name] += 1
            raise raised[name]

        return fn

    for name in raised:
        wf.task(name=name, retry=FAST)(raising(name))
    result = engine.run(wf, {"keep": True})

    assert calls == {"callback": 1, "nested": 1, "bad_keys": 1, **dict.fromkeys(raised, 1)}
    for name, error in raised.items():
        assert result.tasks[name].status == "failed"
        assert result.tasks[name].attempts == 1
        assert str(error) in (result.tasks[name].error or "")
    assert result.status == "failed"
    assert result.tasks["after"].status == "upstream_failed"
    for name in ("callback", "nested", "bad_keys"):
        task = result.tasks[name]
        assert task.status == "failed"
        assert task.attempts == 1
        assert task.context is None  # nothing half-written
        assert "ContextSerializationError" in (task.error or "")
    error = result.tasks["callback"].error or ""
    assert "on_done" in error
    assert "function" in error
    assert "outer" in (result.tasks["nested"].error or "")
    assert "on_done" in (result.error or "")
    with pytest.raises(LookupError):
        engine.task_context(result.execution_id, "callback")


def test_a_context_over_the_limit_fails_the_task_without_retry(store_url: str) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()

    @wf.task(retry=FAST)
    def big(ctx: Context) -> None:
        calls["big"] += 1
        ctx["blob"] = "x" * 5000

    @wf.task(retry=FAST)
    def small(ctx: Context) -> None:
        calls["small"] += 1
        ctx["ref"] = "s3://bucket/blob"

    with Engine(store_url, max_context_bytes=2000) as engine:
        result = engine.run(wf)
    assert calls == {"big": 1, "small": 1}
    assert result.status == "failed"
    assert result.tasks["small"].status == "completed"
    task = result.tasks["big"]
    assert task.status == "failed"
    assert task.attempts == 1
    assert task.context is None
    assert "ContextTooLargeError" in (task.error or "")
    assert "2000" in (task.error or "")
    assert "elsewhere" in (result.error or "")
    assert "reference" in (result.error or "")


def test_a_bad_initial_context_is_rejected_before_anything_is_written(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: list[int] = []
    wf.task(name="t")(lambda ctx: calls.append(1))
    with pytest.raises(ContextSerializationError, match="callback"):
        engine.run(wf, {"callback": print})
    for bad in ([("a", 1)], "a=1", 5, object()):
        with pytest.raises(TypeError, match="context"):
            engine.run(wf, bad)  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotRegistered, match="not a workflow"):
        engine.run("not a workflow", {})
    with pytest.raises(WorkflowDefinitionError, match="Workflow"):
        engine.run(42, {})  # type: ignore[arg-type]
    assert calls == []
    assert engine.list(workflow=wf.name) == []


# -- compensation -----------------------------------------------------------------------------


def _saga(
    wf: Workflow, undone: list[tuple[str, dict[str, Any]]], *, broken_undo: str | None = None
) -> None:
    """reserve -> charge -> ship (fails); audit is independent; gift is skipped."""

    def undo(name: str) -> Callable[[Context], None]:
        def fn(ctx: Context) -> None:
            undone.append((name, dict(ctx)))
            if name == broken_undo:
                raise RuntimeError(f"cannot undo {name}")

        return fn

    wf.task(name="reserve", compensate=undo("reserve"))(lambda ctx: ctx.update(reserved=1))
    wf.task(name="charge", dependencies=["reserve"], compensate=undo("charge"))(
        lambda ctx: ctx.update(charged=1)
    )

    @wf.task(dependencies=["charge"], compensate=undo("ship"))
    def ship(ctx: Context) -> None:
        raise RuntimeError("truck broke down")

    wf.task(name="gift", dependencies=["ship"], compensate=undo("gift"))(lambda ctx: None)
    wf.task(name="audit", compensate=undo("audit"))(lambda ctx: ctx.update(audited=1))
    wf.task(name="no_undo")(lambda ctx: None)


def test_compensations_run_in_reverse_topological_order_for_completed_tasks(
    engine: Engine,
) -> None:
    wf = Workflow(unique())
    undone: list[tuple[str, dict[str, Any]]] = []
    _saga(wf, undone)
    result = engine.run(wf, {"order": 7})

    assert result.status == "failed"
    assert "truck broke down" in (result.error or "")
    names = [name for name, _ in undone]
    assert sorted(names) == ["audit", "charge", "reserve"]  # completed tasks only
    assert names.index("charge") < names.index("reserve")
    # Each compensation receives that task's saved output.
    contexts = dict(undone)
    assert contexts["reserve"] == {"order": 7, "reserved": 1}
    assert contexts["charge"] == {"order": 7, "reserved": 1, "charged": 1}
    assert contexts["audit"] == {"order": 7, "audited": 1}
    compensation = {name: task.compensation for name, task in result.tasks.items()}
    assert compensation == {
        "reserve": "completed",
        "charge": "completed",
        "ship": None,
        "gift": None,
        "audit": "completed",
        "no_undo": None,
    }
    assert statuses(result)["reserve"] == "completed"  # compensating keeps the task status
    rows = task_rows(engine, result.execution_id)
    assert rows["charge"]["compensation_status"] == "completed"


def test_a_failing_compensation_is_recorded_and_the_others_still_run(engine: Engine) -> None:
    wf = Workflow(unique())
    undone: list[tuple[str, dict[str, Any]]] = []
    _saga(wf, undone, broken_undo="charge")
    result = engine.run(wf)
    names = [name for name, _ in undone]
    assert sorted(names) == ["audit", "charge", "reserve"]
    assert names.index("charge") < names.index("reserve")
    assert result.status == "failed"
    assert result.tasks["charge"].compensation == "failed"
    assert result.tasks["reserve"].compensation == "completed"
    assert result.tasks["audit"].compensation == "completed"
    rows = task_rows(engine, result.execution_id)
    assert "cannot undo charge" in (rows["charge"]["compensation_error"] or "")


def test_compensation_order_in_a_diamond_and_async_compensations(engine: Engine) -> None:
    wf = Workflow(unique())
    undone: list[str] = []

    def undo(name: str) -> Callable[[Context], None]:
        return lambda ctx: undone.append(name)

    async def undo_right(ctx: Context) -> None:
        await asyncio.sleep(0)
        undone.append("right")

    wf.task(name="root", compensate=undo("root"))(lambda ctx: None)
    wf.task(name="left", dependencies=["root"], compensate=undo("left"))(lambda ctx: None)
    wf.task(name="right", dependencies=["root"], compensate=undo_right)(lambda ctx: None)
    wf.task(name="tip", dependencies=["left"], compensate=undo("tip"))(lambda ctx: None)

    @wf.task(dependencies=["tip", "right"])
    def join(ctx: Context) -> None:
        raise NonRetryable("join failed")

    result = engine.run(wf)
    assert result.status == "failed"
    assert sorted(undone) == ["left", "right", "root", "tip"]
    order = {name: i for i, name in enumerate(undone)}
    assert order["tip"] < order["left"] < order["root"]
    assert order["right"] < order["root"]
    assert all(result.tasks[n].compensation == "completed" for n in ("root", "left", "tip"))
    assert result.tasks["right"].compensation == "completed"


def test_no_compensation_when_the_execution_succeeds(engine: Engine) -> None:
    wf = Workflow(unique())
    undone: list[str] = []
    wf.task(name="a", compensate=lambda ctx: undone.append("a"))(lambda ctx: None)
    wf.task(name="b", dependencies=["a"], compensate=lambda ctx: undone.append("b"))(
        lambda ctx: None
    )
    # A condition skipping a task is not a failure to compensate.
    wf.task(name="c", dependencies=["a"], trigger=when("go", "exists"))(lambda ctx: None)
    result = engine.run(wf)
    assert result.status == "completed"
    assert result.tasks["c"].status == "skipped"
    assert undone == []
    assert all(task.compensation is None for task in result.tasks.values())


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_stops_an_execution(engine: Engine) -> None:
    wf = Workflow(unique())
    started, release = threading.Event(), threading.Event()
    ids: list[uuid.UUID] = []
    calls: list[str] = []

    @wf.task()
    def slow(ctx: Context) -> None:
        assert ctx.scope is not None
        ids.append(ctx.scope.execution_id)
        started.set()
        release.wait(30)
        calls.append("slow")

    wf.task(name="after", dependencies=["slow"])(lambda ctx: calls.append("after"))
    wf.task(name="after_after", dependencies=["after"])(lambda ctx: calls.append("after2"))

    thread, out = in_thread(lambda: engine.run(wf))
    try:
        assert started.wait(20)
        running = engine.get(ids[0])
        assert running.status == "running"
        assert not running.done
        assert statuses(running) == {
            "slow": "running",
            "after": "not_started",
            "after_after": "not_started",
        }
        with pytest.raises(TimeoutError):
            engine.wait(ids[0], timeout=0.05)
        cancelled = engine.cancel(ids[0])
        assert cancelled.status == "cancelled"
        assert engine.get(ids[0]).status == "cancelled"
    finally:
        release.set()
    thread.join(20)
    assert not thread.is_alive()
    result = out[0]
    assert result.status == "cancelled"
    assert result.done
    assert calls == ["slow"]  # the running task finished; nothing after it started
    assert result.tasks["after"].status == "skipped"
    assert result.tasks["after_after"].status == "skipped"
    assert ids[0] in [r.execution_id for r in engine.list(status="cancelled", workflow=wf.name)]


# -- retry and fork ---------------------------------------------------------------------------


def _pipeline(wf: Workflow, calls: Counter[str], fail: dict[str, bool]) -> None:
    """extract -> transform -> load; extract -> index (independent of transform)."""

    @wf.task()
    def extract(ctx: Context) -> None:
        calls["extract"] += 1
        ctx["rows"] = [1, 2, 3]

    @wf.task(dependencies=[extract])
    def transform(ctx: Context) -> None:
        calls["transform"] += 1
        if fail.get("transform"):
            raise RuntimeError("transform failed")
        ctx["rows"] = [r * ctx.get("factor", 10) for r in ctx["rows"]]

    @wf.task(dependencies=[transform])
    def load(ctx: Context) -> None:
        calls["load"] += 1
        ctx["loaded"] = sum(ctx["rows"])

    @wf.task(dependencies=[extract])
    def index(ctx: Context) -> None:
        calls["index"] += 1
        ctx["indexed"] = len(ctx["rows"])


def test_retry_reruns_failed_and_skipped_tasks_and_keeps_completed_ones(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()
    fail = {"transform": True}
    _pipeline(wf, calls, fail)
    first = engine.run(wf, {"job": 1})
    assert first.status == "failed"
    assert statuses(first) == {
        "extract": "completed",
        "transform": "failed",
        "load": "upstream_failed",
        "index": "completed",
    }
    assert calls == {"extract": 1, "transform": 1, "index": 1}

    fail["transform"] = False
    again = engine.retry(first.execution_id)
    assert again.execution_id == first.execution_id
    assert again.status == "completed", again.error
    assert again.error is None
    assert calls == {"extract": 1, "transform": 2, "load": 1, "index": 1}
    assert set(statuses(again).values()) == {"completed"}
    assert again.tasks["extract"].context == first.tasks["extract"].context
    # Rule 8: the leaves load and index merged in declaration order, index (declared last)
    # carrying extract's rows.
    assert again.context == {"job": 1, "rows": [1, 2, 3], "loaded": 60, "indexed": 3}
    assert engine.get(first.execution_id).status == "completed"
    with pytest.raises(ExecutionStateError, match="completed"):
        engine.retry(first.execution_id)


def test_retry_after_compensation_runs_the_failed_tasks_again(engine: Engine) -> None:
    wf = Workflow(unique())
    undone: list[str] = []
    fail = {"now": True}
    wf.task(name="a", compensate=lambda ctx: undone.append("a"))(lambda ctx: ctx.update(a=1))

    @wf.task(dependencies=["a"])
    def b(ctx: Context) -> None:
        if fail["now"]:
            raise RuntimeError("b failed")

    first = engine.run(wf)
    assert first.status == "failed"
    assert undone == ["a"]
    fail["now"] = False
    again = engine.retry(first.execution_id)
    assert again.status == "completed"
    assert again.tasks["b"].status == "completed"
    assert again.context["a"] == 1
    assert undone == ["a"]  # a completed execution is not compensated
    # Whether a task whose work was compensated runs again on retry is left open here (the
    # spec says retry keeps completed tasks; a compensated one is still "completed").


def test_fork_reuses_earlier_outputs_and_applies_the_patch(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()
    _pipeline(wf, calls, {})
    original = engine.run(wf, {"job": 1})
    assert original.status == "completed"
    assert original.context["loaded"] == 60
    assert calls == {"extract": 1, "transform": 1, "load": 1, "index": 1}

    forked = engine.fork(original.execution_id, "transform", {"factor": 100})
    assert forked.execution_id != original.execution_id
    assert forked.status == "completed", forked.error
    # extract and index (not downstream of transform) are reused, not re-run.
    assert calls == {"extract": 1, "transform": 2, "load": 2, "index": 1}
    assert forked.tasks["extract"].context == original.tasks["extract"].context
    assert forked.tasks["index"].context == original.tasks["index"].context
    assert forked.tasks["transform"].context == {"job": 1, "rows": [100, 200, 300], "factor": 100}
    assert forked.context == {
        "job": 1,
        "rows": [1, 2, 3],  # from index, the last declared leaf
        "factor": 100,
        "loaded": 600,
        "indexed": 3,
    }
    assert set(statuses(forked).values()) == {"completed"}
    # The original is untouched.
    assert engine.get(original.execution_id).context["loaded"] == 60
    assert engine.task_context(original.execution_id, "transform")["rows"] == [10, 20, 30]


def test_fork_without_a_patch_from_a_root_and_of_a_failed_execution(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: Counter[str] = Counter()
    _pipeline(wf, calls, {})
    original = engine.run(wf, {"job": 1})

    same = engine.fork(original.execution_id, "load")
    assert calls == {"extract": 1, "transform": 1, "load": 2, "index": 1}
    assert same.context == original.context

    from_root = engine.fork(original.execution_id, "extract", {"factor": 2})
    assert calls == {"extract": 2, "transform": 2, "load": 3, "index": 2}
    assert from_root.context["loaded"] == 12
    assert from_root.context["job"] == 1  # the initial context is the original's

    forks = len(engine.list(workflow=wf.name))
    with pytest.raises(DurablyError, match="nope"):
        engine.fork(original.execution_id, "nope")
    with pytest.raises(ContextSerializationError):
        engine.fork(original.execution_id, "load", {"callback": print})
    assert len(engine.list(workflow=wf.name)) == forks  # nothing was written

    # A fork of a failed execution can fix it.
    broken = Workflow(unique())
    broken_calls: Counter[str] = Counter()
    fail = {"transform": True}
    _pipeline(broken, broken_calls, fail)
    failed = engine.run(broken)
    assert failed.status == "failed"
    fail["transform"] = False
    fixed = engine.fork(failed.execution_id, "transform", {"factor": 1})
    assert fixed.status == "completed"
    assert broken_calls == {"extract": 1, "transform": 2, "load": 1, "index": 1}
    assert fixed.context["loaded"] == 6
    assert engine.get(failed.execution_id).status == "failed"


# -- get, list, wait --------------------------------------------------------------------------


def test_get_list_and_wait(engine: Engine) -> None:
    wf = Workflow(unique())

    @wf.task()
    def maybe(ctx: Context) -> None:
        if ctx.get("fail"):
            raise RuntimeError("asked to fail")
        ctx["ok"] = True

    good = engine.run(wf, {"n": 1})
    bad = engine.run(wf, {"n": 2, "fail": True})
    last = engine.run(wf, {"n": 3})

    fetched = engine.get(good.execution_id)
    assert fetched.status == good.status == "completed"
    assert fetched.context == good.context == {"n": 1, "ok": True}
    assert statuses(fetched) == statuses(good)
    assert engine.get(str(good.execution_id)).execution_id == good.execution_id

    listed = engine.list(workflow=wf.name)
    assert [r.execution_id for r in listed] == [
        last.execution_id,
        bad.execution_id,
        good.execution_id,
    ]  # newest first
    assert [r.status for r in listed] == ["completed", "failed", "completed"]
    assert all(r.workflow == wf.name for r in listed)
    assert [r.execution_id for r in engine.list(status="failed", workflow=wf.name)] == [
        bad.execution_id
    ]
    assert len(engine.list(workflow=wf.name, limit=2)) == 2
    assert engine.list(workflow=wf.name, limit=1)[0].execution_id == last.execution_id
    assert engine.list(workflow=unique("none")) == []
    with pytest.raises(ValueError, match="limit"):
        engine.list(limit=0)

    waited = engine.wait(bad.execution_id)
    assert waited.status == "failed"
    assert "asked to fail" in (waited.error or "")
    assert engine.wait(good.execution_id, timeout=0.1).context == {"n": 1, "ok": True}

    # Cancelling a finished execution changes nothing.
    assert engine.cancel(good.execution_id).status == "completed"
    assert engine.cancel(bad.execution_id).status == "failed"
    assert engine.get(good.execution_id).context == {"n": 1, "ok": True}


def test_unknown_execution_ids_raise_execution_not_found(engine: Engine) -> None:
    missing = uuid.uuid4()
    calls: list[Callable[[Any], Any]] = [
        engine.get,
        engine.wait,
        lambda i: engine.wait(i, timeout=0.1),
        engine.cancel,
        engine.retry,
        engine.resume,
        lambda i: engine.fork(i, "t"),
        lambda i: engine.task_context(i, "t"),
    ]
    for call in calls:
        for execution_id in (missing, str(missing), "not-a-uuid"):
            with pytest.raises(ExecutionNotFound):
                call(execution_id)
    assert issubclass(ExecutionNotFound, LookupError)


# -- run_async --------------------------------------------------------------------------------


def test_run_async(engine: Engine) -> None:
    wf = Workflow(unique())

    @wf.task()
    async def fetch(ctx: Context) -> None:
        await asyncio.sleep(0)
        ctx["fetched"] = ctx["n"] * 2

    wf.task(name="done", dependencies=["fetch"])(lambda ctx: ctx.update(done=True))

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(engine.run_async(wf, {"n": 1}), engine.run_async(wf, {"n": 2}))
        )

    one, two = asyncio.run(main())
    assert one.status == two.status == "completed"
    assert one.context == {"n": 1, "fetched": 2, "done": True}
    assert two.context == {"n": 2, "fetched": 4, "done": True}
    assert one.execution_id != two.execution_id


def test_a_failure_handler_receives_what_the_failed_task_received(engine: Engine) -> None:
    wf = Workflow("handler_gets_passed_on_context")

    @wf.task()
    def prepare(ctx: Context) -> None:
        ctx["prepared"] = True

    @wf.task(dependencies=[prepare])
    def charge(ctx: Context) -> None:
        ctx["charged"] = True
        raise NonRetryable("card declined")

    seen: list[dict[str, object]] = []

    @wf.task(dependencies=[charge], trigger="one_failed")
    def alert(ctx: Context) -> None:
        seen.append(ctx.to_dict())

    result = engine.run(wf, {"order": 5})
    assert result.status == "failed"
    assert result.tasks["alert"].status == "completed"
    # The failed task saved nothing: its input (not its half-made changes) is passed on.
    assert seen == [{"order": 5, "prepared": True}]


def test_retry_reruns_compensated_tasks_and_what_follows(engine: Engine) -> None:
    wf = Workflow("retry_after_compensation")
    runs: list[str] = []
    undone: list[str] = []
    fail = {"ship": True}

    @wf.task(compensate=lambda ctx: undone.append("reserve"))
    def reserve(ctx: Context) -> None:
        runs.append("reserve")

    @wf.task()
    def audit(ctx: Context) -> None:
        runs.append("audit")  # no compensation: kept by retry

    @wf.task(dependencies=[reserve, audit])
    def ship(ctx: Context) -> None:
        runs.append("ship")
        if fail["ship"]:
            raise NonRetryable("no truck")

    first = engine.run(wf, {})
    assert first.status == "failed"
    assert undone == ["reserve"]
    fail["ship"] = False
    runs.clear()
    second = engine.retry(first.execution_id)
    assert second.status == "completed"
    assert sorted(runs) == ["reserve", "ship"]  # the undone step runs again, audit is kept
    assert second.tasks["reserve"].compensation is None


def test_a_function_declared_twice_is_an_ambiguous_dependency() -> None:
    wf = Workflow("ambiguous_function")

    def step(ctx: Context) -> None:
        pass

    wf.task(name="a")(step)
    wf.task(name="b")(step)
    with pytest.raises(WorkflowDefinitionError, match="several tasks"):
        wf.task(name="c", dependencies=[step])(lambda ctx: None)


def test_a_bare_decorator_gets_a_clear_error() -> None:
    wf = Workflow("bare_decorator")
    with pytest.raises(WorkflowDefinitionError, match=r"task\(\) with parentheses"):

        @wf.task  # type: ignore[arg-type]
        def step(ctx: Context) -> None:
            pass


def test_an_initial_context_too_large_or_unstorable_writes_nothing(tmp_path: Any) -> None:
    wf = Workflow("bad_initial_context")
    wf.task()(lambda ctx: None)
    with Engine(f"sqlite:///{tmp_path}/x.db", max_context_bytes=1000) as engine:
        with pytest.raises(ContextTooLargeError, match="store the data elsewhere"):
            engine.run(wf, {"blob": "x" * 2000})
        with pytest.raises(ContextSerializationError, match="callback"):
            engine.start(wf, {"callback": lambda: None})
        assert engine.list() == []


def test_a_missing_key_raised_by_task_code_is_retried_like_any_error(engine: Engine) -> None:
    wf = Workflow("missing_key_is_retried")

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=False))
    def reads(ctx: Context, handle: TaskHandle) -> None:
        if handle.attempt == 1:
            ctx.replace("not_there_yet", 1)  # raises ContextKeyMissing
        ctx["ok"] = handle.attempt

    result = engine.run(wf, {})
    assert result.status == "completed"
    assert result.tasks["reads"].attempts == 2
