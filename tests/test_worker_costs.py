"""What a single-task execution costs the database on the worker path (issue 14): counted
by the store (StoreStats), so the figures do not depend on the machine.

On PostgreSQL, per execution of a one-task workflow, a line per round trip (a transaction's
BEGIN travels with its first statement):

    start       start_execution: the initial context, the execution, its task rows and the
                NOTIFY in one statement, which needs no BEGIN or COMMIT
    claim       BEGIN (bitmap scans off), claim_tasks (which also reads each claimed task's
                execution row, and a root task's initial context)
                COMMIT
    record      BEGIN, complete_lone_tasks: the completion (fenced on the claim), its output
                and link, the final context and the execution's end
                COMMIT

One statement and one round trip to start, two statements and four round trips on the worker
(two of them commits). SQLite runs the parts of each combined statement one by one, and reads
the executions in a statement of their own.

A batch's completions travel together: each is fenced on its own claim, so none waits for
another's answer (the reads around each task go in the same round trip, before it).

A claim of N tasks and the record of N outcomes are one transaction each, or, in a running
worker's turn, one transaction together (the outcomes of the tasks that finished and the claim
of the slots they freed), so a worker with N free slots spends 1/N commits per task. On
PostgreSQL, lone tasks' outcomes and the claim are one round trip: nothing the claim takes
waits on them. (Not
when the records lock an execution, as those of a workflow of several tasks do: they commit
before the claim, which then does not hold the lock.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from durably import Context, Engine, Workflow
from durably import worker as worker_module
from durably.worker_steps import Finished

from .conftest import unique, wait_until
from .workers import running


def one_task() -> Workflow:
    wf = Workflow(unique("cost"))

    def only(ctx: Context) -> None:
        ctx["done"] = ctx["i"]

    wf.task(name="only")(only)
    return wf


@pytest.fixture
def engine(store_url: str) -> Iterator[tuple[Engine, Workflow]]:
    wf = one_task()
    with Engine(store_url, workflows=[wf], lease=3600) as engine:
        worker = engine.worker()
        # psycopg prepares a statement on its 5th run on a connection: get past that first.
        for _ in range(6):
            engine.start(wf, {"i": 0})
        for job in worker.claim(6):
            worker.record(job, {"done": 0})
        yield engine, wf


def costs(engine: Engine, wf: Workflow, n: int) -> dict[str, tuple[int, int, int]]:
    """(transactions, statements, round trips) of starting n executions, claiming them in
    one claim and recording their outcomes in one batch."""
    stats, worker = engine.store.stats, engine.worker()
    found = {}
    stats.reset()
    ids = [str(engine.start(wf, {"i": i})) for i in range(n)]
    found["start"] = (stats.transactions, stats.statements, stats.round_trips)
    stats.reset()
    jobs = worker.claim(n)
    found["claim"] = (stats.transactions, stats.statements, stats.round_trips)
    assert sorted(job.state.id for job in jobs) == sorted(ids)
    stats.reset()
    worker._unsaved += [Finished(job, {"done": job.input["i"]}, None) for job in jobs]
    worker._save_outcomes()
    found["record"] = (stats.transactions, stats.statements, stats.round_trips)
    results = [engine.get(execution_id) for execution_id in ids]
    assert [r.status for r in results] == ["completed"] * n
    assert sorted(r.context["done"] for r in results) == list(range(n))
    return found


def test_a_single_task_execution_on_a_worker(engine: tuple[Engine, Workflow], backend: str) -> None:
    found = costs(*engine, 1)
    statements = {key: value[1] for key, value in found.items()}
    if backend == "postgres":
        # start: one statement (start_execution). claim: the claim, which reads the
        # execution with its context. record: the completion with its output and the
        # execution's end with its final context (complete_lone_tasks). Three in all.
        assert statements == {"start": 1, "claim": 1, "record": 1}
    else:
        # start: context, execution, tasks, NOTIFY. claim: as above. record: the completion,
        # the output and its link, the final context, the end.
        assert statements == {"start": 4, "claim": 2, "record": 5}
    assert {key: value[0] for key, value in found.items()} == {"start": 1, "claim": 1, "record": 1}
    if backend == "postgres":
        assert {key: value[2] for key, value in found.items()} == {
            "start": 1, "claim": 2, "record": 2,
        }  # fmt: skip


def test_a_batch_costs_a_worker_two_commits_and_one_round_trip_a_task(
    engine: tuple[Engine, Workflow], backend: str
) -> None:
    found = costs(*engine, 8)
    # The claim, which reads the executions on PostgreSQL (SQLite: then one read of them).
    assert found["claim"][:2] == (1, 1 if backend == "postgres" else 1 + 1)
    # PostgreSQL: one statement completes the eight lone tasks and ends their executions.
    assert found["record"][:2] == (1, 1 if backend == "postgres" else 5 * 8)
    if backend == "postgres":
        # BEGIN with the claim, COMMIT; BEGIN with the completions (one round trip: each
        # is fenced on its own claim), COMMIT.
        assert (found["claim"][2], found["record"][2]) == (2, 2)


def test_a_turn_records_what_finished_and_claims_the_freed_slots_in_one_commit(
    engine: tuple[Engine, Workflow], backend: str
) -> None:
    engine_, wf = engine
    stats, worker = engine_.store.stats, engine_.worker()
    ids = [str(engine_.start(wf, {"i": i})) for i in range(16)]
    first = worker.claim(8)
    worker._unsaved += [Finished(job, {"done": job.input["i"]}, None) for job in first]
    stats.reset()
    second = worker._turn(8)
    assert stats.transactions == 1
    records = 1 if backend == "postgres" else 5 * 8  # PostgreSQL: complete_lone_tasks
    reads = 0 if backend == "postgres" else 1  # PostgreSQL's claim reads the executions
    assert stats.statements == records + 1 + reads  # the records, the claim, its read
    if backend == "postgres":
        # The completions (with the BEGIN) and the claim, which needs nothing they return
        # (lone tasks make nothing ready), in one round trip; the COMMIT.
        assert stats.round_trips == 1 + 1
    assert not worker._unsaved
    assert {job.state.id for job in first} | {job.state.id for job in second} == set(ids)
    done = [engine_.get(job.state.id) for job in first]
    assert [r.status for r in done] == ["completed"] * 8
    assert worker.completed >= 8


def turns_recorded(worker: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many finished attempts each of the worker's turns records, in order."""
    sizes: list[int] = []
    turn = worker._turn

    def counted(limit: int) -> list[Any]:
        sizes.append(len(worker._unsaved))
        return turn(limit)

    monkeypatch.setattr(worker, "_turn", counted)
    return sizes


