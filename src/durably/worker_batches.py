"""A worker's batches in one round trip (PostgreSQL's pipeline): the reads of every task a
claim took, and the outcomes of every attempt that finished, each completion with the reads
around its task. A statement of a batch never needs another's answer: each completion is
fenced on its own claim, and each read runs after the statements before it, so it sees what
they wrote, as one by one."""

from __future__ import annotations

import json
from collections.abc import Sequence

from . import plan
from .runtime import PlannedLoad, PlannedRecord, Runtime
from .state import ExecutionState
from .store import Row, Statement, Tx
from .worker_steps import Finished, Job, after, mark_ready, plan_around
from .workflow import Workflow


def locks(job: Job) -> bool:
    """Whether recording the job's outcome locks its execution: other workers may finish
    its siblings meanwhile, so the statuses are read under the lock, and exactly one
    completion marks a dependent ready or finds the execution done (a lone task has no
    sibling to wait for)."""
    return job.state.tasks[job.name].parent is not None or len(job.wf.tasks) > 1


def load_all(rt: Runtime, tx: Tx, planned: Sequence[PlannedLoad]) -> list[ExecutionState]:
    """Several partial loads' reads in one round trip, each then made a state. A read that
    several loads share is sent once (the middles of a fan-out claimed together all read the
    task before them and its output): nothing between them writes."""
    statements: list[Statement] = []
    seen: dict[str, int] = {}
    picks: list[list[int]] = []
    for load in planned:
        pick = []
        for name, params in load.statements:
            key = json.dumps([name, params], sort_keys=True, default=str)
            if key not in seen:
                seen[key] = len(statements)
                statements.append((name, params))
            pick.append(seen[key])
        picks.append(pick)
    rows = tx.fetch_batch(statements)
    return [
        rt.loaded(load, [rows[i] for i in pick]) for load, pick in zip(planned, picks, strict=True)
    ]


def plan_records(rt: Runtime, batch: list[Finished], now: float) -> list[PlannedRecord] | None:
    """Where every attempt of the batch completed (the common case), their writes as one
    statement each (which save_planned may merge further); else None: failures, map
    instances and sub-workflow tasks are recorded one by one (a failure's settlements would
    otherwise run after later tasks' reads)."""
    outcomes = []
    for item in batch:
        job = item.job
        definition = job.wf.tasks.get(job.name)  # None for an instance of a mapped task
        if definition is None or definition.child is not None or item.error is not None:
            return None
        outcome = plan.attempt_outcome(
            definition.retry, job.attempt, item.output, None, now, rt.max_context_bytes
        )
        if not isinstance(outcome, plan.Completed):
            return None
        outcomes.append(outcome)
    return [
        rt.plan_record(item.job.state, item.job.name, item.job.attempt, outcome, now)
        for item, outcome in zip(batch, outcomes, strict=True)
    ]


def lone(job: Job, load: PlannedLoad) -> bool:
    """Whether the job's task is its execution's only one, with nothing around it to read:
    its completion then ends the execution, so both are written by one statement, shared
    with the batch's other lone tasks (complete_lone_tasks)."""
    return len(job.wf.tasks) == 1 and not locks(job) and not load.statements


def save_planned(
    rt: Runtime,
    tx: Tx,
    batch: list[Finished],
    planned: list[PlannedRecord],
    now: float,
    claim: Statement | None = None,
) -> tuple[list[bool], list[tuple[Workflow, ExecutionState]], list[Row] | None]:
    """The batch's outcomes in one round trip: the lone tasks' completions and their
    executions' ends in one statement; then for each other attempt in order, the reads
    around its task, then its fenced completion (one statement where the read is one);
    then what each unblocked and finished (sent with the COMMIT). Returns what
    Worker._save_in does.

    A ``claim`` travels in the same round trip, after the completions, where they are all
    lone tasks' (its rows are returned, else None: the caller claims on its own). Lone tasks
    make nothing ready, so it claims what a claim sent after them would; a batch that
    marks dependents ready must claim after those marks, which need its answers."""
    loads: list[PlannedLoad] = []
    lone_ones: list[int] = []
    fusions: set[int] = set()  # the items whose read and completion are one statement
    others: list[Statement] = []
    locked: set[str] = set()
    for index, (item, record) in enumerate(zip(batch, planned, strict=True)):
        job = item.job
        known = [job.record] if job.record is not None else []
        load = plan_around(rt, job.wf, job.state.id, job.name, None, known)
        loads.append(load)
        if lone(job, load):
            lone_ones.append(index)
            continue
        if job.state.id not in locked and locks(job):
            rt.repo.lock_execution(tx, job.state.id)  # sent first, with the batch
            locked.add(job.state.id)
        if (fused := _fused(rt, load, record)) is not None:
            fusions.add(index)
            others.append(fused)
        else:
            others += [*load.statements, record.completion.statement]
    # Lone tasks touch only their own executions: their statement may go first.
    ends = [planned[i].completion for i in lone_ones]
    first = [rt.repo.plan_lone_completions(ends)] if ends else []
    ahead = [claim] if claim is not None and not others else []
    rows = tx.fetch_batch([*first, *others, *ahead])
    answers = dict(zip(lone_ones, rows[0], strict=True)) if first else {}
    at = len(first)
    saved: list[bool] = []
    finished: list[tuple[Workflow, ExecutionState]] = []
    for index, (item, record, load) in enumerate(zip(batch, planned, loads, strict=True)):
        written = index in answers
        if written:
            fresh = rt.loaded(load, [])
            answer = [answers[index]]
        elif index in fusions:
            read, answer = rt.repo.completion_with_read(rows[at])
            fresh = rt.loaded(load, [read])
            at += 1
        else:
            fresh = rt.loaded(load, rows[at : at + len(load.statements)])
            at += len(load.statements)
            answer = rows[at]
            at += 1
        unblocked = rt.recorded(tx, fresh, record, answer, now)
        saved.append(unblocked is not None)
        if unblocked is None:
            continue
        mark_ready(rt, tx, fresh, unblocked, now)
        done = after(rt, tx, item.job.wf, fresh, item.job.execution, written=written)
        if done is not None:
            finished.append(done)
    return saved, finished, rows[-1] if ahead else None


def _fused(rt: Runtime, load: PlannedLoad, record: PlannedRecord) -> Statement | None:
    """The load's one read and the completion as one statement, where they can be."""
    if len(load.statements) != 1 or load.tasks != 1:
        return None
    return rt.repo.plan_completion_with_read(record.completion, load.statements[0])
