"""Durable waits and events (SPEC §3.4, issue 10 items 1 and 2).

``wait=delay(...) | until(...) | event(...)`` on a task, ``engine.send``, the mailbox, event
timeouts and retries, on the in-process path (``engine.run``), the worker path, across a killed
process, and PostgreSQL's NOTIFY wake-up. Time is a ManualClock the tests move: no test sleeps
through a timer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durably import (
    Context,
    ContextError,
    ContextSerializationError,
    Engine,
    ExecutionNotFound,
    ExecutionStateError,
    RetryPolicy,
    Workflow,
    WorkflowDefinitionError,
    delay,
    event,
    until,
)
from durably.clock import ManualClock
from durably.json_views import execution_json

from . import waits_app
from .conftest import unique, wait_until
from .workers import running_worker

ROOT = Path(__file__).resolve().parent.parent
NO_RETRY_DELAY = RetryPolicy(max_attempts=2, backoff="fixed", initial_delay=0, jitter=False)


# -- helpers -----------------------------------------------------------------------------------


class Background:
    """``fn()`` on a daemon thread; ``join()`` returns its result or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 20.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not return in time"
        if self.error is not None:
            raise self.error
        return self.result


def run_in_background(
    engine: Engine, wf: Workflow, ctx: dict[str, Any] | None = None
) -> Background:
    return Background(lambda: engine.run(wf, ctx or {}))


def execution_of(engine: Engine, wf: Workflow) -> str:
    """The id of the (only) execution of ``wf``, once it exists."""
    wait_until(lambda: bool(engine.list(workflow=wf.name)), f"an execution of {wf.name}")
    [execution] = engine.list(workflow=wf.name)
    return str(execution.execution_id)


def status(engine: Engine, execution_id: str, task: str) -> str:
    return engine.get(execution_id).tasks[task].status


def wait_status(engine: Engine, execution_id: str, task: str, wanted: str) -> None:
    wait_until(
        lambda: status(engine, execution_id, task) == wanted,
        f"task {task!r} {wanted} (it is {status(engine, execution_id, task)})",
    )


def record(engine: Engine, execution_id: str, task: str) -> Any:
    """The stored task row (wake time, awaited event)."""
    return next(t for t in engine.snapshot(execution_id).tasks if t.name == task)


def events(engine: Engine, execution_id: str) -> list[Any]:
    with engine.store.read() as tx:
        return engine.runtime.repo.events(tx, execution_id)


