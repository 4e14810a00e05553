"""Structured logs (SPEC §8): every record durably emits, in a saga run and a worker run, is
under ``durably.*`` and carries ``execution_id``, ``workflow``, ``task``, ``attempt`` and
``action``; ``durably worker`` writes them to stderr, as JSON lines with ``--json``."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from durably import Engine, RetryPolicy, TaskHandle, Workflow
from durably.broker import InMemoryBroker
from durably.cli_logging import JsonLines, worker_logs
from durably.context import SagaContext
from durably.exceptions import SagaFailedExecutionException
from durably.saga import Saga
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest, SagaResponse
from durably.saga_repository import SagaExecutionRepository

from .conftest import unique

FIELDS = ("execution_id", "workflow", "task", "attempt", "action")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[list[logging.LogRecord]]:
    """Every record of the ``durably`` logger tree, DEBUG included."""
    handler, root = Collect(), logging.getLogger("durably")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def assert_structured(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert record.name == "durably" or record.name.startswith("durably."), record.name
        missing = [name for name in FIELDS if name not in record.__dict__]
        assert not missing, f"{record.name}: {record.getMessage()!r} lacks {missing}"
        assert isinstance(record.__dict__["action"], str)
        assert record.__dict__["action"]


def reserve(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("stock", {"n": ctx.n})


def reserved(ctx: SagaContext, response: SagaResponse) -> None:
    ctx.reserved = response.content()


def cancel(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("stock", {"cancel": True})


def pay(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("bank", {"n": ctx.n})


def test_a_saga_run_logs_only_structured_records(
    collected: list[logging.LogRecord], tmp_path: Any
) -> None:
    saga = (
        Saga(unique("saga"))
        .remote_step(reserve)
        .on_success(reserved)
        .on_failure(cancel)
        .remote_step(pay)
        .commit()
    )
    fine = Saga(unique("saga")).remote_step(reserve).on_success(reserved).on_failure(cancel)
    fine = fine.commit()
    broker = InMemoryBroker()

    @broker.service("stock")
    def stock(content: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    @broker.service("bank")
    def bank(content: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the bank is closed")  # SYSTEM_ERROR: compensates the first step

    async def main() -> None:
        repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/s.db")
        async with SagaManager(storage=repo, broker_pool=broker) as manager:
            with pytest.raises(SagaFailedExecutionException):
                await manager.run(definition=saga, context={"n": 1})
        async with SagaManager(storage=repo, broker_pool=InMemoryBroker()) as nobody:
            paused = await nobody.run(
                definition=fine, context={"n": 2}, pause_on_disk=True, return_execution=False
            )
            await nobody.rollback(paused)
        repo.close()

    asyncio.run(main())
    actions = {record.__dict__.get("action") for record in collected}
    assert {"saga_participant_failed", "saga_rollback"} <= actions
    failed = next(r for r in collected if r.__dict__.get("action") == "saga_participant_failed")
    assert failed.__dict__["execution_id"] is not None
    assert failed.__dict__["task"] == "1"  # the step path
    assert_structured(collected)


def test_a_worker_run_logs_only_structured_records(
    collected: list[logging.LogRecord], store_url: str
) -> None:
    wf = Workflow(unique("fields"))

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False))
    def flaky(ctx: Any, handle: TaskHandle) -> None:
        handle.logger.info("attempt %d", handle.attempt)
        if handle.attempt == 1:
            raise RuntimeError("once")

    @wf.task(dependencies=["flaky"])
    def broken(ctx: Any) -> None:
        raise ValueError("always")

    with Engine(store_url, workflows=[wf]) as engine:
        worker = engine.worker(concurrency=2, poll_interval=0.05)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            result = engine.wait(engine.start(wf), timeout=30)
        finally:
            worker.stop()
            if engine.store.dialect == "postgres":
                with engine.store.transaction() as tx:
                    engine.runtime.repo.notify_work(tx)
            thread.join(timeout=15)
        engine.run(wf)  # and in process
    assert result.status == "failed"
    actions = {record.__dict__["action"] for record in collected}
    assert {"task_claimed", "task_retry", "task_completed", "task_failed", "task_log"} <= actions
    assert {"worker_started", "worker_stopped", "execution_failed"} <= actions
    claimed = next(r for r in collected if r.__dict__["action"] == "task_claimed")
    assert claimed.__dict__["execution_id"] == str(result.execution_id)
    assert claimed.__dict__["workflow"] == wf.name
    assert claimed.__dict__["attempt"] == 1
    assert_structured(collected)


def test_worker_logs_go_to_stderr_as_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # logging not configured
    logger = logging.getLogger("durably.worker")
    with worker_logs("INFO", as_json=True):
        logger.debug("not shown", extra={"action": "x"})
        logger.info(
            "claimed %s", "t", extra={"action": "task_claimed", "task": "t", "execution_id": "e"}
        )
    logger.info("after: not shown", extra={"action": "x"})
    [line] = err.getvalue().splitlines()
    data = json.loads(line)
    assert data["message"] == "claimed t"
    assert data["level"] == "INFO"
    assert data["logger"] == "durably.worker"
    assert {k: data[k] for k in ("execution_id", "workflow", "task", "attempt", "action")} == {
        "execution_id": "e",
        "workflow": None,
        "task": "t",
        "attempt": None,
        "action": "task_claimed",
    }


def test_worker_logs_leave_an_applications_logging_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    with worker_logs("INFO", as_json=False):
        logging.getLogger("durably.worker").warning("x", extra={"action": "x"})
    assert err.getvalue() == ""


def test_json_lines_keep_extras_and_the_traceback() -> None:
    try:
        raise KeyError("k")
    except KeyError:
        record = logging.LogRecord("durably.x", logging.ERROR, __file__, 1, "m", (), None)

        record.exc_info = sys.exc_info()
    record.__dict__.update(action="a", topic="orders")
    data = json.loads(JsonLines().format(record))
    assert data["topic"] == "orders"
    assert data["action"] == "a"
    assert data["execution_id"] is None
    assert "KeyError: 'k'" in data["exception"]
