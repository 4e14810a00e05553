"""``await manager.rollback(uuid)`` and ``durably cancel ID`` on a saga (SPEC §4), the rule
for a remote step's own compensation, step names, and the outbox's own guarantees."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from durably import (
    InMemoryBroker,
    Saga,
    SagaContext,
    SagaExecution,
    SagaExecutionRepository,
    SagaManager,
    SagaRequest,
    SagaResponse,
    SagaStatus,
    SagaStepStatus,
)
from durably.backends import open_store
from durably.broker import Message
from durably.cli import cli as durably_cli
from durably.exceptions import SagaExecutionAlreadyExecutedException, ServiceError
from tests import saga_cancel_app


def repo_at(tmp_path: Path) -> SagaExecutionRepository:
    return SagaExecutionRepository(f"sqlite:///{tmp_path}/r.db")


class FlakyBroker(InMemoryBroker):
    """Refuses every publish while ``down``."""

    down = True

    async def publish(self, message: Message) -> None:
        if self.down:
            raise OSError("down")
        await super().publish(message)


def three_step_saga(undone: list[str]) -> Saga:
    def undo_local(ctx: SagaContext) -> None:
        undone.append("local")

    def undo_remote(ctx: SagaContext) -> SagaRequest:
        undone.append("remote")
        return SagaRequest("rb-refunds", {"refund": ctx["charged"]})

    def charged(ctx: SagaContext, response: SagaResponse) -> None:
        ctx["charged"] = response.content()["charge"]

    return (
        Saga()
        .local_step(lambda ctx: None)
        .on_failure(undo_local)
        .remote_step(lambda ctx: SagaRequest("rb-payments", {"amount": 5}))
        .on_success(charged)
        .on_failure(undo_remote)
        .remote_step(lambda ctx: SagaRequest("rb-never", {}))  # nobody answers: stays paused
        .on_failure(lambda ctx: undone.append("never") or SagaRequest("rb-refunds", {}))
        .commit()
    )


def participants() -> tuple[InMemoryBroker, list[Any]]:
    broker = InMemoryBroker()
    seen: list[Any] = []

    @broker.service("rb-payments")
    def payments(content: Any) -> Any:
        seen.append(("pay", content))
        return {"charge": "C-1"}

    @broker.service("rb-refunds")
    def refunds(content: Any) -> Any:
        seen.append(("refund", content))
        return {"ok": True}

    return broker, seen


def test_rollback_compensates_a_paused_execution_in_reverse_order(tmp_path: Path) -> None:
    undone: list[str] = []
    saga = three_step_saga(undone)
    broker, seen = participants()
    repo = repo_at(tmp_path)

    async def main() -> None:
        async with SagaManager(repo, broker) as manager:
            listener = asyncio.create_task(manager.serve_replies())
            uuid = await manager.run(saga, {}, pause_on_disk=True, return_execution=False)
            for _ in range(300):
                execution = await manager.get(uuid)
                if execution.pending is not None and execution.pending.path == "2":
                    break
                await asyncio.sleep(0.01)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            assert execution.status is SagaStatus.Paused
            rolled = await manager.rollback(uuid)
            assert rolled.status is SagaStatus.Errored
            assert undone == ["remote", "local"]  # reverse order; the unanswered step not at all
            assert seen == [("pay", {"amount": 5}), ("refund", {"refund": "C-1"})]
            stored = await manager.get(uuid)
            assert stored == rolled
            statuses = [step.status for step in stored.steps]
            assert statuses == [
                SagaStepStatus.Compensated,
                SagaStepStatus.Compensated,
                SagaStepStatus.ErroredByOnExecute,
            ]
            assert stored.error == "rolled back on request"
            assert repo.outbox_count(uuid) == 0
            with pytest.raises(SagaExecutionAlreadyExecutedException):
                await manager.rollback(uuid)

    asyncio.run(main())


def test_rollback_of_a_run_waiting_in_memory_ends_that_run(tmp_path: Path) -> None:
    undone: list[str] = []
    saga = three_step_saga(undone)
    broker, _ = participants()
    repo = repo_at(tmp_path)

    async def main() -> None:
        async with SagaManager(repo, broker) as manager:
            running = asyncio.create_task(manager.run(saga, {}, timeout=20))
            for _ in range(300):
                found = repo.list_executions()
                if found and found[0].steps and found[0].steps[-1].path == "2":
                    break
                await asyncio.sleep(0.01)
            rolled = await manager.rollback(found[0].id)
            assert rolled.status is SagaStatus.Errored
            execution = await running  # the waiting run returns what the rollback saved
            assert isinstance(execution, SagaExecution)
            assert execution.status is SagaStatus.Errored
            assert undone == ["remote", "local"]

    asyncio.run(main())


def test_durably_cancel_rolls_a_saga_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    repo = SagaExecutionRepository(url)

    async def start() -> Any:
        async with SagaManager(repo, InMemoryBroker()) as manager:
            return await manager.run(
                saga_cancel_app.saga, {"order": 9}, pause_on_disk=True, return_execution=False
            )

    uuid = asyncio.run(start())
    result = CliRunner().invoke(
        durably_cli, ["cancel", str(uuid), "-m", "tests.saga_cancel_app", "--db", url, "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "errored"
    summary = repo.load_sync(uuid)
    assert summary.status is SagaStatus.Errored
    assert summary.context["unbooked"] is True
    assert repo.outbox_count(uuid) == 0  # the unanswered request is not sent any more
    again = CliRunner().invoke(
        durably_cli, ["cancel", str(uuid), "-m", "tests.saga_cancel_app", "--db", url]
    )
    assert again.exit_code != 0
    assert "errored" in again.output
    assert "Traceback" not in again.output
    repo.close()


# -- names, the own-compensation rule ------------------------------------------------------------


def test_a_lambda_remote_step_is_named_after_its_target(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    broker.service("rb-inventory")(lambda content: content)
    saga = Saga().remote_step(lambda ctx: SagaRequest("rb-inventory", {})).commit()
    repo = repo_at(tmp_path)

    async def main() -> None:
        async with SagaManager(repo, broker) as manager:
            execution = await manager.run(saga, {})
            assert isinstance(execution, SagaExecution)
            assert [step.name for step in execution.steps] == ["remote rb-inventory"]

    asyncio.run(main())
    assert [s.name for s in repo.list_executions()[0].steps] == ["remote rb-inventory"]


# -- outbox and inbox ----------------------------------------------------------------------------


def test_a_request_left_by_a_dead_manager_is_relayed_with_the_shared_reply_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durably import saga_outbox

    saga = Saga().remote_step(lambda ctx: SagaRequest("rb-late", {"n": 1})).commit()
    repo = repo_at(tmp_path)

    class Down(InMemoryBroker):
        async def publish(self, message: Message) -> None:
            raise OSError("down")

    async def first_process() -> Any:
        monkeypatch.setattr(saga_outbox, "LEASE", 0.2)
        manager = SagaManager(repo, Down())
        with pytest.raises(Exception, match="unreachable"):
            await manager.run(saga, {}, timeout=0.3)
        await manager.close()  # "dies": its private reply queue is gone with it
        return repo.list_executions()[0].id

    uuid = asyncio.run(first_process())
    assert repo.outbox_count(uuid) == 1
    broker = InMemoryBroker()
    got: list[Any] = []
    broker.service("rb-late")(lambda content: got.append(content) or {"ok": 1})

    async def worker() -> None:
        async with SagaManager(repo, broker) as manager:
            listener = asyncio.create_task(manager.serve_replies())
            for _ in range(500):
                if repo.load_sync(uuid).status is SagaStatus.Finished:
                    break
                await asyncio.sleep(0.01)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    time.sleep(0.3)  # the first relay's lease runs out
    asyncio.run(worker())
    assert got == [{"n": 1}]
    assert repo.load_sync(uuid).status is SagaStatus.Finished
    assert repo.outbox_count(uuid) == 0


def test_resume_sends_the_request_again_and_the_inbox_answers_it(tmp_path: Path) -> None:
    saga = Saga().remote_step(lambda ctx: SagaRequest("rb-charge", {"n": 1})).commit()
    repo = repo_at(tmp_path)
    inbox = open_store(f"sqlite:///{tmp_path}/inbox.db")
    broker = InMemoryBroker()
    calls: list[Any] = []

    def charge(content: Any) -> Any:
        calls.append(content)
        return {"charge": len(calls)}

    broker.service("rb-charge")(charge)

    async def main() -> None:
        await broker.start_services(store=inbox)
        async with SagaManager(repo, broker) as manager:
            uuid = await manager.run(saga, {}, pause_on_disk=True, return_execution=False)
            await broker.join()  # answered; the reply waits on the shared topic, unapplied
            # A crashed process is resumed: the same request (key and token) goes out again.
            execution = await manager.resume(uuid, timeout=5)
            assert isinstance(execution, SagaExecution)
            assert execution.status is SagaStatus.Finished
            assert calls == [{"n": 1}]  # the handler ran once; the inbox answered the copy

    try:
        asyncio.run(main())
    finally:
        inbox.close()


def test_saga_storage_does_not_block_the_event_loop(tmp_path: Path) -> None:
    repo = repo_at(tmp_path)
    saga = Saga().local_step(lambda ctx: None).commit()
    execution = SagaExecution.from_definition(saga, {})
    gate = threading.Event()
    original = repo._write

    def slow_write(*args: Any, **kwargs: Any) -> bool:
        gate.wait(5)  # a database that stalls
        return original(*args, **kwargs)

    repo._write = slow_write  # type: ignore[method-assign]

    async def main() -> None:
        saving = asyncio.create_task(repo.store(execution))
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0.005)
            ticks += 1  # the loop keeps running while the save waits
        assert ticks == 10
        assert not saving.done()
        gate.set()
        await saving

    asyncio.run(main())
    assert repo.load_sync(execution.uuid).status is SagaStatus.Created


def test_the_readme_rejected_payment_idiom_compensates_the_earlier_steps(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    sent: list[tuple[str, Any]] = []

    def service(name: str, reply: Any = None, reject: bool = False) -> None:
        def handle(content: Any) -> Any:
            sent.append((name, content))
            if reject:
                raise ServiceError({"reason": "card declined"})
            return reply

        broker.service(name)(handle)

    service("readme-stock", {"reservation": "R-1"})
    service("readme-release", {"released": True})
    service("readme-pay", reject=True)
    service("readme-refund", {"refunded": True})

    def reserved(ctx: SagaContext, response: SagaResponse) -> None:
        ctx["reservation"] = response.content()["reservation"]

    def payment_rejected(ctx: SagaContext, response: SagaResponse) -> Exception:
        return ValueError(f"payment rejected: {response.content()['reason']}")

    saga = (
        Saga()
        .remote_step(lambda ctx: SagaRequest("readme-stock", {"order": 1}))
        .on_success(reserved)
        .on_failure(lambda ctx: SagaRequest("readme-release", {"r": ctx["reservation"]}))
        .remote_step(lambda ctx: SagaRequest("readme-pay", {"order": 1}))
        .on_error(payment_rejected)
        .on_failure(lambda ctx: SagaRequest("readme-refund", {"order": 1}))
        .commit()
    )

    async def main() -> None:
        async with SagaManager(repo_at(tmp_path), broker) as manager:
            execution = await manager.run(saga, {}, raise_on_error=False)
            assert isinstance(execution, SagaExecution)
            assert execution.status is SagaStatus.Errored
            assert "payment rejected: card declined" in (execution.error or "")

    asyncio.run(main())
    assert [name for name, _ in sent] == ["readme-stock", "readme-pay", "readme-release"]


def test_a_request_published_for_a_saga_paused_on_disk_leaves_no_row(tmp_path: Path) -> None:
    # The process may exit as soon as run() returns: a row left behind would be published a
    # second time by a worker once its lease ran out.
    saga = Saga().remote_step(lambda ctx: SagaRequest("rb-nobody", {})).commit()
    repo = repo_at(tmp_path)
    broker = InMemoryBroker()

    async def main() -> Any:
        manager = SagaManager(repo, broker)  # never closed, as scripts often do
        return await manager.run(saga, {}, pause_on_disk=True, return_execution=False)

    uuid = asyncio.run(main())
    assert broker.pending("rb-nobody") == 1
    assert repo.outbox_count(uuid) == 0


def test_a_manager_used_from_two_event_loops_sends_what_failed_in_the_first(
    tmp_path: Path,
) -> None:
    saga = Saga().remote_step(lambda ctx: SagaRequest("rb-two-loops", {})).commit()
    repo = repo_at(tmp_path)

    broker = FlakyBroker()
    manager = SagaManager(repo, broker)

    async def first() -> Any:
        return await manager.run(saga, {}, pause_on_disk=True, return_execution=False)

    async def second() -> Any:
        uuid = await manager.run(saga, {}, pause_on_disk=True, return_execution=False)
        for _ in range(200):
            if broker.pending("rb-two-loops") == 2:
                break
            await asyncio.sleep(0.01)
        await manager.close()
        return uuid

    failed = asyncio.run(first())  # the loop ends while the relay still retries
    assert repo.outbox_count(failed) == 1
    broker.down = False
    asyncio.run(second())
    assert broker.pending("rb-two-loops") == 2
    assert repo.outbox_count(failed) == 0


def test_a_relay_closed_while_it_deletes_a_published_row_deletes_it_before_returning(
    tmp_path: Path,
) -> None:
    # close() cancels the relay's retry task; cancelled while its row's delete runs on the
    # store's thread, the task no longer waited for it, and close() returned with the row
    # still there (the full suite once saw it so): sent again after its lease.
    saga = Saga().remote_step(lambda ctx: SagaRequest("rb-close-delete", {})).commit()
    repo = repo_at(tmp_path)

    broker = FlakyBroker()
    manager = SagaManager(repo, broker)
    relay = manager.relay
    deleting, release = threading.Event(), threading.Event()
    delete = relay._delete_published

    def slow_delete(ids: list[str]) -> None:
        if not deleting.is_set():
            deleting.set()
            release.wait(10)
        delete(ids)

    relay._delete_published = slow_delete  # type: ignore[method-assign]

    async def scenario() -> Any:
        failed = await manager.run(saga, {}, pause_on_disk=True, return_execution=False)
        assert repo.outbox_count(failed) == 1
        broker.down = False
        relay.start()  # the retry, now that the broker answers
        for _ in range(500):
            if deleting.is_set():
                break
            await asyncio.sleep(0.01)
        assert deleting.is_set(), "the retry never published"
        threading.Timer(0.3, release.set).start()
        await manager.close()
        return failed

    failed = asyncio.run(scenario())
    assert broker.pending("rb-close-delete") == 1
    assert repo.outbox_count(failed) == 0


# -- what a saga costs -------------------------------------------------------------------------


def test_a_three_step_saga_costs_three_transactions(tmp_path: Path) -> None:
    # The first step's state and request, the first reply with the second request, the second
    # reply with the end: a state change is saved with the next request or at the end.
    broker = InMemoryBroker()
    broker.service("cost-a")(lambda content: {"a": 1})
    broker.service("cost-b")(lambda content: {"b": 2})
    saga = (
        Saga()
        .local_step(lambda ctx: None)
        .remote_step(lambda ctx: SagaRequest("cost-a", {}))
        .remote_step(lambda ctx: SagaRequest("cost-b", {}))
        .commit()
    )
    repo = repo_at(tmp_path)

    async def main() -> None:
        async with SagaManager(repo, broker) as manager:
            await manager.run(saga, {})  # warm-up
            repo.db.stats.reset()
            execution = await manager.run(saga, {})
            assert isinstance(execution, SagaExecution)
            assert execution.status is SagaStatus.Finished
            assert repo.db.stats.transactions == 3

    asyncio.run(main())


def test_what_led_to_a_local_step_is_saved_before_it_runs(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    broker.service("before-local")(lambda content: {"ok": True})
    repo = repo_at(tmp_path)
    seen: list[Any] = []

    def act(ctx: SagaContext) -> None:
        [summary] = repo.list_executions()
        seen.append([(step.path, step.status) for step in summary.steps])

    saga = (
        Saga()
        .remote_step(lambda ctx: SagaRequest("before-local", {}))
        .on_success(lambda ctx, response: None)
        .local_step(act)
        .commit()
    )

    async def main() -> None:
        async with SagaManager(repo, broker) as manager:
            await manager.run(saga, {})

    asyncio.run(main())
    assert seen == [[("0", SagaStepStatus.Finished)]]