class Calls:
    """Thread-safe counts of task bodies run, and the inputs they saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.seen: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, name: str, ctx: Context) -> None:
        with self.lock:
            self.counts[name] += 1
            self.seen.setdefault(name, []).append(dict(ctx))


# A whole second: stored times (microseconds) equal the clock's floats exactly (the case
# where they do not is test_a_stored_retry_time_rounded_up_does_not_stall_a_frozen_clock).
START = 1_800_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def clocked(store_url: str, clock: ManualClock) -> Iterator[Engine]:
    """An engine on a ManualClock. The long lease keeps a moved clock from making running
    claims look stale (that would be recovery, not waiting)."""
    with Engine(store_url, clock=clock, lease=3600) as opened:
        yield opened


def approval_flow(
    calls: Calls,
    wait: Any,
    *,
    retry: RetryPolicy | None = None,
    fail_first: bool = False,
) -> Workflow:
    """prepare → gated (with ``wait``) → after."""
    wf = Workflow(unique("waits"))

    @wf.task()
    def prepare(ctx: Context) -> None:
        calls("prepare", ctx)
        ctx["prepared"] = True

    @wf.task(dependencies=[prepare], wait=wait, retry=retry)
    def gated(ctx: Context, handle: Any) -> None:
        calls("gated", ctx)
        if fail_first and handle.attempt == 1:
            raise RuntimeError("the body fails once")
        ctx["gated"] = handle.attempt

    @wf.task(dependencies=[gated])
    def after(ctx: Context) -> None:
        calls("after", ctx)
        ctx["after"] = True

    return wf


# -- 1. definitions ----------------------------------------------------------------------------

NAIVE = datetime(2030, 1, 1, 12, 0)  # a naive datetime is the point


@pytest.mark.parametrize(
    "make",
    [
        lambda: delay(-1),
        lambda: delay(-0.001),
        lambda: delay(math.nan),
        lambda: delay(math.inf),
        lambda: delay(-math.inf),
        lambda: delay(400 * 24 * 3600),
        lambda: delay(timedelta(days=400)),
        lambda: delay(timedelta(seconds=-1)),
        lambda: delay(True),
        lambda: delay("5"),
        lambda: delay(None),
        lambda: until(NAIVE),
        lambda: until("2030-01-01T00:00:00+00:00"),
        lambda: until(1_900_000_000),
        lambda: until(datetime(2030, 1, 1, tzinfo=UTC).date()),
        lambda: event(""),
        lambda: event("   "),
        lambda: event(None),
        lambda: event(5),
        lambda: event("ok", key=""),
        lambda: event("ok", key="_private"),
        lambda: event("ok", key=3),
        lambda: event("ok", timeout=0),
        lambda: event("ok", timeout=timedelta(0)),
        lambda: event("ok", timeout=-5),
        lambda: event("ok", timeout=math.nan),
        lambda: event("ok", timeout=math.inf),
        lambda: event("ok", timeout="60"),
        lambda: event("ok", timeout=400 * 24 * 3600),
    ],
)
def test_bad_wait_values_are_definition_errors(make: Callable[[], Any]) -> None:
    with pytest.raises(WorkflowDefinitionError):
        make()


@pytest.mark.parametrize("make", [lambda: delay(10**400), lambda: event("ok", timeout=10**400)])
def test_a_huge_int_is_a_definition_error(make: Callable[[], Any]) -> None:
    with pytest.raises(WorkflowDefinitionError):
        make()


def test_good_wait_values_are_accepted() -> None:
    assert delay(0).to_json() == {"kind": "delay", "seconds": 0.0}
    assert delay(timedelta(minutes=2)).to_json()["seconds"] == 120.0
    assert until(datetime(2030, 1, 1, tzinfo=UTC)).to_json()["kind"] == "until"
    assert event("ok", timeout=timedelta(hours=1), key="k").to_json() == {
        "kind": "event",
        "name": "ok",
        "timeout": 3600.0,
        "key": "k",
    }


@pytest.mark.parametrize(
    "wait", [5, "event", timedelta(seconds=5), {"kind": "delay", "seconds": 5}, lambda: None]
)
def test_a_wait_of_the_wrong_type_is_refused_at_decoration(wait: object) -> None:
    wf = Workflow(unique("bad_wait"))
    with pytest.raises(WorkflowDefinitionError, match="wait"):
        wf.task(wait=wait)  # type: ignore[arg-type]


def _one_task(name: str, wait: Any) -> Workflow:
    wf = Workflow(name)

    @wf.task(wait=wait)
    def only(ctx: Context) -> None:
        ctx["done"] = True

    return wf


def test_the_wait_is_part_of_the_version() -> None:
    name = unique("wait_version")
    versions = [
        _one_task(name, wait).version
        for wait in (
            None,
            delay(5),
            delay(6),
            until(datetime(2030, 1, 1, tzinfo=UTC)),
            event("a"),
            event("b"),
            event("a", timeout=5),
            event("a", key="k"),
        )
    ]
    assert len(set(versions)) == len(versions), versions
    assert _one_task(name, delay(5)).version == _one_task(name, delay(5)).version


# -- 2. in-process: timers ---------------------------------------------------------------------


def test_a_delay_waits_for_the_clock_then_runs_promptly(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, delay(timedelta(seconds=30)))
    started = clock.now()
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")

    row = record(clocked, execution_id, "gated")
    assert row.wake_at.timestamp() == pytest.approx(started + 30, abs=0.01)
    assert row.wait_event is None
    assert clocked.get(execution_id).status == "running"
    time.sleep(0.3)  # the runner looks again at least every 0.5 s: nothing must run early
    assert calls.counts["gated"] == 0

    clock.advance(29)
    time.sleep(0.3)
    assert calls.counts["gated"] == 0  # one second to go
    clock.advance(1.5)
    moved = time.monotonic()
    result = run.join()
    assert time.monotonic() - moved < 2.0
    assert result.status == "completed", result.error
    assert result.context["after"] is True
    assert calls.counts == Counter(prepare=1, gated=1, after=1)
    assert result.tasks["gated"].attempts == 1


def test_until_in_the_past_runs_at_once(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, until(datetime(2001, 1, 1, tzinfo=UTC)))
    result = clocked.run(wf, {})  # the ManualClock never moves: a wait would hang here
    assert result.status == "completed", result.error
    assert calls.counts == Counter(prepare=1, gated=1, after=1)


def test_until_in_the_future_waits_until_that_moment(clocked: Engine, clock: ManualClock) -> None:
    calls = Calls()
    moment = datetime.fromtimestamp(clock.now() + 3600, tz=UTC)
    wf = approval_flow(calls, until(moment))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    assert record(clocked, execution_id, "gated").wake_at == moment
    clock.advance(3601)
    assert run.join().status == "completed"
    assert calls.counts["gated"] == 1


def test_a_zero_delay_does_not_wait(clocked: Engine) -> None:
    calls = Calls()
    result = clocked.run(approval_flow(calls, delay(0)), {})
    assert result.status == "completed", result.error
    assert calls.counts["gated"] == 1


# -- 2. in-process: events ---------------------------------------------------------------------


def test_an_event_delivers_its_payload_at_the_key(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", key="approval"))
    run = run_in_background(clocked, wf, {"order": 7})
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    row = record(clocked, execution_id, "gated")
    assert row.wait_event == "approved"
    assert row.wake_at is None  # no timeout: it waits forever
    time.sleep(0.2)
    assert calls.counts["gated"] == 0

    assert clocked.send(execution_id, "approved", {"by": "ann"}) is True
    result = run.join()
    assert result.status == "completed", result.error
    [seen] = calls.seen["gated"]
    assert seen == {"order": 7, "prepared": True, "approval": {"by": "ann"}}
    assert "approved" not in seen
    # Saved: the payload is part of what the task passed on, and of the final context.
    assert result.tasks["gated"].context["approval"] == {"by": "ann"}
    assert result.context["approval"] == {"by": "ann"}
    [stored] = events(clocked, execution_id)
    assert stored.name == "approved"
    assert stored.consumed_by == record(clocked, execution_id, "gated").id


def test_the_default_key_is_the_event_name(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved"))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    payload = {"when": datetime(2030, 1, 2, tzinfo=UTC), "amount": (1, 2)}
    clocked.send(execution_id, "approved", payload)
    result = run.join()
    assert result.status == "completed", result.error
    # Any context value: a datetime and a tuple come back as themselves.
    assert calls.seen["gated"][0]["approved"] == payload


def test_a_none_payload_is_delivered_as_none(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("ping"))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    assert clocked.send(execution_id, "ping") is True
    assert run.join().status == "completed"
    seen = calls.seen["gated"][0]
    assert "ping" in seen
    assert seen["ping"] is None


def test_show_json_diffs_a_task_against_the_input_it_really_received(clocked: Engine) -> None:
    """The payload is part of the task's input (SPEC §3.4), so `show` diffs the output
    against that input: a payload the task changed is 'changed' (old: what was delivered),
    and input_from says where it came from."""
    wf = Workflow(unique("waits_diff"))

    @wf.task(wait=event("approved", key="approval"))
    def gated(ctx: Context) -> None:
        ctx["approval"] = {**ctx["approval"], "checked": True}

    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clocked.send(execution_id, "approved", {"by": "ann"})
    shown = execution_json(clocked, run.join())["tasks"]["gated"]
    assert shown["diff"]["changed"] == {
        "approval": {"old": {"by": "ann"}, "new": {"by": "ann", "checked": True}}
    }
    assert "approval" not in shown["diff"]["added"]
    assert "approval" in (shown["input_from"] or "")  # where the payload came from


def test_an_event_sent_before_the_wait_is_kept_in_the_mailbox(clocked: Engine) -> None:
    release = threading.Event()
    calls = Calls()
    wf = Workflow(unique("waits_mailbox"))

    @wf.task()
    def slow(ctx: Context) -> None:
        assert release.wait(20)
        ctx["slow"] = True

    @wf.task(dependencies=[slow], wait=event("go"))
    def gated(ctx: Context) -> None:
        calls("gated", ctx)

    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "slow", "running")
    assert clocked.send(execution_id, "go", "early") is True
    [pending] = events(clocked, execution_id)
    assert pending.consumed_by is None
    assert pending.consumed_at is None
    release.set()
    result = run.join()
    assert result.status == "completed", result.error
    assert calls.seen["gated"][0]["go"] == "early"
    [consumed] = events(clocked, execution_id)
    assert consumed.consumed_by == record(clocked, execution_id, "gated").id
    assert consumed.consumed_at is not None


def test_each_event_is_consumed_once(clocked: Engine) -> None:
    """Two tasks wait for the same name: each gets its own event."""
    calls = Calls()
    wf = Workflow(unique("waits_twice"))

    @wf.task(wait=event("slot"))
    def first(ctx: Context) -> None:
        calls("first", ctx)

    @wf.task(wait=event("slot"))
    def second(ctx: Context) -> None:
        calls("second", ctx)

    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "first", "waiting")
    wait_status(clocked, execution_id, "second", "waiting")
    clocked.send(execution_id, "slot", 1)
    wait_until(lambda: sum(calls.counts.values()) == 1, "one task woken by the first event")
    time.sleep(0.3)
    assert sum(calls.counts.values()) == 1  # the other still waits
    assert clocked.get(execution_id).status == "running"
    clocked.send(execution_id, "slot", 2)
    result = run.join()
    assert result.status == "completed", result.error
    got = sorted(calls.seen[name][0]["slot"] for name in ("first", "second"))
    assert got == [1, 2]
    assert calls.counts == Counter(first=1, second=1)
    consumers = {e.consumed_by for e in events(clocked, execution_id)}
    assert consumers == {record(clocked, execution_id, n).id for n in ("first", "second")}


def test_events_in_the_mailbox_go_one_to_each_waiter(clocked: Engine) -> None:
    release = threading.Event()
    calls = Calls()
    wf = Workflow(unique("waits_two_mail"))

    @wf.task()
    def gate(ctx: Context) -> None:
        assert release.wait(20)

    for name in ("left", "right"):

        @wf.task(name=name, dependencies=[gate], wait=event("slot"))
        def waiter(ctx: Context, name: str = name) -> None:
            calls(name, ctx)

    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gate", "running")
    assert clocked.send(execution_id, "slot", "a") is True
    assert clocked.send(execution_id, "slot", "b") is True
    release.set()
    assert run.join().status == "completed"
    assert sorted(calls.seen[n][0]["slot"] for n in ("left", "right")) == ["a", "b"]


def test_the_mailbox_is_first_in_first_out(clocked: Engine) -> None:
    release = threading.Event()
    got: list[int] = []
    wf = Workflow(unique("waits_fifo"))

    @wf.task()
    def gate(ctx: Context) -> None:
        assert release.wait(20)

    previous: str = "gate"
    for n in range(8):

        @wf.task(name=f"w{n}", dependencies=[previous], wait=event("slot"))
        def waiter(ctx: Context) -> None:
            got.append(ctx["slot"])

        previous = f"w{n}"

    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gate", "running")
    for n in range(8):  # the ManualClock does not move: one timestamp for all
        clocked.send(execution_id, "slot", n)
    release.set()
    assert run.join().status == "completed"
    assert got == list(range(8))


def test_a_repeated_key_is_ignored(clocked: Engine) -> None:
    release = threading.Event()
    calls = Calls()
    wf = Workflow(unique("waits_idem"))

    @wf.task()
    def slow(ctx: Context) -> None:
        assert release.wait(20)

    @wf.task(dependencies=[slow], wait=event("paid"))
    def gated(ctx: Context) -> None:
        calls("gated", ctx)

    @wf.task(dependencies=[slow], wait=event("paid", timeout=60))
    def also(ctx: Context) -> None:
        calls("also", ctx)

    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "slow", "running")
    assert clocked.send(execution_id, "paid", {"n": 1}, key="charge-1") is True
    assert clocked.send(execution_id, "paid", {"n": 2}, key="charge-1") is False
    assert len(events(clocked, execution_id)) == 1
    release.set()
    wait_until(lambda: sum(calls.counts.values()) == 1, "one waiter woken")
    # Same key after it was consumed: still ignored.
    assert clocked.send(execution_id, "paid", {"n": 3}, key="charge-1") is False
    time.sleep(0.3)
    assert sum(calls.counts.values()) == 1
    assert clocked.send(execution_id, "paid", {"n": 4}, key="charge-2") is True
    result = run.join()
    assert result.status == "completed", result.error
    seen = sorted(calls.seen[n][0]["paid"]["n"] for n in ("gated", "also"))
    assert seen == [1, 4]  # the repeated sends (2 and 3) were never seen
    assert sorted(e.key for e in events(clocked, execution_id)) == ["charge-1", "charge-2"]


def test_send_to_an_unknown_execution(clocked: Engine) -> None:
    with pytest.raises(ExecutionNotFound):
        clocked.send("00000000-0000-4000-8000-000000000000", "go", 1)


def test_send_to_a_finished_execution(clocked: Engine) -> None:
    wf = approval_flow(Calls(), None)
    result = clocked.run(wf, {})
    assert result.status == "completed"
    with pytest.raises(ExecutionStateError):
        clocked.send(result.execution_id, "go", 1)
    assert events(clocked, str(result.execution_id)) == []


UNSTORABLE = [lambda: None, "\ud800", {"nested": {"bad": object()}}, {1: "int key"}]


def test_an_unstorable_payload_stores_nothing(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("go"))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    for payload in UNSTORABLE:  # a lambda, a lone surrogate, an object, a non-str key
        with pytest.raises(ContextSerializationError):
            clocked.send(execution_id, "go", payload)
        with pytest.raises(ContextSerializationError):
            clocked.send(execution_id, "go", payload, key="once")
    assert events(clocked, execution_id) == []
    time.sleep(0.2)
    assert status(clocked, execution_id, "gated") == "waiting"
    assert calls.counts["gated"] == 0
    # Nothing was stored: not even the idempotency key of the refused sends.
    assert clocked.send(execution_id, "go", "fine", key="once") is True
    assert run.join().status == "completed"
    assert calls.seen["gated"][0]["go"] == "fine"


def test_an_oversized_payload_stores_nothing(store_url: str, clock: ManualClock) -> None:
    with Engine(store_url, clock=clock, lease=3600, max_context_bytes=2000) as engine:
        calls = Calls()
        wf = approval_flow(calls, event("go"))
        run = run_in_background(engine, wf)
        execution_id = execution_of(engine, wf)
        wait_status(engine, execution_id, "gated", "waiting")
        with pytest.raises(ContextError):
            engine.send(execution_id, "go", "x" * 5000)
        assert events(engine, execution_id) == []
        assert status(engine, execution_id, "gated") == "waiting"
        engine.send(execution_id, "go", "small")
        assert run.join().status == "completed"


def test_send_refuses_a_bad_name_or_key(clocked: Engine) -> None:
    wf = approval_flow(Calls(), event("go"))
    execution_id = clocked.start(wf, {})
    for name, key in [("", None), ("   ", None), (None, None), (5, None), ("go", ""), ("go", 5)]:
        with pytest.raises((TypeError, ValueError)):
            clocked.send(execution_id, name, 1, key=key)
    assert events(clocked, str(execution_id)) == []


# -- 3. event timeouts -------------------------------------------------------------------------


def test_an_event_wait_past_its_timeout_fails_with_wait_timeout(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10))
    started = clock.now()
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    assert record(clocked, execution_id, "gated").wake_at.timestamp() == pytest.approx(
        started + 10, abs=0.01
    )
    clock.advance(9)
    time.sleep(0.3)
    assert status(clocked, execution_id, "gated") == "waiting"
    clock.advance(2)
    result = run.join()
    assert result.status == "failed"
    gated = result.tasks["gated"]
    assert gated.status == "failed"
    assert "WaitTimeout" in (gated.error or "")
    [attempt] = gated.history
    assert attempt.status == "failed"
    assert "WaitTimeout" in (attempt.error or "")
    assert result.tasks["after"].status == "upstream_failed"
    assert calls.counts == Counter(prepare=1)  # the body never ran
    assert "WaitTimeout" in (result.error or "")
    # Finished: a late event is refused.
    with pytest.raises(ExecutionStateError):
        clocked.send(execution_id, "approved", 1)


def test_a_timed_out_event_wait_is_retried_and_waits_again(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10), retry=NO_RETRY_DELAY)
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clock.advance(11)
    # The first attempt failed; the retry waits again, with a fresh timeout.
    wait_until(
        lambda: clocked.get(execution_id).tasks["gated"].history != (), "the timed-out attempt"
    )
    wait_status(clocked, execution_id, "gated", "waiting")
    row = record(clocked, execution_id, "gated")
    assert row.wait_event == "approved"
    assert row.wake_at.timestamp() == pytest.approx(clock.now() + 10, abs=0.01)
    assert calls.counts["gated"] == 0
    assert clocked.send(execution_id, "approved", "yes") is True
    result = run.join()
    assert result.status == "completed", result.error
    gated = result.tasks["gated"]
    assert gated.attempts == 2
    assert [a.status for a in gated.history] == ["failed", "completed"]
    assert "WaitTimeout" in (gated.history[0].error or "")
    assert calls.counts["gated"] == 1
    assert calls.seen["gated"][0]["approved"] == "yes"
    assert result.context["gated"] == 2


def test_a_stored_retry_time_rounded_up_does_not_stall_a_frozen_clock(store_url: str) -> None:
    clock = ManualClock(START + 0.0000007)  # rounds up to the next microsecond when stored
    with Engine(store_url, clock=clock, lease=3600) as engine:
        calls = Calls()
        wf = approval_flow(calls, event("approved", timeout=10), retry=NO_RETRY_DELAY)
        run = run_in_background(engine, wf)
        execution_id = execution_of(engine, wf)
        wait_status(engine, execution_id, "gated", "waiting")
        clock.advance(11)
        wait_until(lambda: record(engine, execution_id, "gated").attempt == 1, "attempt 1")
        wait_status(engine, execution_id, "gated", "waiting")
        engine.send(execution_id, "approved", "yes")
        try:
            result = run.join(timeout=1.5)
        finally:
            clock.advance(1)  # unstick it either way, so the engine closes cleanly
            run.thread.join(10)
        assert result.status == "completed"


def test_a_retry_whose_wait_times_out_again_fails(clocked: Engine, clock: ManualClock) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10), retry=NO_RETRY_DELAY)
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clock.advance(11)
    wait_until(lambda: record(clocked, execution_id, "gated").attempt == 1, "first attempt")
    wait_status(clocked, execution_id, "gated", "waiting")
    clock.advance(11)
    result = run.join()
    assert result.status == "failed"
    assert [a.status for a in result.tasks["gated"].history] == ["failed", "failed"]
    assert result.tasks["after"].status == "upstream_failed"
    assert calls.counts["gated"] == 0


def test_an_event_before_its_timeout_cancels_the_timeout(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clock.advance(5)
    clocked.send(execution_id, "approved", 1)
    result = run.join()
    clock.advance(100)
    assert result.status == "completed", result.error
    assert result.tasks["gated"].attempts == 1


# -- 4. a satisfied wait is not repeated by a retry of the body --------------------------------


def test_a_delay_is_not_repeated_when_the_body_retries(clocked: Engine, clock: ManualClock) -> None:
    calls = Calls()
    wf = approval_flow(calls, delay(30), retry=NO_RETRY_DELAY, fail_first=True)
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clock.advance(31)  # once: the retry must not wait another 30 s
    result = run.join()
    assert result.status == "completed", result.error
    assert calls.counts["gated"] == 2
    assert [a.status for a in result.tasks["gated"].history] == ["failed", "completed"]


def test_an_event_is_not_awaited_again_when_the_body_retries(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved"), retry=NO_RETRY_DELAY, fail_first=True)
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clocked.send(execution_id, "approved", {"by": "ann"})
    result = run.join()
    assert result.status == "completed", result.error
    assert calls.counts["gated"] == 2
    # The retry still has the payload in its input.
    assert [seen["approved"] for seen in calls.seen["gated"]] == [{"by": "ann"}] * 2


# -- 5. the worker path ------------------------------------------------------------------------


def test_worker_runs_a_delay_wait_when_the_clock_moves(clocked: Engine, clock: ManualClock) -> None:
    calls = Calls()
    wf = approval_flow(calls, delay(60))
    clocked.register(wf)
    started = clock.now()
    execution_id = str(clocked.start(wf, {}))
    with running_worker(clocked):
        wait_status(clocked, execution_id, "gated", "waiting")
        row = record(clocked, execution_id, "gated")
        assert row.wake_at.timestamp() == pytest.approx(started + 60, abs=0.01)
        assert row.attempt == 0  # the claim that found the wait started no attempt
        time.sleep(0.3)
        assert calls.counts["gated"] == 0
        clock.advance(61)
        result = clocked.wait(execution_id, timeout=20)
    assert result.status == "completed", result.error
    assert calls.counts == Counter(prepare=1, gated=1, after=1)
    assert result.tasks["gated"].attempts == 1


def test_an_idle_worker_wakes_for_a_retry_when_it_is_due(store_url: str) -> None:
    """A retry's time is a wake time like a timer's: a worker whose poll interval is long
    runs the retry when it is due, not when the interval ends."""
    attempts: list[float] = []
    wf = Workflow(unique("retry_wake"))
    once = RetryPolicy(max_attempts=2, backoff="fixed", initial_delay=0.3, jitter=False)

    @wf.task(retry=once)
    def flaky(ctx: Context) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("the first attempt fails")

    with Engine(store_url, workflows=[wf]) as engine:
        execution_id = str(engine.start(wf, {}))
        with running_worker(engine, poll_interval=5):
            result = engine.wait(execution_id, timeout=20)
    assert result.status == "completed", result.error
    assert len(attempts) == 2
    assert 0.3 <= attempts[1] - attempts[0] < 2.0  # the poll interval is 5 s


def test_worker_runs_an_event_wait_when_the_event_arrives(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", key="approval"))
    clocked.register(wf)
    execution_id = str(clocked.start(wf, {"order": 1}))
    with running_worker(clocked):
        wait_status(clocked, execution_id, "gated", "waiting")
        assert record(clocked, execution_id, "gated").attempt == 0
        time.sleep(0.2)
        assert calls.counts["gated"] == 0
        assert clocked.send(execution_id, "approved", {"by": "bo"}) is True
        result = clocked.wait(execution_id, timeout=20)
    assert result.status == "completed", result.error
    assert calls.seen["gated"][0]["approval"] == {"by": "bo"}
    assert result.context["approval"] == {"by": "bo"}
    assert result.tasks["gated"].attempts == 1


def test_worker_consumes_an_event_sent_before_it_started(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved"))
    clocked.register(wf)
    execution_id = str(clocked.start(wf, {}))
    assert clocked.send(execution_id, "approved", "early", key="k") is True
    assert clocked.send(execution_id, "approved", "dup", key="k") is False
    with running_worker(clocked):
        result = clocked.wait(execution_id, timeout=20)
    assert result.status == "completed", result.error
    assert calls.seen["gated"][0]["approved"] == "early"
    [consumed] = events(clocked, execution_id)
    assert consumed.consumed_by == record(clocked, execution_id, "gated").id


def test_worker_event_timeout_is_retried_and_waits_again(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10), retry=NO_RETRY_DELAY)
    clocked.register(wf)
    execution_id = str(clocked.start(wf, {}))
    with running_worker(clocked):
        wait_status(clocked, execution_id, "gated", "waiting")
        clock.advance(11)
        wait_until(lambda: record(clocked, execution_id, "gated").attempt == 1, "attempt 1")
        wait_status(clocked, execution_id, "gated", "waiting")
        row = record(clocked, execution_id, "gated")
        assert row.wake_at.timestamp() == pytest.approx(clock.now() + 10, abs=0.01)
        assert calls.counts["gated"] == 0
        clocked.send(execution_id, "approved", "late but in time")
        result = clocked.wait(execution_id, timeout=20)
    assert result.status == "completed", result.error
    gated = result.tasks["gated"]
    assert [a.status for a in gated.history] == ["failed", "completed"]
    assert "WaitTimeout" in (gated.history[0].error or "")
    assert calls.seen["gated"][0]["approved"] == "late but in time"


def test_worker_event_timeout_without_retry_fails_the_execution(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10))
    clocked.register(wf)
    execution_id = str(clocked.start(wf, {}))
    with running_worker(clocked):
        wait_status(clocked, execution_id, "gated", "waiting")
        clock.advance(11)
        result = clocked.wait(execution_id, timeout=20)
    assert result.status == "failed"
    assert "WaitTimeout" in (result.tasks["gated"].error or "")
    assert result.tasks["after"].status == "upstream_failed"
    assert calls.counts == Counter(prepare=1)


def test_worker_does_not_repeat_a_delay_when_the_body_retries(
    clocked: Engine, clock: ManualClock
) -> None:
    calls = Calls()
    wf = approval_flow(calls, delay(30), retry=NO_RETRY_DELAY, fail_first=True)
    clocked.register(wf)
    execution_id = str(clocked.start(wf, {}))
    with running_worker(clocked):
        wait_status(clocked, execution_id, "gated", "waiting")
        clock.advance(31)
        result = clocked.wait(execution_id, timeout=20)
    assert result.status == "completed", result.error
    assert calls.counts["gated"] == 2


def test_a_running_in_process_driver_keeps_its_waiting_execution(store_url: str) -> None:
    """An engine.run waiting on an event keeps beating: a worker of another engine, with a
    short lease, does not take the execution over while it waits."""
    calls = Calls()
    wf = approval_flow(calls, event("approved"))
    with Engine(store_url, lease=0.5) as driver, Engine(store_url, lease=0.5) as other:
        other.register(wf)
        run = run_in_background(driver, wf)
        execution_id = execution_of(driver, wf)
        with running_worker(other):
            wait_status(driver, execution_id, "gated", "waiting")
            time.sleep(1.3)  # more than two leases
            other.send(execution_id, "approved", 1)
            result = run.join()
    assert result.status == "completed", result.error
    assert calls.counts == Counter(prepare=1, gated=1, after=1)


@pytest.mark.postgres
def test_two_workers_never_run_a_woken_task_twice(postgres_url: str) -> None:
    clock = ManualClock()
    calls = Calls()
    wf = Workflow(unique("waits_two_workers"))

    @wf.task(wait=delay(30))
    def timer(ctx: Context, handle: Any) -> None:
        calls(f"timer:{handle.execution_id}", ctx)

    @wf.task(wait=event("go"))
    def signal_(ctx: Context, handle: Any) -> None:
        calls(f"event:{handle.execution_id}", ctx)

    @wf.task(dependencies=[timer, signal_])
    def after(ctx: Context, handle: Any) -> None:
        calls(f"after:{handle.execution_id}", ctx)

    with (
        Engine(postgres_url, clock=clock, lease=3600, workflows=[wf]) as first,
        Engine(postgres_url, clock=clock, lease=3600, workflows=[wf]) as second,
    ):
        ids = [str(first.start(wf, {"n": n})) for n in range(12)]
        with running_worker(first, concurrency=4), running_worker(second, concurrency=4):
            for execution_id in ids:
                wait_status(first, execution_id, "timer", "waiting")
                wait_status(first, execution_id, "signal_", "waiting")
            clock.advance(31)
            for n, execution_id in enumerate(ids):
                second.send(execution_id, "go", n)
            results = [first.wait(execution_id, timeout=30) for execution_id in ids]
    assert [r.status for r in results] == ["completed"] * len(ids)
    assert set(calls.counts.values()) == {1}
    assert len(calls.counts) == 3 * len(ids)
    for n, execution_id in enumerate(ids):
        assert calls.seen[f"event:{execution_id}"][0]["go"] == n


@pytest.mark.postgres
def test_an_event_racing_a_timeout_claim_is_not_lost(postgres_url: str) -> None:
    clock = ManualClock(START)
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10), retry=NO_RETRY_DELAY)
    with (
        Engine(postgres_url, clock=clock, lease=3600, workflows=[wf]) as worker_engine,
        Engine(postgres_url, clock=clock, lease=3600, workflows=[wf]) as sender,
    ):
        execution_id = str(sender.start(wf, {}))
        repo = worker_engine.runtime.repo
        original = repo.executions
        armed, inside, release = threading.Event(), threading.Event(), threading.Event()

        def held_claim(tx: Any, *args: Any) -> Any:
            # Called inside the worker's claim transaction, after claim_tasks locked the row.
            if armed.is_set():
                armed.clear()
                inside.set()
                release.wait(10)
            return original(tx, *args)

        repo.executions = held_claim  # type: ignore[method-assign]
        with running_worker(worker_engine):
            wait_status(sender, execution_id, "gated", "waiting")
            armed.set()
            clock.advance(11)  # the worker claims the expired wait, and is held there
            assert inside.wait(10)
            send = Background(lambda: sender.send(execution_id, "approved", "in time"))
            time.sleep(0.5)  # send() is now blocked on the claimed row
            release.set()
            assert send.join() is True
            try:
                wait_until(lambda: record(sender, execution_id, "gated").attempt >= 1, "attempt")
                time.sleep(0.3)  # the retry: it takes the event, or it waits again
                row = record(sender, execution_id, "gated")
                [sent] = events(sender, execution_id)
                # The invariant: an event is in the mailbox, or with the task that took it.
                assert sent.consumed_by is None or row.received_text is not None, (
                    f"event consumed by {sent.consumed_by}, task {row.status} without it"
                )
                wait_until(lambda: sender.get(execution_id).done, "the execution", timeout=5)
            finally:
                clock.advance(11)  # let a lost event's retry time out, so the test ends
        result = worker_engine.wait(execution_id, timeout=10)
    assert result.status == "completed", result.error
    assert calls.seen["gated"][0]["approved"] == "in time"


# -- 6. durability: a waiting execution survives its process -----------------------------------


def spawn(url: str, which: str, marks: Path) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "DURABLY_MARKS": str(marks), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.waits_app", url, which], cwd=ROOT, env=environ
    )


def marks_of(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


@contextlib.contextmanager
def left_waiting(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch, which: str, task: str
) -> Iterator[tuple[Engine, str, Path]]:
    """An execution started by a child process (``tests/waits_app.py WHICH``), killed with
    SIGKILL once ``task`` waits: this process's engine on it, its id and the marks file."""
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    wf = getattr(waits_app, which)
    child = spawn(url, which, marks)
    with Engine(url, workflows=[wf]) as engine:
        try:
            execution_id = execution_of(engine, wf)
            wait_status(engine, execution_id, task, "waiting")
        finally:
            kill(child)
        yield engine, execution_id, marks


