"""A worker records a batch of finished attempts in one round trip where the store combines
writes (PostgreSQL): for each attempt in turn, the reads around its task, then its fenced
completion (worker.Worker._save_planned). The outcome must be what recording them one by one
gives: each read sees the completions before it, a lost claim discards only its own output,
and a batch holding anything but completions is recorded one by one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from durably import Context, Engine, Workflow
from durably.worker import Worker
from durably.worker_steps import Finished, Job

from . import workers
from .conftest import unique


def diamond() -> Workflow:
    wf = Workflow(unique("diamond"))
    wf.task(name="a")(lambda ctx: ctx.update(a=1))
    wf.task(name="b", dependencies=["a"])(lambda ctx: ctx.update(b=2, last="b"))
    wf.task(name="c", dependencies=["a"])(lambda ctx: ctx.update(c=3, last="c"))

    def d(ctx: Context) -> None:
        ctx["d"] = ctx["b"] + ctx["c"]

    wf.task(name="d", dependencies=["b", "c"])(d)
    return wf


def lone() -> Workflow:
    wf = Workflow(unique("lone"))
    wf.task(name="only")(lambda ctx: ctx.update(done=ctx["i"]))
    return wf


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    with Engine(store_url, lease=3600) as engine:
        yield engine


def run(job: Job) -> dict[str, object]:
    """What the job's task returns, run here (as the worker's executor would)."""
    ctx = Context._from_data(dict(job.input), None)
    fn = job.wf.tasks[job.name].fn
    fn(ctx)
    return dict(ctx)


def record_together(worker: Worker, jobs: list[Job], outputs: list[dict[str, object]]) -> None:
    worker._unsaved += [Finished(job, out, None) for job, out in zip(jobs, outputs, strict=True)]
    worker._save_outcomes()


def past_a(engine: Engine) -> tuple[Worker, str]:
    """A diamond started, its first task claimed and recorded: b and c are ready."""
    wf = diamond()
    engine.register(wf)
    worker = engine.worker(concurrency=4)
    execution_id = str(engine.start(wf, {}))
    [a] = worker.claim(4)
    record_together(worker, [a], [run(a)])
    return worker, execution_id


def test_two_dependencies_completed_in_one_batch_unblock_their_dependent_once(
    engine: Engine, backend: str
) -> None:
    worker, execution_id = past_a(engine)
    stats = engine.store.stats
    stats.reset()
    middles = worker.claim(4)
    assert sorted(job.name for job in middles) == ["b", "c"]
    # The claim (which reads the execution on PostgreSQL, else a statement more), and a's
    # row and output, read once for both.
    assert stats.statements == (3 if backend == "postgres" else 4)
    assert [job.input for job in middles] == [{"a": 1}, {"a": 1}]
    assert middles[0].input is not middles[1].input  # each its own copy to change
    stats.reset()
    record_together(worker, middles, [run(job) for job in middles])
    if backend == "postgres":
        # The lock, both reads and both completions in one round trip, then the COMMIT
        # with d marked ready.
        assert (stats.transactions, stats.round_trips) == (1, 2)
    [d] = worker.claim(4)
    assert d.name == "d"
    assert d.input["last"] == "c"  # merged in declaration order: c after b
    record_together(worker, [d], [run(d)])
    assert not worker.claim(4)
    result = engine.get(execution_id)
    assert result.status == "completed"
    assert result.context["d"] == 5
    assert result.tasks["d"].attempts == 1  # claimed and run once


def test_a_lost_claim_in_a_batch_discards_only_its_own_output(engine: Engine) -> None:
    wf = lone()
    engine.register(wf)
    worker = engine.worker(concurrency=3)
    ids = [str(engine.start(wf, {"i": i})) for i in range(3)]
    jobs = worker.claim(3)
    assert len(jobs) == 3
    # As after a takeover: the row holds another attempt than the one this job ran, so the
    # fence of its completion matches nothing.
    stolen = jobs[1] = dataclasses.replace(jobs[1], attempt=jobs[1].attempt + 1)
    before = worker.completed
    record_together(worker, jobs, [run(job) for job in jobs])
    assert worker.completed - before == 2
    results = {job.state.id: engine.get(job.state.id) for job in jobs}
    for job in jobs:
        result = results[job.state.id]
        if job is stolen:
            assert result.status == "running"
            assert result.tasks["only"].status == "running"
            assert result.tasks["only"].context is None  # nothing of the zombie's was written
        else:
            assert result.status == "completed"
            assert result.context["done"] == job.input["i"]
    assert sorted(results) == sorted(ids)


def test_a_lost_claim_beside_a_sibling_leaves_their_dependent_waiting(engine: Engine) -> None:
    worker, execution_id = past_a(engine)
    middles = sorted(worker.claim(4), key=lambda job: job.name)
    # c's claim was taken over: its completion (with the read around it) writes nothing.
    middles[1] = dataclasses.replace(middles[1], attempt=middles[1].attempt + 1)
    record_together(worker, middles, [run(job) for job in middles])
    result = engine.get(execution_id)
    assert result.tasks["b"].status == "completed"
    assert result.tasks["c"].status == "running"
    assert result.tasks["d"].status == "not_started"  # c is not done: d waits
    assert result.tasks["c"].context is None


def test_a_batch_with_a_failure_is_recorded_one_by_one(engine: Engine) -> None:
    wf = lone()
    engine.register(wf)
    worker = engine.worker(concurrency=2)
    for i in range(2):
        engine.start(wf, {"i": i})
    first, second = worker.claim(2)
    worker._unsaved += [
        Finished(first, run(first), None),
        Finished(second, None, ValueError("boom")),
    ]
    worker._save_outcomes()
    done, failed = engine.get(first.state.id), engine.get(second.state.id)
    assert done.status == "completed"
    assert done.context["done"] == first.input["i"]
    assert failed.status == "failed"
    assert "boom" in (failed.tasks["only"].error or "")


# -- lone tasks: a single-task execution's completion ends it in the same statement ----------


def test_lone_tasks_and_a_workflows_task_in_one_batch(engine: Engine, backend: str) -> None:
    single, wf = lone(), diamond()
    engine.register(single)
    engine.register(wf)
    worker = engine.worker(concurrency=4)
    stats = engine.store.stats
    engine.start(wf, {})
    [first] = worker.claim(4)
    stats.reset()
    record_together(worker, [first], [run(first)])
    alone = stats.statements
    ids = [str(engine.start(single, {"i": i})) for i in range(2)]
    diamond_id = str(engine.start(wf, {}))
    jobs = [job for job in worker.claim(8) if job.name in ("a", "only")]
    assert sorted(job.name for job in jobs) == ["a", "only", "only"]
    stats.reset()
    record_together(worker, jobs, [run(job) for job in jobs])
    if backend == "postgres":
        assert stats.statements == alone + 1  # both lone tasks: one complete_lone_tasks
    for i, execution_id in enumerate(ids):
        result = engine.get(execution_id)
        assert result.status == "completed"
        assert result.context == {"i": i, "done": i}
        assert result.tasks["only"].context == {"i": i, "done": i}
    assert engine.get(diamond_id).status == "running"
    assert engine.get(diamond_id).tasks["b"].status == "ready"  # a unblocked it


def test_a_lone_task_that_changes_nothing_ends_with_its_input(engine: Engine) -> None:
    wf = Workflow(unique("noop"))
    wf.task(name="only")(lambda ctx: None)
    engine.register(wf)
    worker = engine.worker(concurrency=2)
    ids = [str(engine.start(wf, {"i": i, "text": "x" * 100})) for i in range(2)]
    jobs = worker.claim(2)
    record_together(worker, jobs, [run(job) for job in jobs])
    for i, execution_id in enumerate(ids):
        result = engine.get(execution_id)
        assert result.status == "completed"
        assert result.context == {"i": i, "text": "x" * 100}
        assert result.tasks["only"].context == result.context


def test_a_lone_childs_end_reaches_its_parent(engine: Engine) -> None:
    child = Workflow(unique("child"))
    child.task(name="only")(lambda ctx: ctx.update(result=ctx["x"] + 1))
    parent = Workflow(unique("parent"))
    parent.subworkflow("sub", child)
    parent.task(name="after", dependencies=["sub"])(lambda ctx: ctx.update(seen=ctx["result"]))
    engine.register(parent)
    execution_id = engine.start(parent, {"x": 1})
    with workers.running_worker(engine, concurrency=2):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "completed", result.error
    assert result.context["seen"] == 2
    child_result = engine.get(result.tasks["sub"].child_id)  # type: ignore[arg-type]
    assert child_result.status == "completed"
    assert child_result.context == {"x": 1, "result": 2}


def test_a_claim_of_a_root_and_a_dependent_of_one_execution_reads_it_once(
    engine: Engine, backend: str
) -> None:
    # The claim reads each claimed task's execution (PostgreSQL) and, for a root task only,
    # its initial context: b runs on the initial context, c on a's output, though both
    # came back with the same execution and c's copy carries no initial context.
    wf = Workflow(unique("roots"))
    wf.task(name="a")(lambda ctx: ctx.update(a=1))
    wf.task(name="c", dependencies=["a"])(lambda ctx: ctx.update(c=ctx["a"] + 2))
    wf.task(name="b")(lambda ctx: ctx.update(b=ctx["x"]))
    engine.register(wf)
    worker = engine.worker(concurrency=4)
    execution_id = str(engine.start(wf, {"x": 7}))
    first = worker.claim(1)
    assert [job.name for job in first] == ["a"]
    record_together(worker, first, [run(first[0])])
    stats = engine.store.stats
    stats.reset()
    jobs = {job.name: job for job in worker.claim(4)}
    assert sorted(jobs) == ["b", "c"]
    assert jobs["b"].input == {"x": 7}
    assert jobs["c"].input == {"x": 7, "a": 1}
    # The claim, then a's row and output for c (SQLite: the execution in a statement more).
    assert stats.statements == (3 if backend == "postgres" else 4)
    record_together(worker, list(jobs.values()), [run(job) for job in jobs.values()])
    result = engine.get(execution_id)
    assert result.status == "completed"
    assert result.context == {"x": 7, "a": 1, "c": 3, "b": 7}


def test_a_turn_claims_the_dependents_its_records_made_ready(engine: Engine) -> None:
    # Only lone tasks' records travel with the claim: a workflow's completion marks its
    # dependents ready from its answers, and the turn's claim, sent after, takes them.
    wf = diamond()
    engine.register(wf)
    worker = engine.worker(concurrency=4)
    execution_id = str(engine.start(wf, {}))
    [a] = worker.claim(4)
    worker._unsaved.append(Finished(a, run(a), None))
    middles = worker._turn(4)
    assert sorted(job.name for job in middles) == ["b", "c"]
    assert not worker._unsaved
    record_together(worker, middles, [run(job) for job in middles])
    [d] = worker.claim(4)
    record_together(worker, [d], [run(d)])
    assert engine.get(execution_id).context["d"] == 5
