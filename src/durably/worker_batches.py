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
from .store import Statement, Tx
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
    statement each; else None: failures, map instances and sub-workflow tasks are recorded
    one by one (a failure's settlements would otherwise run after later tasks' reads)."""
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


def save_planned(
    rt: Runtime, tx: Tx, batch: list[Finished], planned: list[PlannedRecord], now: float
) -> tuple[list[bool], list[tuple[Workflow, ExecutionState]]]:
    """The batch's outcomes in one round trip: for each attempt in order, the reads around
    its task, then its fenced completion; then what each unblocked and finished (sent with
    the COMMIT). Returns what Worker._save_in does."""
    statements: list[Statement] = []
    loads: list[PlannedLoad] = []
    locked: set[str] = set()
    for item, record in zip(batch, planned, strict=True):
        job = item.job
        if job.state.id not in locked and locks(job):
            rt.repo.lock_execution(tx, job.state.id)  # sent first, with the batch
            locked.add(job.state.id)
        known = [job.record] if job.record is not None else []
        load = plan_around(rt, job.wf, job.state.id, job.name, None, known)
        loads.append(load)
        statements += [*load.statements, record.completion.statement]
    rows = tx.fetch_batch(statements)
    saved: list[bool] = []
    finished: list[tuple[Workflow, ExecutionState]] = []
    at = 0
    for item, record, load in zip(batch, planned, loads, strict=True):
        fresh = rt.loaded(load, rows[at : at + len(load.statements)])
        at += len(load.statements)
        unblocked = rt.recorded(tx, fresh, record, rows[at], now)
        at += 1
        saved.append(unblocked is not None)
        if unblocked is None:
            continue
        mark_ready(rt, tx, fresh, unblocked, now)
        if (done := after(rt, tx, item.job.wf, fresh, item.job.execution)) is not None:
            finished.append(done)
    return saved, finished
