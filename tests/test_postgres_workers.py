"""PostgreSQL-only worker behaviour: killed connections and the transactions a task costs."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import pytest

from durably import Context, Engine, Workflow

from .conftest import PgServer

pytestmark = pytest.mark.postgres


def chain(name: str, length: int) -> Workflow:
    wf = Workflow(name)
    previous: list[str] = []
    for i in range(length):
        wf.task(name=f"t{i}", dependencies=previous)(setter(f"k{i}", i))
        previous = [f"t{i}"]
    return wf


def setter(key: str, value: int):  # type: ignore[no-untyped-def]
    def step(ctx: Context) -> None:
        ctx[key] = value

    return step


def fan(name: str, width: int) -> Workflow:
    wf = Workflow(name)
    wf.task(name="root")(lambda ctx: None)
    for i in range(width):
        wf.task(name=f"m{i}", dependencies=["root"])(lambda ctx: None)
    wf.task(name="sink", dependencies=[f"m{i}" for i in range(width)])(lambda ctx: None)
    return wf


def database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def terminate_backends(pg_server: PgServer, url: str) -> int:
    rows = pg_server.conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database(url),),
    ).fetchall()
    return len(rows)


def test_worker_survives_terminated_connections(postgres_url: str, pg_server: PgServer) -> None:
    wf = chain("pg_terminated", 30)
    with Engine(postgres_url, lease=2.0) as engine:
        engine.register(wf)
        execution_id = engine.start(wf, {"start": True})
        worker = engine.worker(concurrency=2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            killed = 0
            for _ in range(5):
                time.sleep(0.05)
                killed += terminate_backends(pg_server, postgres_url)
            assert killed > 0
            result = engine.wait(execution_id, timeout=60)
        finally:
            worker.stop()
            thread.join(timeout=30)
    assert result.status == "completed", result.error
    assert result.context["k29"] == 29


def xact_commit(pg_server: PgServer, url: str) -> int:
    # Backends publish their counters when they exit; wait until the figure settles.
    last = -1
    for _ in range(50):
        pg_server.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = pg_server.conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database(url),)
        ).fetchone()
        assert row is not None
        if row[0] == last:
            return int(row[0])
        last = row[0]
        time.sleep(0.2)
    return int(last)


def test_committed_transactions_per_task(postgres_url: str, pg_server: PgServer) -> None:
    """Issue 6: at most one commit per task in-process, two per task on the worker path,
    counted by the server itself (pg_stat_database.xact_commit)."""
    tasks = 100
    in_process, queued = chain("pg_cost_chain", tasks), fan("pg_cost_fan", tasks - 2)
    Engine(postgres_url).close()  # migrations and pool warm-up are not the figure
    before = xact_commit(pg_server, postgres_url)
    with Engine(postgres_url) as engine:
        assert engine.run(in_process, {}).status == "completed"
        own = engine.store.stats.transactions
    after_run = xact_commit(pg_server, postgres_url)
    # Per task: its completion. Per execution: the start, and the reads of the result.
    assert own <= tasks + 3
    assert after_run - before <= tasks + 6

    with Engine(postgres_url, lease=60) as engine:
        engine.register(queued)
        execution_id = engine.start(queued, {})
        worker = engine.worker(concurrency=4)
        worker.poll_interval = 5.0  # idle polls are not per-task cost
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        while worker.completed < tasks:
            time.sleep(0.01)
        worker.stop()
        thread.join(timeout=30)
        worker_commits = engine.store.stats.transactions
        assert engine.get(execution_id).status == "completed"
    # Claim and completion per task, plus a sweep, the start and a few empty claims.
    assert worker_commits <= 2 * tasks + 10
