"""Deploy-safe versions (SPEC §3.5), end to end with real worker processes on both backends:
a code-only change takes over executions mid-run and runs the new code for what is left, each
attempt recording the version it ran; a shape change never takes them over, logs each once,
and ``durably list --stranded`` lists them with the version they need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durably import Context, Engine, Workflow
from durably.exceptions import WorkflowDefinitionError, WorkflowNotRegistered

from . import deploy_v1, deploy_v2, deploy_v3

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def worker(url: str, *modules: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "durably", "worker", *modules, "--db", url, "--lease", "2"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durably", *args], cwd=ROOT, env=ENV, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_versions_and_shapes_of_the_three_modules() -> None:
    assert deploy_v1.deploy.version != deploy_v2.deploy.version  # the code changed
    assert deploy_v1.deploy.shape_version == deploy_v2.deploy.shape_version
    assert deploy_v3.deploy.shape_version != deploy_v1.deploy.shape_version


def test_code_only_deploy_takes_over_and_shape_change_strands(store_url: str) -> None:
    v1, v2, v3 = deploy_v1.deploy, deploy_v2.deploy, deploy_v3.deploy
    with Engine(store_url, workflows=[v1]) as engine:
        first = engine.start(v1, {})
        old = worker(store_url, "tests.deploy_v1")

        def b_failed_once() -> bool:
            b = engine.get(first).tasks["b"]
            return any(a.status == "failed" for a in b.history)

        until(b_failed_once)
        stop(old)
        assert engine.get(first).status == "running"

        new = worker(store_url, "tests.deploy_v2")
        done = engine.wait(first, timeout=60)
        stop(new)
        assert done.status == "completed", done.error
        # a ran on v1 before the deploy; b and c ran the new code.
        assert done.context.to_dict() == {"a": "v1", "b": "v2", "c": "v2"}
        assert done.version == v1.version  # the version it started on stays recorded
        b = done.tasks["b"].history
        assert {a.version for a in b if a.status == "failed"} == {v1.version}
        assert b[-1].status == "completed"
        assert b[-1].version == v2.version
        assert [a.version for a in done.tasks["a"].history] == [v1.version]
        assert [a.version for a in done.tasks["c"].history] == [v2.version]
        shown = cli("show", str(first), "--db", store_url)
        assert shown.returncode == 0, shown.stderr
        assert f"b ran version {v1.version[:8]} -> {v2.version[:8]}" in shown.stdout
        assert f"c ran version {v2.version[:8]}" in shown.stdout
        assert "a ran version" not in shown.stdout  # the version it started on
        as_json = cli("show", str(first), "--db", store_url, "--json")
        history = json.loads(as_json.stdout)["tasks"]["b"]["history"]
        assert history[-1]["version"] == v2.version
        assert history[0]["version"] == v1.version

        # A shape change: v3 leaves the v1 execution alone and says so, once.
        stranded = engine.start(v1, {})
        fresh = engine.start(v3, {})
        shaped = worker(store_url, "tests.deploy_v3")
        assert engine.wait(fresh, timeout=60).context["d"] == "v3"
        time.sleep(3.5)  # several of the worker's checks (every lease / 2 = 1 s)
        listed = cli("list", "--stranded", "--json", "--db", store_url)
        err = stop(shaped)
        assert engine.get(stranded).status == "running"
        assert all(t.attempts == 0 for t in engine.get(stranded).tasks.values())
        lines = [line for line in err.splitlines() if str(stranded) in line]
        assert len(lines) == 1, err
        assert f"needs version {v1.version}" in lines[0]
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(r["id"], r["version"]) for r in rows] == [(str(stranded), v1.version)]

        # Judged by modules instead of live workers (none is live now).
        by_v3 = cli("list", "--stranded", "--json", "-m", "tests.deploy_v3", "--db", store_url)
        assert [r["id"] for r in json.loads(by_v3.stdout)] == [str(stranded)]
        by_v2 = cli("list", "--stranded", "--json", "-m", "tests.deploy_v2", "--db", store_url)
        assert json.loads(by_v2.stdout) == []
        table = cli("list", "--stranded", "--db", store_url)
        assert str(stranded) in table.stdout
        assert v1.version in table.stdout
        assert "no live worker" in table.stderr

        # The fix the README gives: serve the old shape too (here: its code-only successor).
        both = worker(store_url, "tests.deploy_v2", "tests.deploy_v3")
        result = engine.wait(stranded, timeout=60)
        stop(both)
        assert result.status == "completed", result.error
        assert result.context.to_dict() == {"a": "v2", "b": "v2", "c": "v2"}
        after = cli("list", "--stranded", "--json", "-m", "tests.deploy_v3", "--db", store_url)
        assert json.loads(after.stdout) == []


def test_in_process_resume_uses_a_definition_of_the_same_shape(store_url: str) -> None:
    v1, v2, v3 = deploy_v1.deploy, deploy_v2.deploy, deploy_v3.deploy
    with Engine(store_url, workflows=[v1]) as engine:
        execution_id = engine.start(v1, {})
    with (
        Engine(store_url, workflows=[v3]) as engine,
        pytest.raises(WorkflowNotRegistered, match="same shape"),
    ):
        engine.resume(execution_id)
    with Engine(store_url, workflows=[v2, v3]) as engine:
        result = engine.resume(execution_id)
    assert result.status == "completed", result.error
    assert result.context["a"] == "v2"
    assert {t.history[-1].version for t in result.tasks.values()} == {v2.version}


def test_declared_version_pins_and_bounds_takeover(store_url: str) -> None:
    def make(version: str, value: int) -> Workflow:
        wf = Workflow("pinned_deploy", version=version)

        @wf.task()
        def only(ctx: Context) -> None:
            ctx["value"] = value

        return wf

    one, one_again, two = make("1", 1), make("1", 10), make("2", 2)
    assert one.version == one_again.version == "1"
    assert one.shape_version == one_again.shape_version != two.shape_version
    with Engine(store_url, workflows=[one]) as engine:
        execution_id = engine.start(one, {})
    # A bumped declared version does not take over.
    with Engine(store_url, workflows=[two]) as engine, pytest.raises(WorkflowNotRegistered):
        engine.resume(execution_id)
    with Engine(store_url, workflows=[two, one_again]) as engine:
        result = engine.resume(execution_id)
    assert result.context["value"] == 10
    assert result.version == "1"
    assert result.tasks["only"].history[-1].version == "1"


@pytest.mark.parametrize("bad", ["", "   ", 2, "x" * 65, "a\nb"])
def test_bad_declared_version(bad: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="version"):
        Workflow("bad_version", version=bad)  # type: ignore[arg-type]


def test_shape_version_ignores_code_and_declaration_order() -> None:
    def make(order: list[str], body: int) -> Workflow:
        wf = Workflow("shape_order")
        for name in order:
            deps = ["a"] if name == "b" else []
            wf.task(name=name, dependencies=deps)(lambda ctx, body=body: None)
        return wf

    assert make(["a", "b"], 1).shape_version == make(["b", "a"], 2).shape_version
    wf = make(["a", "b"], 1)
    before = wf.shape_version
    wf.task(name="c", dependencies=["a", "b"])(lambda ctx: None)
    assert wf.shape_version != before
