"""SagaExecutionRepository on both backends: one transaction per save, replies applied once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from durably.context import SagaContext
from durably.exceptions import ContextSerializationError, SagaExecutionNotFoundException
from durably.saga import Saga
from durably.saga_execution import SagaExecution, SagaStatus, SagaStepRecord, SagaStepStatus
from durably.saga_repository import SagaExecutionRepository


def noop(ctx: SagaContext) -> None:
    pass


SAGA = Saga("repo_test").local_step(noop).commit()


def new_execution(**context: object) -> SagaExecution:
    return SagaExecution.from_definition(SAGA, SagaContext(context))


def test_store_load_and_delete_round_trip(store_url: str) -> None:
    repo = SagaExecutionRepository(store_url)
    context = {
        "amount": Decimal("12.50"),
        "at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "ref": UUID(int=7),
        "pair": (1, 2),
    }
    execution = new_execution(**context)
    execution._records["0"] = SagaStepRecord("0", "local", "local noop", SagaStepStatus.Finished)
    execution.status = SagaStatus.Running

    async def main() -> None:
        await repo.store(execution)
        loaded = await repo.load(execution.uuid)
        assert loaded.uuid == execution.uuid
        assert loaded.definition is SAGA
        assert loaded.status is SagaStatus.Running
        assert loaded.context == context
        assert type(loaded.context["pair"]) is tuple
        assert loaded.steps == execution.steps
        assert await repo.load(str(execution.uuid)) is not loaded
        await repo.delete(execution.uuid)
        with pytest.raises(SagaExecutionNotFoundException):
            await repo.load(execution.uuid)

    asyncio.run(main())
    repo.close()


def test_context_and_state_are_one_row_each_written_together(store_url: str) -> None:
    repo = SagaExecutionRepository(store_url)
    execution = new_execution(n=1)
    assert repo.save(execution)
    before = repo.load_sync(execution.uuid).updated_at
    execution.context["n"] = 2
    execution.status = SagaStatus.Finished
    assert repo.save(execution)
    with repo.db.read() as tx:
        row = tx.fetch_one("saga_get_execution", {"id": str(execution.uuid)})
    assert row is not None
    assert str(row["context_id"]) == str(execution.uuid)
    assert row["status"] == "finished"
    assert json.loads(row["state"])["phase"] == "forward"
    summary = repo.load_sync(execution.uuid)
    assert summary.context == {"n": 2}
    assert summary.updated_at >= before
    repo.close()


def test_a_reply_key_is_applied_once(store_url: str) -> None:
    repo = SagaExecutionRepository(store_url)
    execution = new_execution(n=1)
    repo.save(execution)
    execution.context["n"] = 2
    assert repo.save(execution, "reply-1")
    execution.context["n"] = 3
    assert not repo.save(execution, "reply-1")  # a duplicate writes nothing
    assert repo.load_sync(execution.uuid).context == {"n": 2}
    asyncio.run(repo.delete(execution))  # its reply keys go with it
    assert repo.list_executions() == []
    repo.close()


def test_an_unstorable_context_writes_nothing() -> None:
    repo = SagaExecutionRepository("sqlite://:memory:")
    execution = new_execution(n=1)
    repo.save(execution)
    execution.context["bad"] = object()
    with pytest.raises(ContextSerializationError):
        repo.save(execution)
    assert repo.load_sync(execution.uuid).context == {"n": 1}


def test_list_and_summaries_for_the_cli(store_url: str) -> None:
    repo = SagaExecutionRepository(store_url)
    first, second = new_execution(i=1), new_execution(i=2)
    second.status = SagaStatus.Errored
    second.error = "step 0 (local noop) failed: ValueError: x"
    repo.save(first)
    repo.save(second)
    summaries = repo.list_executions()
    assert [s.id for s in summaries] == [second.uuid, first.uuid]  # newest first
    assert [s.id for s in repo.list_executions(status="errored")] == [second.uuid]
    assert [s.id for s in repo.list_executions(status=SagaStatus.Created)] == [first.uuid]
    assert len(repo.list_executions(limit=1)) == 1
    summary = repo.load_sync(second.uuid)
    assert summary.uuid == summary.id == second.uuid
    assert summary.saga_name == "repo_test"
    assert summary.fingerprint == SAGA.fingerprint
    assert summary.error == second.error
    assert summary.created_at.tzinfo is not None
    with pytest.raises(SagaExecutionNotFoundException):
        repo.load_sync(uuid4())
    repo.close()
