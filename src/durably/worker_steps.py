"""What a worker does inside a transaction for one task it claimed or finished: the part of
the execution it loads around the task (the task, its dependents and theirs; never the whole
execution unless the plan needs it), the decision taken on a claimed task that does not run,
the dependents marked ready, and the execution finished when nothing is left to run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import outcomes, plan
from .records import Claim, ExecutionRecord, TaskRecord
from .runtime import PlannedLoad, Runtime
from .state import ExecutionState
from .statuses import COMPLETED
from .store import Tx
from .workflow import Workflow


@dataclass
class Job:
    wf: Workflow
    state: ExecutionState
    name: str
    attempt: int
    input: dict[str, Any]
    timed_out: str | None = None  # an event wait past its timeout: this attempt fails
    # Its execution's row as the claim read it: what never changes (its initial context, a
    # child's parent, its trace) is read from here again when the attempt ends.
    execution: ExecutionRecord | None = None
    # Its own row as the claim left it. Its outcome is written only while this attempt holds
    # the claim (fenced), so the row is not read again to record it.
    record: TaskRecord | None = None

    @property
    def task_id(self) -> str:
        return self.state.tasks[self.name].id


@dataclass
class Finished:
    """An attempt that ran, waiting for its outcome to be saved."""

    job: Job
    output: dict[str, Any] | None
    error: BaseException | None


def is_root(claimable: Mapping[str, Workflow], claim: Claim) -> bool:
    """Whether the claimed task has no dependencies (it runs on the initial context), by
    the definition it was claimed for."""
    wf = claimable.get(claim.pipeline_key or "")
    task = wf.tasks.get(claim.map_parent or claim.name) if wf is not None else None
    return task is not None and not task.dependencies


def plan_claimed(
    rt: Runtime, claim: Claim, execution: ExecutionRecord | None, initial: str | None = None
) -> PlannedLoad:
    """What :func:`prepare` reads of a claimed task's execution: the task, and what its
    input is made of (its dependencies' outputs, or the initial context unless ``initial``
    holds it), to send with the other claimed tasks' reads."""
    assert execution is not None, "a claimed task's execution is locked by the claim"
    wf = rt.workflow(execution.workflow, execution.version, execution.shape)
    # An instance of a mapped task takes that task's dependencies (and its fork patch).
    declared = claim.map_parent or claim.name
    deps = wf.tasks[declared].dependencies
    return rt.plan_load(
        execution.id,
        wf,
        list(dict.fromkeys([claim.name, declared, *deps])),
        deps,
        context_id=None if deps or initial is not None else execution.context_id,
        known=[claim.record] if claim.record is not None else (),
    )


def prepare(
    rt: Runtime,
    tx: Tx,
    claim: Claim,
    execution: ExecutionRecord | None,
    state: ExecutionState,
    now: float,
    initial: str | None = None,
) -> tuple[Job | None, tuple[Workflow, ExecutionState] | None]:
    """A claimed task's input, or its settlement without running: ``(job, None)``, or
    ``(None, the whole execution if that finished it)``. ``execution``: its row, read in
    the claim's transaction; ``state``: what :func:`plan_claimed` read; ``initial``: its
    initial context, if read with its execution."""
    assert execution is not None
    wf = state.shape
    assert isinstance(wf, Workflow)
    if not wf.tasks[claim.map_parent or claim.name].dependencies and initial is not None:
        state.initial = initial
    state.trace = execution.trace_context
    if claim.wait_event is not None:  # claimed from an event wait past its timeout
        job = Job(wf, state, claim.name, claim.attempt, {}, claim.wait_event, execution)
        return job, None
    if plan.needs_whole_execution(state, claim.name):
        # A dependency that did not complete passes on its own input: that needs the
        # whole execution (rare: only after a failure or a skip).
        state = rt.load(tx, execution, wf)
    decision = plan.decide(state, claim.name, now)
    if isinstance(decision, plan.WaitFor):
        if not rt.wait(tx, state, decision, now, claimed=True):
            return None, None  # it waits; the claim started no attempt
        decision = plan.Start(claim.name, plan.input_for(state, claim.name))
    if isinstance(decision, plan.Start):
        job = Job(wf, state, claim.name, claim.attempt, decision.input, None, execution)
        job.record = claim.record
        return job, None
    if isinstance(decision, plan.Spawn):
        rt.spawn(tx, state, decision, now, claimed=True)
        return None, None  # it waits for its child, which workers run
    if isinstance(decision, plan.Defer):  # cannot happen: the claim filters retry times
        return None, None
    if isinstance(decision, plan.Expand):
        if decision.count:
            rt.expand(tx, state, decision, now, in_process=False)
            rt.repo.notify_work(tx)  # its instances are ready for any worker
            return None, None
        # An empty list completes it: decided on the tasks around it, which its
        # dependents are among.
        nearby = around(rt, tx, wf, execution.id, claim.name)
        _, unblocked = rt.expand(tx, nearby, decision, now, in_process=False)
        mark_ready(rt, tx, nearby, unblocked, now)
        return None, after(rt, tx, wf, nearby, execution)
    nearby = around(rt, tx, wf, execution.id, claim.name)
    unblocked = rt.settle(tx, nearby, decision, now)
    mark_ready(rt, tx, nearby, unblocked, now)
    return None, after(rt, tx, wf, nearby, execution)


