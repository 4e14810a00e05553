"""The runtime's transitions for waits and mapped tasks: a task starting to wait (or finding
its event in the mailbox), a mapped task fanning out, an instance finishing. A mixin of
:class:`~durably.runtime.Runtime`, apart so each module stays one concept."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import codec, outcomes, plan
from .logs import log
from .plan import Start
from .state import ExecutionState, TaskState
from .statuses import COMPLETED, FAILED, FAILED_LIKE, READY, RUNNING, TASK_TERMINAL, WAITING
from .store import Tx
from .workflow import Workflow

if TYPE_CHECKING:
    from .repository import Repository

logger = logging.getLogger("durably.runtime")


class WaitsAndMaps:
    repo: Repository
    worker_id: str
    max_context_bytes: int

    def claim(self, tx: Tx, state: ExecutionState, name: str, now: float) -> bool:
        raise NotImplementedError  # the Runtime's

    def expand(
        self, tx: Tx, state: ExecutionState, decision: plan.Expand, now: float, *,
        in_process: bool,
    ) -> tuple[list[Start], list[str]]:  # fmt: skip
        """Fan a mapped task out into its instances (one bulk insert): in-process, the first
        ``max_parallel`` are claimed here at once; for workers they are ready. Returns the
        instances to run and, for an empty list (the task completes), what that unblocks."""
        name = decision.name
        task = state.tasks[name]
        definition = state.definition(name)
        if decision.count == 0:
            value = codec.dumps(decision.input, max_bytes=self.max_context_bytes)
            self.repo.settle_task(tx, task.id, COMPLETED, None, now)
            deps = definition.dependencies
            self.repo.save_output(tx, state.id, task.id, name, value, now, deps)
            state.outputs[name] = value
            return [], state.mark(name, COMPLETED)
        worker = self.worker_id if not in_process else ""
        if not self.repo.expand_task(tx, task.id, decision.count, worker, now):
            return [], []
        limit = definition.max_parallel or decision.count
        wf = state.shape
        assert isinstance(wf, Workflow), "a mapped task expands under its registered workflow"
        template = next(row for row in self.repo.template(wf) if row["name"] == name)
        instances = self.repo.insert_instances(
            tx, state.id, name, template, decision.count, min(limit, decision.count),
            # Under a flow limit, the run claims them one by one, as it may (flow.py).
            self.worker_id if in_process and self.repo.limits_of(wf) is None else None, now,
        )  # fmt: skip
        task.status, task.instances, task.claimed_by, task.attempt = (
            RUNNING,
            decision.count,
            None,
            1,
        )
        for instance in instances:
            state.add(instance)
        starts = [
            Start(i.name, plan.input_for(state, i.name)) for i in instances if i.status == RUNNING
        ]
        return starts, []

    def close_instance(
        self, tx: Tx, state: ExecutionState, name: str, now: float, *, in_process: bool
    ) -> tuple[list[Start], list[str]]:
        """An instance finished: free its slot under max_parallel, and when it was the last
        open one finish the mapped task. Returns instances to run now (in-process) and the
        tasks the mapped task's end unblocked."""
        parent = state.tasks[name].parent
        assert parent is not None
        if state.tasks[name].status not in TASK_TERMINAL:
            return [], []  # it waits for a retry: its slot stays taken
        definition = state.definition(name)
        starts: list[Start] = []
        if definition.max_parallel is not None:
            promoted = self.repo.promote_instance(tx, state.id, parent, now)
            if promoted is not None:
                task_id, instance, index = promoted
                state.add(TaskState(task_id, instance, READY, parent=parent, index=index))
                if in_process and self.claim(tx, state, instance, now):
                    starts.append(Start(instance, plan.input_for(state, instance)))
        task = state.tasks[parent]
        lost = state.tasks[name].status in FAILED_LIKE
        total, done, failed = self.repo.count_instance_done(tx, task.id, lost, now)
        if done < total:
            return starts, []
        error = None
        value = None
        if failed:
            status, error = FAILED, f"{failed} of its {total} instances failed"
        else:
            outputs = self.repo.instance_outputs(tx, state.id, parent)
            try:
                # By its dependents' merge rule: a "strict" conflict between instances fails it.
                merged = outcomes.mapped_output(
                    definition,
                    plan.input_for(state, parent),
                    list(outputs),
                    outcomes.dependents_merge(state.shape, parent),
                )
                value = codec.dumps(merged, max_bytes=self.max_context_bytes)
                status = COMPLETED
            except Exception as exc:
                status, error = FAILED, plan.describe(exc)
        self.repo.finish_mapped_task(
            tx, state.id, task.id, parent, status, error, value, now, definition.dependencies
        )
        if value is not None:
            state.outputs[parent] = value
        return starts, state.mark(parent, status, error)

    def wait(
        self, tx: Tx, state: ExecutionState, decision: plan.WaitFor, now: float, *, claimed: bool
    ) -> bool:
        """Put a task into its wait; True when the wait is over already (a past time, or an
        event waiting in the mailbox, which this task now consumed)."""
        task = state.tasks[decision.name]
        if decision.event is None:
            if decision.wake_at is not None and decision.wake_at <= now:
                self.repo.mark_waited(tx, task.id, now)
                task.waited = True
                return True
        else:
            # Under the execution's lock, as send() is: an event is either in the mailbox
            # now, or send() will find this task waiting: never neither.
            self.repo.lock_execution(tx, state.id)
            payload = self.repo.take_event(tx, state.id, decision.event, task.id, now)
            if payload is not None:
                received = {**state.received.get(decision.name, {})}
                received[decision.key or decision.event] = codec.loads_value(payload)
                self.repo.set_received(tx, task.id, codec.dumps(received), now)
                state.received[decision.name] = received
                task.waited = True
                return True
        worker = self.worker_id if claimed else ""
        if self.repo.wait_task(tx, task.id, decision.wake_at, decision.event, worker, now):
            task.status, task.wake_at, task.wait_event = WAITING, decision.wake_at, decision.event
            task.claimed_by, task.retry_at = None, None
            if claimed:
                task.attempt -= 1
            log(
                logger,
                logging.INFO,
                "task %r of execution %s waits for %s",
                decision.name,
                state.id,
                f"event {decision.event!r}" if decision.event else "its time",
                action="task_waiting",
                execution_id=state.id,
                workflow=getattr(state.shape, "name", None),
                task=decision.name,
            )
        return False