def test_a_running_worker_records_the_tasks_it_just_started_with_the_ones_done(
    engine: tuple[Engine, Workflow], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the linger, tasks that finished while a turn was in the database were
    # recorded before the ones that turn had just started, and the two groups kept
    # alternating: each turn half the slots, twice the commits. A long linger makes the
    # grouping certain here: trivial tasks end at once, so no turn waits it out.
    engine_, wf = engine
    monkeypatch.setattr(worker_module, "LINGER", 30.0)
    ids = [str(engine_.start(wf, {"i": i})) for i in range(40)]
    worker = engine_.worker(concurrency=10, poll_interval=0.05)
    sizes = turns_recorded(worker, monkeypatch)
    with running(worker):
        wait_until(lambda: worker.completed >= 40, "the 40 executions done")
    assert [engine_.get(i).status for i in ids] == ["completed"] * 40
    assert [size for size in sizes if size] == [10, 10, 10, 10]


def test_a_linger_waits_for_young_tasks_only(
    engine: tuple[Engine, Workflow], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task still running from an earlier turn is not waited for: the quick jobs queued
    # after it are recorded turn by turn while it runs, each turn lingering (at most) for
    # the tasks it started itself.
    engine_, wf = engine
    monkeypatch.setattr(worker_module, "LINGER", 0.2)
    release = threading.Event()
    slow = Workflow(unique("slow"))
    slow.task(name="wait")(lambda ctx: ctx.update(released=release.wait(30)))
    engine_.register(slow)
    worker = engine_.worker(concurrency=4, poll_interval=0.05)
    with running(worker):
        held = engine_.start(slow, {})
        wait_until(lambda: engine_.get(held).status == "running", "the slow task claimed")
        began = time.monotonic()
        quick = [str(engine_.start(wf, {"i": i})) for i in range(12)]
        wait_until(
            lambda: all(engine_.get(i).status == "completed" for i in quick), "the quick jobs"
        )
        # 12 jobs on 3 free slots: 4 claims at least, each lingering at most 0.2 s.
        assert time.monotonic() - began < 4 * 0.2 + 5
        assert engine_.get(held).status == "running"
        release.set()
        wait_until(lambda: engine_.get(held).status == "completed", "the slow task done")
