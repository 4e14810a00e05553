"""Claims, leases and recovery on the worker path (SPEC §3.3), driven step by step.

Workers are used through their claim / record / sweep steps so that every interleaving is
chosen by the test, not by timing, and time is a ManualClock the test moves: nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durably import Context, Engine, Workflow
from durably.clock import ManualClock


def pipeline(name: str) -> Workflow:
    wf = Workflow(name)

    @wf.task()
    def work(ctx: Context) -> None:
        ctx["by"] = "a task"

    @wf.task(dependencies=[work])
    def after(ctx: Context) -> None:
        ctx["after"] = True

    return wf


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engines(store_url: str, clock: ManualClock) -> Iterator[tuple[Engine, Engine]]:
    first = Engine(store_url, lease=5.0, max_recovery_attempts=1, clock=clock)
    second = Engine(store_url, lease=5.0, max_recovery_attempts=1, clock=clock)
    yield first, second
    first.close()
    second.close()


def stop_beating(engine: Engine) -> None:
    """The engine's process is gone: nothing refreshes its claims any more."""
    engine.runtime.heartbeat.stop()
    engine.runtime.heartbeat = type(engine.runtime.heartbeat)(
        engine.store, engine.runtime.repo, engine.worker_id, engine.runtime.clock, 3600
    )


def task_row(engine: Engine, execution_id: object, name: str) -> dict[str, object]:
    with engine.store.read() as tx:
        rows = tx.fetch_all("get_tasks", {"id": str(execution_id)})
    # keys(): iterating a sqlite3.Row yields its values, not its column names.
    return next(
        {key: row[key] for key in row.keys()}  # noqa: SIM118
        for row in rows
        if row["task_name"] == name
    )


def test_a_zombie_cannot_commit_after_its_claim_was_taken_over(
    engines: tuple[Engine, Engine], clock: ManualClock
) -> None:
    first, second = engines
    wf = pipeline("lease_zombie")
    for engine in engines:
        engine.register(wf)
    execution_id = first.start(wf, {})
    zombie, rescuer = first.worker(concurrency=1), second.worker(concurrency=1)

    [job] = zombie.claim(1)
    stop_beating(first)
    clock.advance(6)  # past the 5 s lease
    rescuer.sweep()  # the stale claim goes back to ready, and counts a recovery
    row = task_row(second, execution_id, "work")
    assert row["status"] == "ready"
    assert row["recovery_attempts"] == 1
    assert row["last_recovery_at"] is not None

    [retaken] = rescuer.claim(1)
    assert retaken.attempt == job.attempt + 1
    rescuer.record(retaken, {"by": "the rescuer"})

    zombie.record(job, {"by": "the zombie"})  # discarded
    assert zombie.completed == 0
    assert second.task_context(execution_id, "work")["by"] == "the rescuer"

    [after] = rescuer.claim(1)
    assert after.input["by"] == "the rescuer"  # its input: the rescuer's output of `work`
    rescuer.record(after, {**after.input, "after": True})
    result = second.get(execution_id)
    assert result.status == "completed"
    assert result.context["by"] == "the rescuer"
    # The lost attempt stays in the history, with who lost it.
    history = result.tasks["work"].history
    assert [(a.number, a.status) for a in history] == [(1, "lost"), (2, "completed")]
    assert history[0].worker == first.worker_id


def test_a_task_losing_its_claim_too_often_is_abandoned(
    engines: tuple[Engine, Engine], clock: ManualClock
) -> None:
    first, second = engines
    wf = pipeline("lease_abandon")
    for engine in engines:
        engine.register(wf)
    execution_id = first.start(wf, {})
    worker, sweeper = first.worker(concurrency=1), second.worker(concurrency=1)
    stop_beating(first)

    for _ in range(2):  # max_recovery_attempts=1: the second loss abandons it
        assert len(worker.claim(1)) == 1
        clock.advance(6)
        sweeper.sweep()

    row = task_row(second, execution_id, "work")
    assert row["status"] == "abandoned"
    assert row["recovery_attempts"] == 2
    # `after` is ready: its claimer settles it, which finishes the execution.
    assert sweeper.claim(1) == []
    result = second.wait(execution_id, timeout=10)
    assert result.status == "failed"
    assert result.tasks["work"].status == "abandoned"
    assert result.tasks["after"].status == "upstream_failed"
    assert "abandoned" in (result.error or "")


def test_a_live_claim_is_left_alone(engines: tuple[Engine, Engine], clock: ManualClock) -> None:
    first, second = engines
    wf = pipeline("lease_live")
    for engine in engines:
        engine.register(wf)
    execution_id = first.start(wf, {})
    worker, sweeper = first.worker(concurrency=1), second.worker(concurrency=1)
    assert len(worker.claim(1)) == 1
    clock.advance(4)
    first.runtime.heartbeat.beat()  # a fresh heartbeat, within the lease
    clock.advance(4)  # 8 s after the claim, 4 s after the beat
    sweeper.sweep()
    row = task_row(second, execution_id, "work")
    assert row["status"] == "running"
    assert row["recovery_attempts"] == 0
    assert row["heartbeat_at"] is not None


def test_a_worker_never_takes_over_its_own_claims(
    engines: tuple[Engine, Engine], clock: ManualClock
) -> None:
    """Cut off from the database longer than the lease, a worker comes back: its own claims
    in flight are not recovered (and so not run twice) by its own sweeper."""
    first, _ = engines
    wf = pipeline("lease_self")
    first.register(wf)
    execution_id = first.start(wf, {})
    worker = first.worker(concurrency=1)
    [job] = worker.claim(1)
    stop_beating(first)  # no beat reached the database during the outage
    clock.advance(60)
    worker.sweep()
    assert task_row(first, execution_id, "work")["status"] == "running"
    worker.record(job, {"by": "the worker"})
    assert worker.completed == 1
    assert first.task_context(execution_id, "work")["by"] == "the worker"
