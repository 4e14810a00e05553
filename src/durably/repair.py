"""Repairing executions: taking over a stale one (``resume``), reopening a failed one
(``retry``), and forking one from a task (``fork``). The re-run rules are the plan's; this
module writes them through the repository inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping

from . import codec, outcomes
from .exceptions import ExecutionStateError, WorkflowDefinitionError
from .records import ExecutionRecord, StaleClaim, TaskRecord, epoch
from .runner import Runner
from .runtime import Runtime
from .state import ExecutionState
from .statuses import CANCELLED, FAILED, RUNNING
from .store import Tx
from .workflow import Workflow


def take_over(rt: Runtime, tx: Tx, record: ExecutionRecord) -> None:
    """Claim an unfinished execution for this process, and take back the task claims whose
    owner is gone or stale (a live owner's are followed, not taken)."""
    owner = record.claimed_by
    # Our own claim with no run of ours behind it was left by a driver that stopped.
    if owner != rt.worker_id and not rt.is_stale(owner, epoch(record.heartbeat_at)):
        raise ExecutionStateError(
            f"execution {record.id} is being run by live process {owner}; it can be "
            f"resumed once that process exits or its lease ({rt.lease:g}s) expires"
        )
    now = rt.now()
    if not rt.repo.claim_execution(tx, record.id, rt.worker_id, owner, now):
        raise ExecutionStateError(f"execution {record.id} was taken over by another process")
    for task in rt.repo.tasks(tx, record.id):
        if task.status != RUNNING or task.map_total is not None:
            continue  # a mapped task runs through its instances, unclaimed
        if rt.is_stale(task.claimed_by, epoch(task.heartbeat_at)):
            rt.recover(tx, StaleClaim.of(record.id, task), now)


def reopen(rt: Runtime, tx: Tx, record: ExecutionRecord) -> None:
    """``retry``: reset the tasks the plan re-runs (failed, not run, or compensated, and all
    after them) and reopen the execution; completed work is kept."""
    if record.status not in (FAILED, CANCELLED):
        raise ExecutionStateError(
            f"execution {record.id} is {record.status}: only failed or cancelled "
            "executions can be retried"
        )
    wf = rt.workflow(record.workflow, record.version, record.shape)
    now = rt.now()
    tasks = {task.name: task for task in rt.repo.tasks(tx, record.id)}
    again = outcomes.to_rerun(wf, {n: t.state() for n, t in tasks.items()})
    anew = _reexpanded(wf, tasks, again)
    # The rows of outputs unlinked here (and of the failed end's context) would otherwise stay
    # forever: retention finds rows only through what links them.
    unlinked = [record.final_context_id] if record.final_context_id else []
    for name in again:
        task = tasks[name]
        if task.map_parent is not None:
            if task.map_parent not in anew:
                rt.repo.reset_instance(tx, task.id, now)
        elif task.map_total is not None and name not in anew:
            # Its input is unchanged: it keeps its completed instances and waits for the
            # ones running again.
            reopened = sum(1 for n in again if tasks[n].map_parent == name)
            rt.repo.reopen_mapped_task(tx, task.id, reopened, now)
        else:
            if task.map_total is not None:  # its input changes: it fans out anew
                unlinked += rt.repo.delete_instances(tx, record.id, name)
            rt.repo.reset_task(tx, task.id, now)
        unlinked += rt.repo.delete_output(tx, record.id, name)
    rt.repo.reopen_execution(tx, record.id, now)
    rt.repo.prune_contexts(tx, unlinked)


def _reexpanded(wf: Workflow, tasks: Mapping[str, TaskRecord], again: set[str]) -> set[str]:
    """Mapped tasks that re-run from scratch: one of their dependencies runs again."""
    return {
        name
        for name in again
        if tasks[name].map_total is not None
        and any(dep in again for dep in wf.tasks[name].dependencies)
    }


def fork(rt: Runtime, tx: Tx, record: ExecutionRecord, from_task: str, patch: str | None) -> Runner:
    """A new execution reusing the outputs the plan allows (none of a compensated task),
    with ``patch`` (codec text) on top of ``from_task``'s input; returns its runner."""
    wf = rt.workflow(record.workflow, record.version, record.shape)
    if from_task not in wf.tasks:
        raise WorkflowDefinitionError(f"workflow {wf.name!r} has no task {from_task!r}")
    tasks = {task.name: task for task in rt.repo.tasks(tx, record.id)}
    saved = rt.repo.output_context_ids(tx, record.id)
    keep = outcomes.reusable(wf, {n: t.state() for n, t in tasks.items()}, from_task)
    reused = {name: tasks[name] for name in keep if name in saved}
    now = rt.now()
    created = rt.repo.create_execution(
        tx,
        wf,
        now,
        initial=None,
        claimed_by=rt.worker_id,
        context_id=record.context_id,
        parent_id=record.id,
        reused=reused,
        patches={from_task: patch} if patch else None,
        priority=record.priority,
    )
    assert created is not None  # no key: nothing to conflict with
    new_id, states = created
    ids = {state.name: state.id for state in states}
    task_ids = {name: ids[name] for name in reused}
    rt.repo.share_outputs(tx, record.id, new_id, task_ids, record.context_id, now)
    state = ExecutionState(
        wf,
        new_id,
        states,
        rt.repo.outputs(tx, new_id) if reused else {},
        rt.repo.initial_context(tx, new_id, record.context_id),
        {from_task: codec.loads(patch)} if patch else None,
    )
    return Runner(rt, wf, state)
