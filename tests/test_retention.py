"""Retention (SPEC §3.5): ``engine.prune`` and ``durably prune`` delete finished executions
older than an age with every row they own, in bounded batches, and nothing else."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from durably import Engine, RetryPolicy, Workflow
from durably import retention as retention_module
from durably.cli import cli as durably_cli
from durably.clock import ManualClock
from durably.context import SagaContext
from durably.repository import Repository
from durably.retention import Pruner
from durably.saga import Saga
from durably.saga_execution import SagaExecution, SagaStatus
from durably.saga_inbox import ParticipantInbox
from durably.saga_messages import SagaResponseStatus
from durably.saga_repository import SagaExecutionRepository
from durably.store import timestamp

from .conftest import unique, wait_until

DAY = 86400.0
OWNED = ("task_executions", "task_execution_metadata", "task_attempts", "execution_events")
TABLES = ("contexts", "pipeline_executions", *OWNED, "saga_executions", "saga_replies")


# -- a window on the raw tables --------------------------------------------------------------------


class Raw:
    """Plain SQL on the test database: row counts, and rows a prune must have removed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = url.startswith("sqlite:")

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.sqlite:
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                rows = conn.execute(sql.replace("%s", "?"), params).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as pg:
            cursor = pg.execute(sql, params)  # type: ignore[arg-type]
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def tables(self) -> set[str]:
        if self.sqlite:
            rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = self.query(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        return {name for (name,) in rows}

    def counts(self) -> dict[str, int]:
        present = self.tables()
        return {t: self.query(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES if t in present}

    def owned(self, execution_id: str) -> dict[str, int]:
        """Rows of other tables that still belong to an execution."""
        present = self.tables()
        found = {
            table: self.query(
                f"SELECT count(*) FROM {table} WHERE CAST(pipeline_execution_id AS TEXT) = %s",
                execution_id,
            )[0][0]
            for table in OWNED
            if table in present
        }
        found["pipeline_executions"] = self.query(
            "SELECT count(*) FROM pipeline_executions WHERE CAST(id AS TEXT) = %s", execution_id
        )[0][0]
        return found

    def context_ids(self, execution_id: str) -> set[str]:
        rows = self.query(
            "SELECT CAST(context_id AS TEXT), CAST(final_context_id AS TEXT) "
            "FROM pipeline_executions WHERE CAST(id AS TEXT) = %s",
            execution_id,
        )
        ids = {value for row in rows for value in row if value}
        outputs = self.query(
            "SELECT CAST(context_id AS TEXT) FROM task_execution_metadata "
            "WHERE CAST(pipeline_execution_id AS TEXT) = %s",
            execution_id,
        )
        return ids | {value for (value,) in outputs}

    def contexts_present(self, ids: set[str]) -> set[str]:
        rows = self.query("SELECT CAST(id AS TEXT) FROM contexts")
        return ids & {value for (value,) in rows}


# -- fixtures --------------------------------------------------------------------------------------


def pipeline() -> Workflow:
    """a -> (b, c): b fails once before it succeeds (an attempt row), c fails on request."""
    wf = Workflow(unique("prune"))

    @wf.task()
    def a(ctx: Any) -> None:
        ctx["a"] = 1

    @wf.task(dependencies=["a"], retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False))
    def b(ctx: Any, handle: Any) -> None:
        if handle.attempt == 1:
            raise RuntimeError("flaky")
        ctx["b"] = 2

    @wf.task(dependencies=["a"])
    def c(ctx: Any) -> None:
        if ctx.get("fail"):
            raise RuntimeError("asked to fail")
        ctx["c"] = 3

    return wf


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed(store_url: str, clock: ManualClock) -> Iterator[Engine]:
    with Engine(store_url, clock=clock) as opened:
        yield opened


def add_event(raw: Raw, execution_id: str) -> None:
    """An event row for the execution, where the events table exists (SPEC §3.4)."""
    if "execution_events" not in raw.tables():
        return
    raw.query(
        "INSERT INTO execution_events (pipeline_execution_id, name, payload, created_at) "
        "VALUES (%s, 'ping', '{}', %s)",
        execution_id,
        timestamp(),
    )


# -- what is deleted, and what is kept -------------------------------------------------------------


def test_prune_deletes_old_finished_executions_with_every_row_they_own(
    timed: Engine, clock: ManualClock, store_url: str
) -> None:
    raw = Raw(store_url)
    wf = pipeline()
    old = [timed.run(wf, {"n": 1}), timed.run(wf, {"fail": True})]
    cancelled = timed.start(wf)
    timed.cancel(cancelled)
    queued_long_ago = str(timed.start(wf))  # running: never pruned, however old
    for result in old:
        add_event(raw, str(result.execution_id))
    gone = [str(r.execution_id) for r in old] + [str(cancelled)]
    assert [r.status for r in old] == ["completed", "failed"]
    clock.advance(40 * DAY)
    recent = timed.run(wf, {"n": 2})
    contexts = {eid: raw.context_ids(eid) for eid in [*gone, str(recent.execution_id)]}
    before = raw.counts()
    owned = {eid: raw.owned(eid) for eid in gone}
    assert all(rows["task_attempts"] >= 1 for rows in list(owned.values())[:2])

    assert timed.prune(timedelta(days=30)) == 3

    after = raw.counts()
    for eid in gone:
        assert set(raw.owned(eid).values()) == {0}, eid
        assert raw.contexts_present(contexts[eid]) == set(), eid
    removed = {table: before[table] - after[table] for table in before}
    for table in ("pipeline_executions", *OWNED):
        if table in removed:
            assert removed[table] == sum(rows[table] for rows in owned.values()), table
    assert removed["contexts"] == sum(len(contexts[eid]) for eid in gone)
    assert removed["saga_executions"] == removed["saga_replies"] == 0
    # Kept: the recent execution with all its contexts, and the running one.
    assert timed.get(recent.execution_id).context == recent.context
    assert (
        raw.contexts_present(contexts[str(recent.execution_id)])
        == contexts[str(recent.execution_id)]
    )
    assert timed.get(queued_long_ago).status == "running"
    clock.advance(1)
    assert timed.prune(timedelta(0)) == 1  # the recent one; the running one stays
    assert [r.status for r in timed.list()] == ["running"]


def test_a_fork_keeps_the_contexts_it_shares_with_a_pruned_parent(
    timed: Engine, clock: ManualClock, store_url: str
) -> None:
    raw = Raw(store_url)
    wf = pipeline()
    parent = timed.run(wf, {"n": 1})
    clock.advance(40 * DAY)
    child = timed.fork(parent.execution_id, "c", {"patched": True})
    assert child.status == "completed"
    shared = raw.context_ids(str(parent.execution_id)) & raw.context_ids(str(child.execution_id))
    assert shared, "a fork reuses its parent's initial context and the outputs before 'c'"

    assert timed.prune(timedelta(days=30)) == 1

    assert raw.contexts_present(shared) == shared
    kept = timed.get(child.execution_id)
    assert kept.context == child.context
    assert timed.task_context(child.execution_id, "a") == {"n": 1, "a": 1}
    assert timed.snapshot(child.execution_id).initial is not None
    # Once the fork goes too, nothing of either is left.
    clock.advance(1)
    assert timed.prune(timedelta(0)) == 1
    assert raw.counts()["contexts"] == 0


def test_status_filter_and_dry_run(timed: Engine, clock: ManualClock, store_url: str) -> None:
    raw = Raw(store_url)
    wf = pipeline()
    timed.run(wf)
    failed = timed.run(wf, {"fail": True})
    clock.advance(2 * DAY)
    before = raw.counts()
    assert timed.prune(timedelta(days=1), dry_run=True) == 2
    assert timed.prune(timedelta(days=1), "failed", dry_run=True) == 1
    assert timed.prune(timedelta(days=3), dry_run=True) == 0
    assert raw.counts() == before
    assert timed.prune(timedelta(days=1), "failed") == 1
    assert [r.status for r in timed.list()] == ["completed"]
    assert raw.owned(str(failed.execution_id))["pipeline_executions"] == 0


@pytest.mark.parametrize(
    ("older_than", "status", "error", "fragment"),
    [
        (30, None, TypeError, "must be a datetime.timedelta"),
        ("30d", None, TypeError, "must be a datetime.timedelta"),
        (timedelta(days=-1), None, ValueError, "must not be negative"),
        (timedelta(days=10**6), None, ValueError, "at most 36500 days"),
        (timedelta(days=1), "running", ValueError, "only finished executions are pruned"),
        (timedelta(days=1), "bogus", ValueError, "cannot prune status 'bogus'"),
    ],
)
def test_bad_arguments_delete_nothing(
    timed: Engine,
    clock: ManualClock,
    store_url: str,
    older_than: Any,
    status: Any,
    error: type[Exception],
    fragment: str,
) -> None:
    raw = Raw(store_url)
    timed.run(pipeline())
    clock.advance(2 * DAY)
    before = raw.counts()
    with pytest.raises(error, match=fragment):
        timed.prune(older_than, status)
    assert raw.counts() == before


def test_prune_works_in_bounded_batches(
    timed: Engine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = pipeline()
    for n in range(5):
        timed.run(wf, {"n": n})
    clock.advance(2 * DAY)
    sizes: list[int] = []
    real = Repository.prune_batch

    def counted(
        self: Repository, tx: Any, kind: str, status: str, cutoff: float, limit: int
    ) -> int:
        sizes.append(deleted := real(self, tx, kind, status, cutoff, limit))
        assert limit == 2
        return deleted

    monkeypatch.setattr(retention_module, "BATCH", 2)
    monkeypatch.setattr(Repository, "prune_batch", counted)
    before = timed.store.stats.transactions
    assert timed.prune(timedelta(days=1)) == 5
    # completed: 2 + 2 + 1; then one empty look at each other finished status, and the inbox.
    assert sizes == [2, 2, 1, 0, 0, 0, 0, 0]
    assert timed.store.stats.transactions - before == len(sizes)


def test_finished_sagas_are_pruned_with_their_replies_and_context(
    store_url: str, clock: ManualClock
) -> None:
    raw = Raw(store_url)
    saga = Saga(unique("prune_saga")).local_step(lambda ctx: None).commit()
    repo = SagaExecutionRepository(store_url)
    try:
        executions = {}
        for status in (SagaStatus.Finished, SagaStatus.Errored, SagaStatus.Paused):
            execution = SagaExecution.from_definition(saga, SagaContext(status=status.value))
            execution.status = status
            repo.save(execution)
            repo.save(execution, reply_key=f"reply-{status.value}")
            executions[status] = str(execution.uuid)
    finally:
        repo.close()
    clock.advance(2 * DAY)
    with Engine(store_url, clock=clock) as engine:
        assert engine.prune(timedelta(days=1), "errored", dry_run=True) == 1
        assert engine.prune(timedelta(days=1)) == 2
    left = raw.query("SELECT CAST(id AS TEXT), status FROM saga_executions")
    assert left == [(executions[SagaStatus.Paused], "paused")]
    assert raw.counts()["saga_replies"] == 1
    assert raw.counts()["contexts"] == 1  # the paused saga's


def _record_replies(engine: Engine, raw: Raw, keys: list[str], age: float) -> None:
    """Replies a participant recorded for ``keys``, ``age`` seconds ago."""
    inbox = ParticipantInbox(engine.store)
    for key in keys:
        asyncio.run(inbox.put("billing", key, SagaResponseStatus.SUCCESS, f'"{key}"'))
    raw.query(
        f"UPDATE saga_inbox SET created_at = %s WHERE idempotency_key IN "
        f"({', '.join(['%s'] * len(keys))})",
        timestamp(time.time() - age),
        *keys,
    )


def inbox_keys(raw: Raw) -> list[str]:
    return sorted(key for (key,) in raw.query("SELECT idempotency_key FROM saga_inbox"))


def test_a_participants_old_recorded_replies_are_pruned_in_batches(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = Raw(store_url)
    monkeypatch.setattr(retention_module, "BATCH", 2)
    with Engine(store_url) as engine:
        _record_replies(engine, raw, [f"old-{i}" for i in range(5)], 3 * DAY)
        _record_replies(engine, raw, ["recent"], 3600)
        everything = [*(f"old-{i}" for i in range(5)), "recent"]
        # Not executions: a prune of one status, or a dry run, leaves them; none is counted.
        assert engine.prune(timedelta(days=1), "completed") == 0
        assert engine.prune(timedelta(days=1), dry_run=True) == 0
        assert inbox_keys(raw) == everything
        before = engine.store.stats.transactions
        assert engine.prune(timedelta(days=1)) == 0
        assert inbox_keys(raw) == ["recent"]
        # Each status's batch, then the inbox's 2 + 2 + 1.
        assert engine.store.stats.transactions - before == len(retention_module.targets(None)) + 3
        inbox = ParticipantInbox(engine.store)
        assert asyncio.run(inbox.get("billing", "old-0")) is None
        kept = asyncio.run(inbox.get("billing", "recent"))
        assert kept == (SagaResponseStatus.SUCCESS, '"recent"')


def test_a_worker_with_retain_prunes_the_inbox_too(store_url: str) -> None:
    raw = Raw(store_url)
    with Engine(store_url) as engine:
        _record_replies(engine, raw, ["old"], 3 * DAY)
        _record_replies(engine, raw, ["recent"], 3600)
        pruner = Pruner(engine.runtime, timedelta(days=1))
        for _ in retention_module.passes(None):  # one batch per tick: a whole pass
            pruner.tick()
        assert inbox_keys(raw) == ["recent"]
        assert pruner.pruned == 0


@pytest.mark.parametrize(
    ("query", "params", "postgres_sql", "index"),
    [
        (
            "prunable_executions",
            {"status": "completed", "cutoff": "x", "limit": 5},
            "SELECT id FROM pipeline_executions WHERE status = 'completed' "
            "AND completed_at < now() ORDER BY completed_at LIMIT 5",
            "pipeline_executions_finished",
        ),
        (
            "prune_saga_inbox",
            {"cutoff": "x", "limit": 5},
            "SELECT target FROM saga_inbox WHERE created_at < now() ORDER BY created_at LIMIT 5",
            "saga_inbox_created",
        ),
    ],
)
def test_prune_selection_is_index_backed(
    any_store: Any, backend: str, query: str, params: dict[str, Any], postgres_sql: str,
    index: str,
) -> None:  # fmt: skip
    if backend == "sqlite":
        sql = any_store._queries[query]
        plan = any_store._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        assert index in " ".join(str(tuple(row)) for row in plan)
        return
    with any_store.transaction() as tx:
        tx.execute("next_wake")  # the transaction's BEGIN goes with its first statement
        cursor = tx.conn.cursor()
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {postgres_sql}")
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert index in plan


# -- in the background, in a worker ----------------------------------------------------------------


def test_a_worker_with_retain_prunes_in_the_background(timed: Engine, clock: ManualClock) -> None:
    wf = pipeline()
    timed.run(wf)
    timed.run(wf, {"fail": True})
    clock.advance(2 * DAY)
    worker = timed.worker(concurrency=1, retain=timedelta(days=1), poll_interval=0.01)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: not timed.list(), "the background prune")
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_background_passes_run_at_most_once_a_minute(
    timed: Engine, clock: ManualClock, store_url: str
) -> None:
    wf = pipeline()
    timed.run(wf)
    clock.advance(2 * DAY)
    pruner = Pruner(timed.runtime, timedelta(days=1))
    for _ in range(len(retention_module.passes(None))):  # one batch per tick: a whole pass
        pruner.tick()
    assert pruner.pruned == 1
    # An execution that finished long ago (by another engine's clock) arrives after the pass.
    with Engine(store_url, clock=ManualClock(clock.now() - 2 * DAY)) as other:
        late = other.run(wf)
    pruner.tick()
    clock.advance(retention_module.PRUNE_EVERY - 1)
    pruner.tick()
    assert [r.execution_id for r in timed.list()] == [late.execution_id]
    clock.advance(1)
    pruner.tick()
    assert pruner.pruned == 2
    assert not timed.list()


def test_worker_rejects_a_bad_retain(timed: Engine) -> None:
    with pytest.raises(TypeError, match="timedelta"):
        timed.worker(retain=30)
    with pytest.raises(ValueError, match="negative"):
        timed.worker(retain=timedelta(seconds=-1))


# -- durations and the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 1D 6H ", timedelta(days=1, hours=6)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert retention_module.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-5d", "1.5h", "30 days", "10000000000d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than"):
        retention_module.parse_duration(text)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(durably_cli, list(args))


def test_cli_prune(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'prune.db'}"

    # Executions that finished 40 days ago: the CLI's engine reads the real time.
    with Engine(db, clock=ManualClock(time.time() - 40 * DAY)) as engine:
        wf = pipeline()
        engine.run(wf)
        engine.run(wf, {"fail": True})
    dry = _cli("prune", "--older-than", "30d", "--dry-run", "--json", "--db", db)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["matched"] == 2
    assert json.loads(dry.stdout)["pruned"] == 0
    kept = _cli("prune", "--older-than", "41d", "--db", db)
    assert kept.exit_code == 0, kept.output
    assert kept.stdout.startswith("0 finished execution(s)")
    one = _cli("prune", "--older-than", "30d", "--status", "failed", "--db", db)
    assert one.exit_code == 0, one.output
    assert one.stdout.startswith("1 failed execution(s) that finished before")
    rest = _cli("prune", "--older-than", "30d", "--json", "--db", db)
    assert json.loads(rest.stdout)["pruned"] == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["prune", "--older-than", "30x"], "--older-than: '30x' is not a duration"),
        (["prune", "--older-than", "30d", "--status", "running"], "only finished executions"),
        (["worker", "tests.cli_app", "--retain", "forever"], "--retain: 'forever'"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, args: list[str], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # tests.cli_app importable
    result = _cli(*args, "--db", f"sqlite:///{tmp_path / 'e.db'}")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
