"""Leaner rows (0015). Task configurations are stored once per definition: every reader of a
whole execution sees the configuration a task row used to hold itself, for new rows, a fork's
patched row and rows written before the upgrade. A context row, and an output link until it
is replaced, leave their updated_at NULL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import Context, Engine, RetryPolicy, Workflow, sql
from durably.backends import open_store
from durably.diffs import task_inputs
from durably.registry import Registry
from durably.repository import configurations, new_id
from durably.shape import StoredShape
from durably.store import iter_statements, parse_timestamp

from .conftest import unique


def shaped() -> Workflow:
    wf = Workflow(unique("configured"))

    @wf.task(retry=RetryPolicy(max_attempts=3, initial_delay=0.01), timeout=5.0)
    def first(ctx: Context) -> None:
        ctx["first"] = 1

    @wf.task(dependencies=["first"], merge="latest_wins")
    def second(ctx: Context) -> None:
        ctx["second"] = ctx["first"] + 1

    @wf.task(dependencies=["first", "second"])
    def third(ctx: Context) -> None:
        ctx["third"] = 3

    return wf


@pytest.fixture
def raw(store_url: str) -> Iterator[Any]:
    """``raw(sql, *params)``: the rows of one statement on the test's database, committed."""
    if store_url.startswith("sqlite:"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)

        def run(text: str, *params: Any) -> list[tuple[Any, ...]]:
            return conn.execute(text.replace("%s", "?"), params).fetchall()

        yield run
        conn.close()
        return
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as pg:

        def run_pg(text: str, *params: Any) -> list[tuple[Any, ...]]:
            cur = pg.execute(text, params)
            return cur.fetchall() if cur.description else []

        yield run_pg


def stored_configurations(engine: Engine, execution_id: str) -> dict[str, Any]:
    snapshot = engine.snapshot(execution_id)
    return {task.name: task.configuration for task in snapshot.tasks}


def test_a_task_row_keeps_none_of_it_and_a_snapshot_reads_it_whole(
    store_url: str, raw: Any
) -> None:
    wf = shaped()
    expected = configurations.of_workflow(wf).tasks
    assert expected["first"]["retry"]["max_attempts"] == 3
    assert expected["third"]["dependencies"] == ["first", "second"]
    with Engine(store_url, workflows=[wf]) as engine:
        ids = [engine.run(wf).execution_id for _ in range(3)]
    rows = raw("SELECT task_configuration, trigger_rules FROM task_executions")
    assert rows
    assert all(row == (None, None) for row in rows)
    ((rules,),) = raw("SELECT trigger_rules FROM task_configurations")
    assert configurations.parsed(rules) == dict.fromkeys(wf.tasks, "all_success")
    # Context rows and output links are never updated here: their updated_at stays NULL.
    assert raw("SELECT count(*) FROM contexts WHERE updated_at IS NOT NULL") == [(0,)]
    links = raw("SELECT count(*) FROM task_execution_metadata WHERE updated_at IS NULL")
    assert links == [(3 * len(wf.tasks),)]
    with Engine(store_url) as engine:  # a process that read none of it yet
        for execution_id in ids:
            assert stored_configurations(engine, execution_id) == expected


