"""Claims, leases and recovery on the worker path (SPEC §3.3), driven step by step.

Workers are used through their claim / complete / sweep steps so that every interleaving is
chosen by the test, not by timing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durably import Context, Engine, Workflow

FAR_PAST = "2000-01-01T00:00:00.000000+00:00"


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
def engines(store_url: str) -> Iterator[tuple[Engine, Engine]]:
    first = Engine(store_url, lease=5.0, max_recovery_attempts=1)
    second = Engine(store_url, lease=5.0, max_recovery_attempts=1)
    yield first, second
    first.close()
    second.close()


def expire_claims(engine: Engine) -> None:
    """Make every running claim look as if its worker stopped beating long ago."""
    executions = engine.list()
    with engine.store.transaction() as tx:
        for execution in executions:
            for row in tx.fetch_all("get_tasks", {"id": str(execution.execution_id)}):
                if row["status"] == "running":
                    tx.execute(
                        "heartbeat_task",
                        {"id": str(row["id"]), "worker": row["claimed_by"], "now": FAR_PAST},
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
    engines: tuple[Engine, Engine],
) -> None:
    first, second = engines
    wf = pipeline("lease_zombie")
    for engine in engines:
        engine.register(wf)
    execution_id = first.start(wf, {})
    zombie, rescuer = first.worker(concurrency=1), second.worker(concurrency=1)

    [(run, name, attempt)] = zombie._claim(1)
    expire_claims(first)
    rescuer.sweep()  # the stale claim goes back to ready, and counts a recovery
    row = task_row(second, execution_id, "work")
    assert row["status"] == "ready"
    assert row["recovery_attempts"] == 1
    assert row["last_recovery_at"] is not None

    [retaken] = rescuer._claim(1)
    assert retaken[2] == attempt + 1
    rescuer._complete(*retaken, {"by": "the rescuer"}, None)

    zombie._complete(run, name, attempt, {"by": "the zombie"}, None)  # discarded
    assert zombie.completed == 0
    assert second.task_context(execution_id, "work")["by"] == "the rescuer"

    [job] = rescuer._claim(1)
    ctx = job[0].context_for(job[1])  # its input: the rescuer's output of `work`
    ctx["after"] = True
    rescuer._complete(*job, ctx.to_dict(), None)
    result = second.get(execution_id)
    assert result.status == "completed"
    assert result.context["by"] == "the rescuer"


def test_a_task_losing_its_claim_too_often_is_abandoned(
    engines: tuple[Engine, Engine],
) -> None:
    first, second = engines
    wf = pipeline("lease_abandon")
    for engine in engines:
        engine.register(wf)
    execution_id = first.start(wf, {})
    worker, sweeper = first.worker(concurrency=1), second.worker(concurrency=1)

    for _ in range(2):  # max_recovery_attempts=1: the second loss abandons it
        assert len(worker._claim(1)) == 1
        worker._active.clear()  # the process that claimed it is gone
        expire_claims(first)
        sweeper.sweep()

    row = task_row(second, execution_id, "work")
    assert row["status"] == "abandoned"
    assert row["recovery_attempts"] == 2
    assert (
        sweeper._claim(1) == []
    )  # `after` is ready: its claimer skips it, which finishes the execution
    result = second.wait(execution_id, timeout=10)
    assert result.status == "failed"
    assert result.tasks["work"].status == "abandoned"
    assert result.tasks["after"].status == "skipped"
    assert "abandoned" in (result.error or "")


def test_a_live_claim_is_left_alone(engines: tuple[Engine, Engine]) -> None:
    first, second = engines
    wf = pipeline("lease_live")
    for engine in engines:
        engine.register(wf)
    execution_id = first.start(wf, {})
    worker, sweeper = first.worker(concurrency=1), second.worker(concurrency=1)
    assert len(worker._claim(1)) == 1
    first.beat()  # a fresh heartbeat
    sweeper.sweep()
    row = task_row(second, execution_id, "work")
    assert row["status"] == "running"
    assert row["recovery_attempts"] == 0
    assert row["heartbeat_at"] is not None
