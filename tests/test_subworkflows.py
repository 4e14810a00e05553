"""Sub-workflows (SPEC §3.4, issue 10 item 4): ``wf.subworkflow(name, child, ...)``.

The child runs as its own execution (``parent_id``, ``parent_task``) with the task's input; the
task completes with the child's final context. A child's failure fails the task (its retry
policy runs a new child); cancelling the parent cancels the child; a failed parent undoes a
completed child. In-process, on workers (threads and PostgreSQL processes), and across a
killed process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner

from durably import (
    Context,
    Engine,
    RetryPolicy,
    Workflow,
    WorkflowDefinitionError,
    event,
)
from durably.cli import cli as durably_cli

from . import subworkflow_app
from .conftest import unique, wait_until
from .workers import running_worker

ROOT = Path(__file__).resolve().parent.parent


def pair(child_body: Any = None, **options: Any) -> tuple[Workflow, Workflow]:
    """A child (double, then inc) and a parent (prepare -> sub -> after)."""
    child = Workflow(unique("child"))

    @child.task()
    def double(ctx: Context) -> None:
        ctx["doubled"] = ctx["x"] * 2

    @child.task(dependencies=[double])
    def inc(ctx: Context) -> None:
        if child_body is not None:
            child_body(ctx)
        ctx["result"] = ctx["doubled"] + 1

    parent = Workflow(unique("parent"))

    @parent.task()
    def prepare(ctx: Context) -> None:
        ctx["x"] = 5

    parent.subworkflow("sub", child, dependencies=[prepare], **options)

    @parent.task(dependencies=["sub"])
    def after(ctx: Context) -> None:
        ctx["seen"] = ctx["result"]

    return parent, child


# -- 1. definition -----------------------------------------------------------------------------


def test_the_child_must_be_a_workflow() -> None:
    wf = Workflow(unique("p"))
    with pytest.raises(WorkflowDefinitionError, match="child must be a Workflow"):
        wf.subworkflow("sub", "not a workflow")  # type: ignore[arg-type]


def test_a_workflow_cannot_run_itself() -> None:
    wf = Workflow(unique("p"))
    with pytest.raises(WorkflowDefinitionError, match="cannot run itself"):
        wf.subworkflow("sub", wf)


def test_a_cycle_of_sub_workflows_is_refused_with_its_path() -> None:
    a, b = Workflow(unique("a")), Workflow(unique("b"))
    a.subworkflow("to_b", b)
    b.subworkflow("to_a", a)
    with pytest.raises(WorkflowDefinitionError, match=rf"cycle: {a.name} -> {b.name} -> {a.name}"):
        a.validate()


def test_a_duplicate_or_empty_name_is_refused() -> None:
    parent, child = pair()
    with pytest.raises(WorkflowDefinitionError, match="already has a task named 'sub'"):
        parent.subworkflow("sub", child)
    with pytest.raises(WorkflowDefinitionError, match="non-empty str"):
        parent.subworkflow("", child)


def test_an_unknown_dependency_is_reported_by_validate() -> None:
    _, child = pair()
    wf = Workflow(unique("p"))
    wf.subworkflow("sub", child, dependencies=["nope"])
    with pytest.raises(WorkflowDefinitionError, match="unknown task 'nope'"):
        wf.validate()


def test_the_childs_version_is_part_of_the_parents() -> None:
    parent, child = pair()
    before = parent.version
    other_parent, _other_child = pair()
    assert parent.version != other_parent.version  # different child names
    child.task(name="extra", dependencies=["inc"])(lambda ctx: None)
    fresh = Workflow(parent.name + "_again")
    fresh.subworkflow("sub", child)
    assert before == parent.version  # a definition's version is computed once it is used
    assert fresh.version != before


# -- 2. in-process -----------------------------------------------------------------------------


def test_the_task_completes_with_the_childs_final_context(engine: Engine) -> None:
    parent, _ = pair()
    result = engine.run(parent, {"order": 1})
    assert result.status == "completed", result.error
    assert dict(result.context) == {"order": 1, "x": 5, "doubled": 10, "result": 11, "seen": 11}
    sub = result.tasks["sub"]
    assert sub.status == "completed"
    assert sub.child_id is not None
    child = engine.get(sub.child_id)
    assert child.status == "completed"
    assert child.parent_id == result.execution_id
    assert child.parent_task == "sub"
    assert dict(child.context) == {"order": 1, "x": 5, "doubled": 10, "result": 11}
    # The child's input is the task's input: its root saw the parent's context.
    assert engine.task_context(sub.child_id, "double")["x"] == 5


def test_sub_workflows_nest(engine: Engine) -> None:
    grandchild = Workflow(unique("grandchild"))
    grandchild.task(name="leaf")(lambda ctx: ctx.update(depth=ctx.get("depth", 0) + 1))
    child = Workflow(unique("child"))
    child.subworkflow("inner", grandchild)
    child.task(name="mid", dependencies=["inner"])(lambda ctx: ctx.update(mid=ctx["depth"]))
    parent = Workflow(unique("parent"))
    parent.subworkflow("outer", child)
    result = engine.run(parent, {"depth": 0})
    assert result.status == "completed", result.error
    assert result.context["depth"] == 1
    assert result.context["mid"] == 1
    middle = engine.get(result.tasks["outer"].child_id)  # type: ignore[arg-type]
    inner = engine.get(middle.tasks["inner"].child_id)  # type: ignore[arg-type]
    assert inner.parent_id == middle.execution_id
    assert middle.parent_id == result.execution_id


def test_a_failed_child_fails_the_task_and_the_parent(engine: Engine) -> None:
    def boom(ctx: Context) -> None:
        raise ValueError("out of stock")

    parent, _ = pair(boom)
    result = engine.run(parent, {})
    assert result.status == "failed"
    sub = result.tasks["sub"]
    assert sub.status == "failed"
    assert sub.child_id is not None
    assert f"SubworkflowFailed: sub-workflow execution {sub.child_id} failed" in (sub.error or "")
    assert "out of stock" in (sub.error or "")
    assert result.tasks["after"].status == "upstream_failed"
    assert engine.get(sub.child_id).status == "failed"


def test_a_retry_policy_runs_a_new_child(engine: Engine) -> None:
    calls = Counter[str]()

    def flaky(ctx: Context) -> None:
        calls["inc"] += 1
        if calls["inc"] == 1:
            raise ValueError("flaky")

    policy = RetryPolicy(max_attempts=2, backoff="fixed", initial_delay=0, jitter=False)
    parent, child = pair(flaky, retry=policy)
    result = engine.run(parent, {})
    assert result.status == "completed", result.error
    assert result.context["seen"] == 11
    sub = result.tasks["sub"]
    assert sub.attempts == 2
    assert "flaky" in (sub.history[0].error or "")
    children = engine.list(workflow=child.name)
    assert sorted(c.status for c in children) == ["completed", "failed"]
    assert sub.child_id == next(c.execution_id for c in children if c.status == "completed")


def test_engine_retry_of_a_failed_parent_runs_a_new_child(engine: Engine) -> None:
    fail = {"on": True}

    def maybe(ctx: Context) -> None:
        if fail["on"]:
            raise ValueError("down")

    parent, child = pair(maybe)
    first = engine.run(parent, {})
    assert first.status == "failed"
    fail["on"] = False
    again = engine.retry(first.execution_id)
    assert again.status == "completed", again.error
    assert again.context["seen"] == 11
    assert len(engine.list(workflow=child.name)) == 2


def test_a_failed_parent_compensates_its_completed_child(engine: Engine) -> None:
    undone: list[str] = []
    child = Workflow(unique("child"))
    child.task(name="charge", compensate=lambda ctx: undone.append(f"refund {ctx['amount']}"))(
        lambda ctx: ctx.update(charged=True)
    )
    child.task(name="no_undo", dependencies=["charge"])(lambda ctx: None)
    parent = Workflow(unique("parent"))
    parent.subworkflow("pay", child)

    @parent.task(dependencies=["pay"])
    def ship(ctx: Context) -> None:
        raise RuntimeError("truck broke down")

    result = engine.run(parent, {"amount": 42})
    assert result.status == "failed"
    assert undone == ["refund 42"]
    assert result.tasks["pay"].compensation == "completed"
    child_result = engine.get(result.tasks["pay"].child_id)  # type: ignore[arg-type]
    assert child_result.status == "completed"  # it did complete; its effects were undone
    assert child_result.tasks["charge"].compensation == "completed"


@dataclass
class Running:
    """A parent run in-process on a thread, whose child waits for an "approved" event."""

    parent: Workflow
    child_id: UUID
    thread: threading.Thread
    outcome: dict[str, Any]

    def result(self) -> Any:
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        return self.outcome["r"]


def run_with_waiting_child(engine: Engine, body: Any = None) -> Running:
    child = Workflow(unique("child"))
    child.task(name="approve", wait=event("approved"))(body or (lambda ctx: None))
    parent = Workflow(unique("parent"))
    parent.subworkflow("sub", child)
    engine.register(parent)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(r=engine.run(parent, {})))
    thread.start()
    wait_until(lambda: bool(engine.list(workflow=child.name)), "the child execution")
    [child_summary] = engine.list(workflow=child.name)
    return Running(parent, child_summary.execution_id, thread, outcome)


def test_cancelling_the_parent_cancels_the_waiting_child(engine: Engine) -> None:
    running = run_with_waiting_child(engine)
    wait_until(
        lambda: engine.get(running.child_id).tasks["approve"].status == "waiting",
        "the child's wait",
    )
    [parent_summary] = engine.list(workflow=running.parent.name)
    engine.cancel(parent_summary.execution_id)
    result = running.result()
    assert result.status == "cancelled"
    assert engine.get(running.child_id).status == "cancelled"
    assert result.tasks["sub"].status == "skipped"


def test_cancelling_the_child_fails_the_parents_task(engine: Engine) -> None:
    running = run_with_waiting_child(engine)
    wait_until(
        lambda: engine.get(running.child_id).tasks["approve"].status == "waiting",
        "the child's wait",
    )
    engine.cancel(running.child_id)
    result = running.result()
    assert result.status == "failed"
    assert "cancelled" in (result.tasks["sub"].error or "")


def test_an_event_sent_to_the_child_lets_the_parent_finish(engine: Engine) -> None:
    running = run_with_waiting_child(engine, lambda ctx: ctx.update(by=ctx["approved"]["by"]))
    engine.send(running.child_id, "approved", {"by": "alice"})
    result = running.result()
    assert result.status == "completed", result.error
    assert result.context["by"] == "alice"


def test_the_reserved_event_name_cannot_be_forged(engine: Engine) -> None:
    child = Workflow(unique("child"))
    child.task(name="approve", wait=event("approved"))(lambda ctx: None)
    execution_id = engine.start(child, {})
    with pytest.raises(ValueError, match="reserved"):
        engine.send(execution_id, "durably.child:" + str(execution_id), {"status": "completed"})


def test_a_fork_after_the_sub_workflow_reuses_it_and_from_it_runs_a_new_child(
    engine: Engine,
) -> None:
    parent, child = pair()
    first = engine.run(parent, {})
    later = engine.fork(first.execution_id, "after", {"x": 0})
    assert later.status == "completed", later.error
    assert len(engine.list(workflow=child.name)) == 1  # "sub" was reused
    again = engine.fork(first.execution_id, "sub", {"x": 1})
    assert again.status == "completed", again.error
    assert again.context["seen"] == 3
    assert len(engine.list(workflow=child.name)) == 2


# -- 3. workers --------------------------------------------------------------------------------


def test_a_worker_runs_parent_and_child(engine: Engine) -> None:
    parent, _child = pair()
    engine.register(parent)
    execution_id = engine.start(parent, {})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "completed", result.error
    assert result.context["seen"] == 11
    child_result = engine.get(result.tasks["sub"].child_id)  # type: ignore[arg-type]
    assert child_result.parent_id == execution_id
    assert child_result.tasks["inc"].history[0].worker is not None


def test_a_worker_fails_the_task_of_a_failed_child(engine: Engine) -> None:
    def boom(ctx: Context) -> None:
        raise ValueError("no stock")

    parent, _ = pair(boom)
    engine.register(parent)
    execution_id = engine.start(parent, {})
    with running_worker(engine):
        result = engine.wait(execution_id, timeout=30)
    assert result.status == "failed"
    assert "no stock" in (result.tasks["sub"].error or "")


def test_cancelling_a_queued_parent_cancels_its_child(engine: Engine) -> None:
    child = Workflow(unique("child"))
    child.task(name="approve", wait=event("approved"))(lambda ctx: None)
    parent = Workflow(unique("parent"))
    parent.subworkflow("sub", child)
    engine.register(parent)
    execution_id = engine.start(parent, {})
    with running_worker(engine):
        wait_until(lambda: bool(engine.list(workflow=child.name)), "the child execution")
        engine.cancel(execution_id)
    [child_summary] = engine.list(workflow=child.name)
    assert child_summary.status == "cancelled"
    assert engine.get(execution_id).status == "cancelled"


def marks_of(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [(line.split()[0], line.split()[1]) for line in path.read_text().splitlines()]


def spawn(url: str, mode: str, marks: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "DURABLY_MARKS": str(marks), "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.subworkflow_app", url, mode], cwd=ROOT, env=environ
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_two_postgres_worker_processes_run_parents_and_children_once(
    postgres_url: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    workers = [spawn(postgres_url, "worker", marks) for _ in range(2)]
    try:
        wait_until(
            lambda: [n for n, _ in marks_of(marks)].count("worker-ready") == 2,
            "two workers",
            timeout=30,
        )
        with Engine(postgres_url, workflows=[subworkflow_app.parent]) as engine:
            ids = [engine.start(subworkflow_app.parent, {"n": i}) for i in range(6)]
            results = [engine.wait(i, timeout=60) for i in ids]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=20)
    for result in results:
        assert result.status == "completed", result.error
        assert result.context["notified"] is True
        assert result.tasks["fulfil"].child_id is not None
    ran = Counter(name for name, _ in marks_of(marks) if name != "worker-ready")
    assert ran == Counter({"order": 6, "reserve": 6, "pack": 6, "notify": 6})
    assert len({pid for name, pid in marks_of(marks) if name != "worker-ready"}) == 2


# -- 4. crash ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_parent_killed_while_its_child_runs_resumes_both(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("DURABLY_MARKS", str(marks))
    process = spawn(store_url, "run", marks, DURABLY_SLOW="30")
    with Engine(store_url, workflows=[subworkflow_app.parent]) as engine:
        child_name = subworkflow_app.child.name

        def reserved() -> bool:
            children = engine.list(workflow=child_name)
            return bool(children) and (
                engine.get(children[0].execution_id).tasks["reserve"].status == "completed"
            )

        try:
            wait_until(reserved, "the child's first task")
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        [summary] = engine.list(workflow=subworkflow_app.parent.name)
        assert summary.status == "running"
        result = engine.resume(summary.execution_id)
        assert result.status == "completed", result.error
        assert result.context["notified"] is True
        child = engine.get(result.tasks["fulfil"].child_id)  # type: ignore[arg-type]
    assert child.status == "completed"
    ran = Counter(name for name, _ in marks_of(marks))
    # Nothing completed before the kill ran again; the child was not started twice.
    assert ran == Counter({"order": 1, "reserve": 1, "pack": 1, "notify": 1})
    assert child.tasks["reserve"].attempts == 1


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_after_the_child_finished_leaves_the_parent_to_another(
    postgres_url: str, tmp_path: Path
) -> None:
    """The child's end and its report to the parent are one transaction: a worker killed
    right after it leaves the parent's task ready for the next worker."""
    marks = tmp_path / "marks"
    with Engine(postgres_url, workflows=[subworkflow_app.parent]) as engine:
        execution_id = engine.start(subworkflow_app.parent, {})
        # Step a worker by hand: everything up to the child's end, then stop (as if killed).
        worker = engine.worker(concurrency=1)
        os.environ["DURABLY_MARKS"] = str(marks)
        try:
            for _ in range(20):
                jobs = worker.claim(1)
                for job in jobs:
                    if job.name == "fulfil":  # the parent's task, woken by the child's end
                        break
                    ctx = engine.runtime.context(job.state, job.name, job.input)
                    handle = engine.runtime.handle(job.state, job.name, job.attempt)
                    task = job.wf.tasks[job.name]
                    task.fn(ctx, handle) if task.wants_handle else task.fn(ctx)
                    worker.record(job, ctx._data)
                else:
                    continue
                break
        finally:
            del os.environ["DURABLY_MARKS"]
        status = engine.get(execution_id)
        assert status.tasks["fulfil"].status == "running"  # claimed by the "killed" worker
        child_id = status.tasks["fulfil"].child_id
        assert child_id is not None
        assert engine.get(child_id).status == "completed"
    # Another process, whose lease check sees the first worker gone, finishes the parent.
    with Engine(postgres_url, workflows=[subworkflow_app.parent], lease=0.5) as engine:
        time.sleep(0.6)
        os.environ["DURABLY_MARKS"] = str(marks)
        try:
            with running_worker(engine):
                result = engine.wait(execution_id, timeout=30)
        finally:
            del os.environ["DURABLY_MARKS"]
    assert result.status == "completed", result.error
    ran = Counter(name for name, _ in marks_of(marks))
    assert ran == Counter({"order": 1, "reserve": 1, "pack": 1, "notify": 1})


# -- 5. durably show ---------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(durably_cli, list(args), env={"COLUMNS": "200"})


def test_show_links_parent_and_child(store_url: str) -> None:
    parent, _ = pair()
    with Engine(store_url) as engine:
        result = engine.run(parent, {})
    child_id = str(result.tasks["sub"].child_id)
    shown = invoke("show", str(result.execution_id), "--db", store_url)
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert f"sub runs sub-workflow execution {child_id}" in shown.output
    shown_child = invoke("show", child_id, "--db", store_url)
    assert shown_child.exit_code == 0, (shown_child.output, shown_child.exception)
    assert f"sub-workflow of execution {result.execution_id} (task 'sub')" in shown_child.output
    data = json.loads(invoke("show", child_id, "--json", "--db", store_url).stdout)
    assert data["parent_id"] == str(result.execution_id)
    assert data["parent_task"] == "sub"