def test_the_show_diff_without_the_workflow_uses_the_stored_configurations(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = shaped()
    with Engine(store_url, workflows=[wf]) as engine:
        execution_id = engine.run(wf).execution_id
    monkeypatch.setattr(Registry, "find", lambda self, name, version, shape=None: None)
    with Engine(store_url) as engine:
        snapshot = engine.snapshot(execution_id)
        shape = StoredShape.of(snapshot.tasks)
        assert shape is not None
        assert shape.tasks["third"].dependencies == ("first", "second")
        inputs, exact = task_inputs(engine, engine.get(execution_id))
    assert exact
    assert inputs["third"].data == {"first": 1, "second": 2}


def test_a_fork_s_patch_stays_in_its_row_on_top_of_the_rest(store_url: str, raw: Any) -> None:
    wf = shaped()
    with Engine(store_url, workflows=[wf]) as engine:
        first = engine.run(wf).execution_id
        forked = engine.fork(first, "second", {"first": 10})
        assert forked.context["second"] == 11
    patched = raw(
        "SELECT task_name, task_configuration FROM task_executions "
        "WHERE pipeline_execution_id = %s AND task_configuration IS NOT NULL",
        str(forked.execution_id),
    )
    assert [name for name, _ in patched] == ["second"]
    own = configurations.parsed(patched[0][1])
    assert list(own) == ["context_patch"]
    expected = configurations.of_workflow(wf).tasks
    with Engine(store_url, workflows=[wf]) as engine:
        found = stored_configurations(engine, forked.execution_id)
        inputs, _ = task_inputs(engine, engine.get(forked.execution_id))
    assert found["second"] == {**expected["second"], "context_patch": own["context_patch"]}
    assert found["third"] == expected["third"]
    assert inputs["second"].data["first"] == 10


def test_a_start_rolled_back_does_not_keep_them_as_stored(store_url: str, raw: Any) -> None:
    wf = shaped()
    with Engine(store_url, workflows=[wf]) as engine:
        repo = engine.runtime.repo

        def rolled_back() -> None:
            with engine.store.transaction() as tx:
                repo.create_execution(tx, wf, 0.0, initial="{}", claimed_by=None)
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            rolled_back()
        assert raw("SELECT count(*) FROM task_configurations") == [(0,)]
        execution_id = engine.run(wf).execution_id
    assert raw("SELECT count(*) FROM task_configurations") == [(1,)]
    with Engine(store_url) as engine:
        assert stored_configurations(engine, execution_id) == configurations.of_workflow(wf).tasks


def test_rows_that_hold_their_whole_configuration_read_the_same(store_url: str, raw: Any) -> None:
    """As written before 0015: the whole configuration in each row, and none named."""
    wf = shaped()
    expected = configurations.of_workflow(wf).tasks
    with Engine(store_url, workflows=[wf]) as engine:
        execution_id = engine.run(wf).execution_id
    raw("UPDATE pipeline_executions SET configuration_id = NULL")
    for name, value in expected.items():
        old = {**value, "context_patch": '{"n": 1}'} if name == "second" else value
        raw(
            "UPDATE task_executions SET task_configuration = %s WHERE task_name = %s",
            json.dumps(old),
            name,
        )
    with Engine(store_url) as engine:
        found = stored_configurations(engine, execution_id)
    assert found == {**expected, "second": {**expected["second"], "context_patch": '{"n": 1}'}}


def test_a_replaced_output_link_says_when(store_url: str, raw: Any) -> None:
    wf = shaped()
    with Engine(store_url, workflows=[wf]) as engine:
        execution_id = str(engine.run(wf).execution_id)
        ((task_id, context_id),) = raw(
            "SELECT task_execution_id, context_id FROM task_execution_metadata "
            "WHERE pipeline_execution_id = %s AND task_name = 'first'",
            execution_id,
        )
        later = "2030-01-01T00:00:00.000000+00:00"
        params = {"id": new_id(), "task_id": str(task_id), "execution_id": execution_id}
        params |= {"name": "first", "context_id": str(context_id), "now": later}
        with engine.store.transaction() as tx:
            tx.execute("save_output", params)
        ((updated,),) = raw(
            "SELECT updated_at FROM task_execution_metadata "
            "WHERE pipeline_execution_id = %s AND task_name = 'first'",
            execution_id,
        )
    assert parse_timestamp(updated) == parse_timestamp(later)


def test_resolved_puts_a_row_s_own_part_on_top() -> None:
    tasks = {"m": {"map": {"over": "xs"}, "retry": None}}
    assert configurations.resolved(None, tasks, "m[2]", "m") == json.dumps(tasks["m"])
    own = configurations.own_part('{"a": 1}')
    assert json.loads(configurations.resolved(own, tasks, "m", None) or "") == {
        **tasks["m"],
        "context_patch": '{"a": 1}',
    }
    old = json.dumps({"dependencies": []})
    assert configurations.resolved(old, {}, "x", None) == old
    assert configurations.resolved(None, {}, "x", None) is None


def test_0015_moves_a_database_forward_with_its_rows(tmp_path: Path) -> None:
    """A database at 0014, its task row holding its whole configuration: migrated, the
    execution reads as before, and a context row keeps its updated_at where it says more than
    its created_at."""
    path = tmp_path / "upgrade.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    e = "0b7c4a9e-0000-4000-8000-000000000001"
    for version, script in sql.migrations("sqlite"):
        if version < 15:
            for statement in iter_statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, 'then')", (version,))
    now = "2026-01-01T00:00:00+00:00"
    conn.execute("INSERT INTO contexts VALUES ('c0', '{\"n\": 1}', ?, ?, NULL)", (now, now))
    conn.execute("INSERT INTO contexts VALUES ('c1', '{\"n\": 2}', ?, ?, NULL)", (now, now))
    later = "2026-01-02T00:00:00+00:00"  # a saga's row, updated after it was written
    conn.execute("INSERT INTO contexts VALUES ('c2', '{}', ?, ?, NULL)", (now, later))
    conn.execute(
        "INSERT INTO pipeline_executions (id, pipeline_name, pipeline_version, status, "
        "context_id, final_context_id, pipeline_shape, created_at, updated_at) "
        "VALUES (?, 'gone', 'v', 'completed', 'c0', 'c1', 'v', ?, ?)",
        (e, now, now),
    )
    config = {"dependencies": [], "merge": "latest_wins", "context_patch": '{"p": 1}'}
    conn.execute(
        "INSERT INTO task_executions (id, pipeline_execution_id, task_name, position, status, "
        "task_configuration, created_at, updated_at) "
        "VALUES ('t', ?, 'a', 0, 'completed', ?, ?, ?)",
        (e, json.dumps(config), now, now),
    )
    conn.execute(
        "INSERT INTO task_execution_metadata VALUES ('m', 't', ?, 'a', 'c1', ?, ?)", (e, now, now)
    )
    conn.execute("COMMIT")
    conn.close()
    with open_store(f"sqlite:///{path}"):
        pass  # migrates
    conn = sqlite3.connect(path)
    try:
        stamps = conn.execute("SELECT id, value, updated_at FROM contexts ORDER BY id").fetchall()
        links = conn.execute("SELECT updated_at FROM task_execution_metadata").fetchall()
    finally:
        conn.close()
    assert stamps == [("c0", '{"n": 1}', None), ("c1", '{"n": 2}', None), ("c2", "{}", later)]
    assert links == [(None,)]  # its updated_at was its created_at
    with Engine(f"sqlite:///{path}") as engine:
        snapshot = engine.snapshot(e)
        assert snapshot.execution.configuration_id is None
        assert [task.configuration for task in snapshot.tasks] == [config]
        shape = StoredShape.of(snapshot.tasks)
        assert shape is not None
        assert list(shape.tasks) == ["a"]
        assert engine.get(e).context == {"n": 2}