@pytest.mark.slow
def test_a_waiting_execution_survives_its_process(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with left_waiting(tmp_path, store_url, monkeypatch, "approval", "approve") as found:
        engine, execution_id, marks = found
        assert engine.get(execution_id).status == "running"
        assert engine.send(execution_id, "approved", {"by": "ann"}, key="a-1") is True
        assert engine.send(execution_id, "approved", {"by": "bob"}, key="a-1") is False
        result = engine.resume(execution_id)
    assert result.status == "completed", result.error
    assert result.context["approved_by"] == "ann"
    assert result.context["shipped"] is True
    assert marks_of(marks) == Counter(request=1, approve=1, ship=1)


@pytest.mark.slow
def test_a_killed_process_event_in_the_mailbox_survives(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume after the kill first, then send: the resumed run waits and takes the event."""
    with left_waiting(tmp_path, store_url, monkeypatch, "approval", "approve") as found:
        engine, execution_id, marks = found
        run = Background(lambda: engine.resume(execution_id))
        time.sleep(0.3)
        assert status(engine, execution_id, "approve") == "waiting"
        engine.send(execution_id, "approved", {"by": "cy"})
        result = run.join()
    assert result.status == "completed", result.error
    assert result.context["approved_by"] == "cy"
    assert marks_of(marks) == Counter(request=1, approve=1, ship=1)


@pytest.mark.slow
def test_a_timer_survives_its_process(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with left_waiting(tmp_path, store_url, monkeypatch, "timer", "later") as found:
        engine, execution_id, marks = found
        wake_at = record(engine, execution_id, "later").wake_at
        result = engine.resume(execution_id)
        assert datetime.now(UTC) >= wake_at  # not before its stored time
    assert result.status == "completed", result.error
    assert marks_of(marks) == Counter(begin=1, later=1)


# -- 7. cancel and retry -----------------------------------------------------------------------


def test_cancelling_skips_the_waiting_task(clocked: Engine) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved"))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    cancelled = clocked.cancel(execution_id)
    assert cancelled.status == "cancelled"
    result = run.join()
    assert result.status == "cancelled"
    assert result.tasks["gated"].status == "skipped"
    assert result.tasks["after"].status == "skipped"
    assert calls.counts == Counter(prepare=1)
    with pytest.raises(ExecutionStateError):
        clocked.send(execution_id, "approved", 1)


def test_cancelling_a_queued_waiting_execution(clocked: Engine, clock: ManualClock) -> None:
    calls = Calls()
    wf = approval_flow(calls, delay(10))
    clocked.register(wf)
    execution_id = str(clocked.start(wf, {}))
    with running_worker(clocked):
        wait_status(clocked, execution_id, "gated", "waiting")
        assert clocked.cancel(execution_id).status == "cancelled"
        clock.advance(11)
        time.sleep(0.3)  # a due timer of a cancelled execution is not claimed
    result = clocked.get(execution_id)
    assert result.status == "cancelled"
    assert result.tasks["gated"].status == "skipped"
    assert calls.counts == Counter(prepare=1)


def test_retry_of_a_timed_out_wait_waits_again(clocked: Engine, clock: ManualClock) -> None:
    calls = Calls()
    wf = approval_flow(calls, event("approved", timeout=10))
    run = run_in_background(clocked, wf)
    execution_id = execution_of(clocked, wf)
    wait_status(clocked, execution_id, "gated", "waiting")
    clock.advance(11)
    assert run.join().status == "failed"

    again = Background(lambda: clocked.retry(execution_id))
    wait_status(clocked, execution_id, "gated", "waiting")
    row = record(clocked, execution_id, "gated")
    assert row.wait_event == "approved"
    assert row.wake_at.timestamp() == pytest.approx(clock.now() + 10, abs=0.01)
    clocked.send(execution_id, "approved", "second time")
    result = again.join()
    assert result.status == "completed", result.error
    assert calls.seen["gated"][0]["approved"] == "second time"
    history = result.tasks["gated"].history
    assert [a.status for a in history] == ["failed", "completed"]
    assert "WaitTimeout" in (history[0].error or "")
    assert calls.counts == Counter(prepare=1, gated=1, after=1)


# -- 8. PostgreSQL: a send wakes a waiting worker at once --------------------------------------


@pytest.mark.postgres
def test_a_send_wakes_a_postgres_worker_by_notify(postgres_url: str) -> None:
    started: dict[str, float] = {}
    wf = Workflow(unique("waits_latency"))

    @wf.task(wait=event("go"))
    def gated(ctx: Context, handle: Any) -> None:
        started[str(handle.execution_id)] = time.monotonic()

    latencies = []
    with (
        Engine(postgres_url, workflows=[wf]) as worker_engine,
        Engine(postgres_url, workflows=[wf]) as sender,
        running_worker(worker_engine, concurrency=2, poll_interval=5),
    ):
        for _ in range(10):
            execution_id = str(sender.start(wf, {}))
            wait_status(sender, execution_id, "gated", "waiting")
            time.sleep(0.05)  # let the worker go back to its idle wait
            sent = time.monotonic()
            sender.send(execution_id, "go", 1)
            wait_until(lambda i=execution_id: i in started, "the woken task", timeout=10)
            latencies.append(started[execution_id] - sent)
            wait_until(lambda i=execution_id: sender.get(i).done, "the execution finished")
    median = statistics.median(latencies)
    print(
        f"\nwake-up latency send→task start (PostgreSQL worker, poll 5 s): "
        f"median {median * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
        f"all {json.dumps([round(x * 1000, 1) for x in latencies])}"
    )
    assert max(latencies) < 1.0
