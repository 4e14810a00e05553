"""``Tx.send``: a write whose result nobody reads, held back on PostgreSQL and sent with the
next statement or the COMMIT (one round trip for all of them), run at once on SQLite. Either
way it runs before what follows it, and its error fails its transaction."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from durably import Engine, Workflow
from durably.backends import open_store
from durably.exceptions import StoreError
from durably.store import Store, timestamp

from .conftest import wait_until
from .test_store import insert_context, read_context, terminate


def insert(context_id: str, value: str = "{}") -> dict[str, str]:
    return {"id": context_id, "value": value, "now": timestamp()}


def test_a_sent_write_runs_before_the_statement_after_it(any_store: Store, backend: str) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    any_store.stats.reset()
    with any_store.transaction() as tx:
        tx.send("insert_context", insert(first, '{"n": 1}'))
        tx.send("insert_context", insert(second, '{"n": 2}'))
        row = tx.fetch_one("get_context", {"id": second})
        assert row is not None
        assert row["value"] == '{"n": 2}'
    stats = any_store.stats
    # PostgreSQL: the BEGIN and the two writes with the read, then COMMIT. SQLite: one call
    # each.
    trips = 2 if backend == "postgres" else 5
    assert (stats.transactions, stats.statements, stats.round_trips) == (1, 3, trips)
    assert read_context(any_store, first) == '{"n": 1}'


def test_writes_sent_last_go_with_the_commit(any_store: Store, backend: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    any_store.stats.reset()
    with any_store.transaction() as tx:
        for context_id in ids:
            tx.send("insert_context", insert(context_id))
    stats = any_store.stats
    assert (stats.transactions, stats.statements) == (1, 3)
    # PostgreSQL: BEGIN, the writes and COMMIT in one round trip. SQLite: each.
    assert stats.round_trips == (1 if backend == "postgres" else 5)
    assert [read_context(any_store, context_id) for context_id in ids] == ["{}"] * 3


def test_sent_writes_keep_their_order_around_a_bulk_write(any_store: Store) -> None:
    first, more = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(2)]
    with any_store.transaction() as tx:
        tx.send("insert_context", insert(first))
        tx.execute_many("insert_context", [insert(context_id) for context_id in more])
        batch = tx.fetch_batch([("get_context", {"id": first}), ("get_context", {"id": more[1]})])
    assert [len(rows) for rows in batch] == [1, 1]


def test_a_failing_sent_write_fails_its_transaction_at_the_commit(any_store: Store) -> None:
    taken, other = str(uuid.uuid4()), str(uuid.uuid4())
    # The error comes as the transaction's block exits, at its commit.
    with pytest.raises(StoreError, match=r"(?i)unique|duplicate"), any_store.transaction() as tx:  # noqa: PT012
        tx.send("insert_context", insert(other))
        tx.send("insert_context", insert(taken))
        tx.send("insert_context", insert(taken))  # the same id again
    assert read_context(any_store, other) is None  # nothing of it committed
    assert read_context(any_store, insert_context(any_store)) == '{"a": 1}'  # the store works


def test_a_failing_sent_write_fails_the_statement_it_travels_with(
    any_store: Store, backend: str
) -> None:
    taken = str(uuid.uuid4())
    with pytest.raises(StoreError) as caught, any_store.transaction() as tx:  # noqa: PT012
        tx.send("insert_context", insert(taken))
        tx.send("insert_context", insert(taken))
        tx.fetch_one("get_context", {"id": taken})
        raise AssertionError("the read ran after a failed write")  # pragma: no cover
    message = str(caught.value).lower()
    assert "unique" in message or "duplicate" in message
    if backend == "postgres":  # it names the statements it was sent with
        assert "'insert_context'" in message
        assert "'get_context'" in message
    assert read_context(any_store, taken) is None


@pytest.mark.postgres
def test_a_dead_pooled_connection_is_replaced_for_a_transaction_that_only_sends(
    postgres_url: str, pg_server: Any
) -> None:
    with open_store(postgres_url, application_name="durably_kill_sends", min_size=2) as store:
        insert_context(store)
        assert terminate(pg_server, "durably_kill_sends") >= 1
        # Gone for good, as after a restart (pg_terminate_backend returns before the backend
        # has said goodbye and closed its socket).
        wait_until(lambda: not pg_server.conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'durably_kill_sends'"
        ).fetchall(), "the killed backends to exit")  # fmt: skip
        # Its BEGIN, its writes and its COMMIT travel together: the dead connection is
        # seen before they leave (its goodbye waits to be read), and replaced.
        context_id = str(uuid.uuid4())
        with store.transaction() as tx:
            tx.send("insert_context", insert(context_id))
        assert read_context(store, context_id) == "{}"


@pytest.mark.postgres
def test_a_transaction_whose_first_statement_fails_is_rolled_back_before_the_pool(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its BEGIN went with that statement: the ROLLBACK is sent, the pool gets its connection
    back idle (it would otherwise roll it back itself, with a warning)."""
    with open_store(postgres_url, min_size=1, max_size=1) as store:
        taken = insert_context(store)
        with caplog.at_level("WARNING"):
            with pytest.raises(StoreError), store.transaction() as tx:
                tx.execute("insert_context", insert(taken))  # the same id: refused
            assert read_context(store, taken) == '{"a": 1}'
        assert not [r for r in caplog.records if r.name.startswith("psycopg")], caplog.text


def test_a_heartbeat_does_not_deadlock_against_an_in_process_run_finishing(
    postgres_url: str,
) -> None:
    """The last completion of an in-process run updates its task row, then its execution's;
    the heartbeat of that run's claims must take them in the same order (the opposite order
    deadlocked: PostgreSQL then aborts one of the two transactions)."""
    wf = Workflow(f"beat_{uuid.uuid4().hex[:10]}")
    wf.task(name="only")(lambda ctx: None)
    with Engine(postgres_url, workflows=[wf]) as engine:
        execution_id = str(engine.start(wf, {}))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "UPDATE pipeline_executions SET claimed_by = 'me' WHERE id = %s", (execution_id,)
            )
            admin.execute(
                "UPDATE task_executions SET status = 'running', claimed_by = 'me'"
                " WHERE pipeline_execution_id = %s",
                (execution_id,),
            )
        errors: list[BaseException] = []

        def beat() -> None:
            try:
                with engine.store.transaction() as tx:
                    engine.runtime.repo.heartbeat(tx, "me", [execution_id], [], time.time())
            except BaseException as exc:
                errors.append(exc)

        with psycopg.connect(postgres_url) as finishing:  # one transaction, as the run's
            finishing.execute(
                "UPDATE task_executions SET status = 'completed' WHERE pipeline_execution_id = %s",
                (execution_id,),
            )
            beating = threading.Thread(target=beat)
            beating.start()
            time.sleep(0.3)  # the heartbeat now waits for the task row
            finishing.execute(
                "UPDATE pipeline_executions SET status = 'completed' WHERE id = %s",
                (execution_id,),
            )
            finishing.commit()
        beating.join(timeout=30)
        assert not beating.is_alive()
        assert not errors, errors