# Dependencies a task may have before its dependencies' completions count the others instead
# of reading them (a 1 -> 100 -> 1 fan-in read 102 task rows per completion).
FAN_IN = 8


def around(
    rt: Runtime,
    tx: Tx,
    wf: Workflow,
    execution_id: str,
    name: str,
    parent: str | None = None,
    known: Sequence[TaskRecord] = (),
) -> ExecutionState:
    """The tasks a change of ``name`` can affect: it, its dependents, and theirs. For an
    instance of a mapped task: it, that task (with what its input needs, for its output
    once the last instance is done), and what that task unblocks. ``known``: rows not to
    read again (a single task with no dependents reads nothing)."""
    context_id = None
    if parent is not None and not wf.tasks[parent].dependencies:
        execution = rt.repo.execution(tx, execution_id)
        context_id = execution.context_id if execution else None
    planned = plan_around(rt, wf, execution_id, name, parent, known, context_id)
    return rt.loaded(planned, tx.fetch_batch(planned.statements))


def plan_around(
    rt: Runtime,
    wf: Workflow,
    execution_id: str,
    name: str,
    parent: str | None = None,
    known: Sequence[TaskRecord] = (),
    context_id: str | None = None,
) -> PlannedLoad:
    """:func:`around`'s reads, to send with other statements; ``context_id``: the initial
    context's, which an instance of a mapped task with no dependencies needs."""
    declared = parent or name
    children = wf.dependents()[declared]
    touched = dict.fromkeys([name, declared, *children])
    # A wide fan-in's other dependencies are counted, not read: one unfinished counts in its
    # remaining, so that only the last of them unblocks it.
    wide = {child for child in children if len(wf.tasks[child].dependencies) > FAN_IN}
    waits = {
        child: [dep for dep in wf.tasks[child].dependencies if dep != declared] for child in wide
    }
    for child in children:
        if child not in wide:
            touched.update(dict.fromkeys(wf.tasks[child].dependencies))
    deps: tuple[str, ...] = ()
    if parent is not None:
        deps = wf.tasks[parent].dependencies
        touched.update(dict.fromkeys(deps))
    return rt.plan_load(
        execution_id, wf, list(touched), deps, context_id=context_id, known=known, waits=waits
    )


def mark_ready(rt: Runtime, tx: Tx, state: ExecutionState, names: list[str], now: float) -> None:
    if rt.make_ready(tx, state, names, now):
        rt.repo.notify_work(tx)


def after(
    rt: Runtime, tx: Tx, wf: Workflow, state: ExecutionState, execution: ExecutionRecord | None,
    *, written: bool = False,
) -> tuple[Workflow, ExecutionState] | None:  # fmt: skip
    """When nothing is left to run, load the whole execution and finish it (here,
    unless compensations must run first). ``written``: a lone task's completion ended the
    execution's row in its own statement (complete_lone_tasks)."""
    if _whole_and_completed(wf, state):
        # It holds every task, each completed with its output (a single-task execution
        # always does): it is the whole execution, with nothing to count or reload.
        if execution is None:
            execution = rt.repo.execution(tx, state.id)
            assert execution is not None
        rt.adopt_record(state, execution)
        rt.finish(tx, state, written=written)
        return None
    assert not written, "only a whole, completed execution is ended with its task"
    if state.open or rt.repo.unfinished_tasks(tx, state.id):
        return None  # a task it holds is not done yet, or one it does not hold
    if execution is None:
        execution = rt.repo.execution(tx, state.id)
        assert execution is not None
    whole = rt.load(tx, execution, wf)
    if not outcomes.compensation_order(whole):
        rt.finish(tx, whole)
        return None
    return wf, whole


def _whole_and_completed(wf: Workflow, state: ExecutionState) -> bool:
    return len(state.tasks) == len(wf.tasks) and all(
        task.status == COMPLETED and task.instances is None and name in state.outputs
        for name, task in state.tasks.items()
    )
