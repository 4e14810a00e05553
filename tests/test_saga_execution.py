"""Running sagas: callback rules, replies by status, compensation (SPEC §4, minos semantics)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from durably.broker import InMemoryBroker
from durably.context import Context, SagaContext
from durably.exceptions import (
    ContextSerializationError,
    ContextTooLargeError,
    SagaException,
    SagaExecutionAlreadyExecutedException,
    SagaFailedExecutionException,
    SagaRollbackExecutionException,
    ServiceError,
)
from durably.saga import Saga
from durably.saga_execution import SagaExecution, SagaStatus, SagaStepStatus
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest, SagaResponse, SagaResponseStatus
from durably.saga_repository import SagaExecutionRepository


@pytest.fixture
def repo() -> Iterator[SagaExecutionRepository]:
    repository = SagaExecutionRepository("sqlite://:memory:")
    yield repository
    repository.close()


@pytest.fixture
def broker() -> InMemoryBroker:
    """Participants: "echo" replies with what it got, "reject" with ERROR, "crash" with
    SYSTEM_ERROR; every request is recorded in ``broker.calls``."""
    broker = InMemoryBroker()
    broker.calls = []  # type: ignore[attr-defined]

    @broker.service("echo")
    def echo(content: Any) -> Any:
        broker.calls.append(("echo", content))  # type: ignore[attr-defined]
        return content

    @broker.service("reject")
    async def reject(content: Any) -> Any:
        broker.calls.append(("reject", content))  # type: ignore[attr-defined]
        raise ServiceError({"why": "rejected"})

    @broker.service("crash")
    def crash(content: Any) -> Any:
        broker.calls.append(("crash", content))  # type: ignore[attr-defined]
        raise RuntimeError("participant bug")

    return broker


@pytest.fixture
def manager(repo: SagaExecutionRepository, broker: InMemoryBroker) -> SagaManager:
    return SagaManager(storage=repo, broker_pool=broker)


def run(manager: SagaManager, saga: Saga, context: Any = None, **kw: Any) -> SagaExecution:
    execution = asyncio.run(manager.run(definition=saga, context=context, **kw))
    assert isinstance(execution, SagaExecution)
    return execution


def fail(manager: SagaManager, saga: Saga, context: Any = None) -> SagaFailedExecutionException:
    with pytest.raises(SagaFailedExecutionException) as info:
        run(manager, saga, context)
    return info.value


def stored(repo: SagaExecutionRepository, execution: SagaExecution) -> SagaExecution:
    return repo.load_execution(execution.uuid)


# -- local steps -----------------------------------------------------------------------------


@pytest.mark.parametrize("returned", [None, True, "ok", 42, False, 0, ["x"]])
def test_local_step_returning_none_or_a_non_context_keeps_the_mutated_copy(
    manager: SagaManager, returned: Any
) -> None:
    def step(ctx: SagaContext) -> Any:
        ctx.touched = True
        return returned

    execution = run(manager, Saga().local_step(step).commit(), {"a": 1})
    assert execution.status is SagaStatus.Finished
    assert execution.context == {"a": 1, "touched": True}


@pytest.mark.parametrize("kind", [Context, SagaContext, dict])
def test_local_step_returning_a_context_or_dict_replaces_it(
    manager: SagaManager, kind: Any
) -> None:
    def step(ctx: SagaContext) -> Any:
        ctx.ignored = True
        return kind({"fresh": 1})

    execution = run(manager, Saga().local_step(step).commit(), {"a": 1})
    assert execution.context == {"fresh": 1}
    assert type(execution.context) is SagaContext


def test_local_step_returning_an_exception_fails_it(
    manager: SagaManager, repo: SagaExecutionRepository
) -> None:
    def step(ctx: SagaContext) -> Exception:
        ctx.half_done = True
        return ValueError("not valid")

    saga = Saga().local_step(step).commit()
    error = fail(manager, saga, {"a": 1})
    assert isinstance(error.__cause__, ValueError)
    assert "not valid" in str(error)
    [execution] = repo.list_executions()
    assert execution.context == {"a": 1}
    assert execution.status is SagaStatus.Errored
    assert execution.steps[0].status is SagaStepStatus.ErroredOnExecute
    assert execution.steps[0].error == "ValueError: not valid"


def test_callbacks_get_a_deep_copy_and_a_failure_changes_nothing(
    manager: SagaManager, repo: SagaExecutionRepository
) -> None:
    seen: list[SagaContext] = []

    def first(ctx: SagaContext) -> None:
        ctx["order"]["items"].append("pen")

    def second(ctx: SagaContext) -> None:
        seen.append(ctx)
        ctx["order"]["items"].append("lamp")  # nested data of a copy
        ctx["status"] = "shipping"
        raise RuntimeError("boom")

    saga = Saga().local_step(first).local_step(second).commit()
    fail(manager, saga, {"order": {"items": ["book"]}})
    [summary] = repo.list_executions()
    assert summary.context == {"order": {"items": ["book", "pen"]}}
    assert dict(seen[0]) == {"order": {"items": ["book", "pen", "lamp"]}, "status": "shipping"}


def test_callbacks_see_their_execution_in_the_scope(manager: SagaManager) -> None:
    scopes: list[Any] = []

    def step(ctx: SagaContext) -> None:
        scopes.append(ctx.scope)

    execution = run(manager, Saga().local_step(step).local_step(step).commit())
    assert [(s.execution_id, s.task_name) for s in scopes] == [
        (execution.uuid, "0"),
        (execution.uuid, "1"),
    ]
    assert execution.context.scope is None


def test_async_callbacks_everywhere(manager: SagaManager, broker: InMemoryBroker) -> None:
    async def local(ctx: SagaContext) -> None:
        await asyncio.sleep(0)
        ctx.local = True

    async def ask(ctx: SagaContext) -> SagaRequest:
        return SagaRequest("echo", {"n": 1})

    async def answered(ctx: SagaContext, response: SagaResponse) -> dict[str, Any]:
        return {**ctx, "answer": response.content()["n"]}

    async def big(ctx: SagaContext) -> bool:
        return True

    inner = Saga().local_step(local).commit()
    saga = (
        Saga().remote_step(ask).on_success(answered).conditional_step().if_then(big, inner).commit()
    )
    execution = run(manager, saga)
    assert execution.context == {"answer": 1, "local": True}


def test_unstorable_context_fails_the_step_before_anything_is_saved(
    manager: SagaManager, repo: SagaExecutionRepository
) -> None:
    def bad(ctx: SagaContext) -> None:
        ctx.callback = lambda: None

    error = fail(manager, Saga().local_step(bad).commit(), {"a": 1})
    assert isinstance(error.__cause__, ContextSerializationError)
    assert repo.list_executions()[0].context == {"a": 1}

    def huge(ctx: SagaContext) -> None:
        ctx.blob = "x" * 2_000_000

    error = fail(manager, Saga().local_step(huge).commit())
    assert isinstance(error.__cause__, ContextTooLargeError)


def test_unstorable_initial_context_writes_nothing(
    manager: SagaManager, repo: SagaExecutionRepository
) -> None:
    with pytest.raises(ContextSerializationError):
        run(manager, Saga().local_step(lambda ctx: None).commit(), {"sock": object()})
    assert repo.list_executions() == []


# -- remote steps ----------------------------------------------------------------------------


def test_success_reply_goes_to_on_success(manager: SagaManager, broker: InMemoryBroker) -> None:
    replies: list[SagaResponse] = []

    def ask(ctx: SagaContext) -> SagaRequest:
        ctx.ignored = "mutations of a request callback are not kept"
        return SagaRequest("echo", {"order": ctx.order_id})

    def answered(ctx: SagaContext, response: SagaResponse) -> None:
        replies.append(response)
        ctx.echoed = response.content()

    execution = run(manager, Saga().remote_step(ask).on_success(answered).commit(), {"order_id": 7})
    assert execution.context == {"order_id": 7, "echoed": {"order": 7}}
    assert replies[0].status is SagaResponseStatus.SUCCESS
    assert replies[0].uuid == execution.uuid
    assert execution.steps[0].status is SagaStepStatus.Finished
    assert broker.calls == [("echo", {"order": 7})]  # type: ignore[attr-defined]


def test_error_reply_goes_to_on_error(manager: SagaManager) -> None:
    def rejected(ctx: SagaContext, response: SagaResponse) -> SagaContext:
        assert response.status is SagaResponseStatus.ERROR
        return SagaContext(ctx, rejection=response.content())

    saga = (
        Saga()
        .remote_step(lambda ctx: SagaRequest("reject", {}))
        .on_success(lambda ctx, r: None)
        .on_error(rejected)
        .commit()
    )
    execution = run(manager, saga)
    assert execution.context == {"rejection": {"why": "rejected"}}
    assert execution.status is SagaStatus.Finished


def test_error_reply_without_on_error_keeps_the_context(manager: SagaManager) -> None:
    # minos: a missing handler leaves the context as it is and the step finishes.
    saga = Saga().remote_step(lambda ctx: SagaRequest("reject", {})).commit()
    execution = run(manager, saga, {"a": 1})
    assert execution.status is SagaStatus.Finished
    assert execution.context == {"a": 1}


def test_system_error_reply_fails_the_step_without_its_own_compensation(
    manager: SagaManager, broker: InMemoryBroker
) -> None:
    undone: list[str] = []
    saga = (
        Saga()
        .local_step(lambda ctx: None)
        .on_failure(lambda ctx: undone.append("first"))
        .remote_step(lambda ctx: SagaRequest("crash", {"n": 1}))
        .on_failure(lambda ctx: SagaRequest("echo", {"undo": "crash"}))
        .commit()
    )
    error = fail(manager, saga)
    assert isinstance(error.__cause__, SagaException)
    assert "SYSTEM_ERROR" in str(error)
    assert "participant bug" in str(error)
    assert undone == ["first"]
    assert broker.calls == [("crash", {"n": 1})]  # type: ignore[attr-defined]


def test_failing_success_handler_sends_the_steps_own_on_failure_first(
    manager: SagaManager, broker: InMemoryBroker
) -> None:
    order: list[str] = []

    def handler(ctx: SagaContext, response: SagaResponse) -> Exception:
        return RuntimeError("cannot use the reply")

    def undo_remote(ctx: SagaContext) -> SagaRequest:
        order.append("remote")
        return SagaRequest("echo", {"undo": "echo"})

    saga = (
        Saga()
        .local_step(lambda ctx: None)
        .on_failure(lambda ctx: order.append("local"))
        .remote_step(lambda ctx: SagaRequest("echo", {"do": 1}))
        .on_success(handler)
        .on_failure(undo_remote)
        .commit()
    )
    error = fail(manager, saga)
    assert isinstance(error.__cause__, RuntimeError)
    assert order == ["remote", "local"]
    assert broker.calls[-1] == ("echo", {"undo": "echo"})  # type: ignore[attr-defined]
    [summary] = manager.storage.list_executions()
    step = summary.steps[1]
    assert step.status is SagaStepStatus.Compensated
    assert step.error == "RuntimeError: cannot use the reply"


def test_a_rejected_request_is_not_compensated_by_its_own_on_failure(
    manager: SagaManager, broker: InMemoryBroker
) -> None:
    # The rule: a step's own on_failure undoes what its participant did, so it is sent only
    # after a SUCCESS reply. After an ERROR reply (the participant rejected the request and did
    # nothing) a failing on_error compensates the earlier steps alone.
    order: list[str] = []

    def rejected(ctx: SagaContext, response: SagaResponse) -> Exception:
        return RuntimeError(f"payment rejected: {response.content()['why']}")

    saga = (
        Saga()
        .local_step(lambda ctx: None)
        .on_failure(lambda ctx: order.append("local"))
        .remote_step(lambda ctx: SagaRequest("reject", {"do": 1}))
        .on_error(rejected)
        .on_failure(lambda ctx: order.append("remote") or SagaRequest("echo", {"undo": 1}))
        .commit()
    )
    error = fail(manager, saga)
    assert isinstance(error.__cause__, RuntimeError)
    assert order == ["local"]
    assert ("echo", {"undo": 1}) not in broker.calls  # type: ignore[attr-defined]
    [summary] = manager.storage.list_executions()
    assert summary.status is SagaStatus.Errored
    assert summary.steps[1].status is SagaStepStatus.ErroredOnError


def test_remote_callback_must_return_a_request(manager: SagaManager) -> None:
    error = fail(manager, Saga().remote_step(lambda ctx: {"target": "echo"}).commit())
    assert isinstance(error.__cause__, TypeError)
    error = fail(manager, Saga().remote_step(lambda ctx: SagaRequest("echo", object())).commit())
    assert isinstance(error.__cause__, ContextSerializationError)


# -- compensation ----------------------------------------------------------------------------


def test_executed_steps_are_compensated_in_reverse_order_with_the_current_context(
    manager: SagaManager, broker: InMemoryBroker
) -> None:
    log: list[tuple[str, dict[str, Any]]] = []

    def step(name: str) -> Any:
        def do(ctx: SagaContext) -> None:
            ctx[name] = True

        do.__qualname__ = f"do_{name}"
        return do

    def undo(name: str) -> Any:
        def compensate(ctx: SagaContext) -> None:
            log.append((name, dict(ctx)))
            ctx[f"undone_{name}"] = True

        compensate.__qualname__ = f"undo_{name}"
        return compensate

    def undo_remote(ctx: SagaContext) -> SagaRequest:
        log.append(("remote", dict(ctx)))
        return SagaRequest("echo", {"release": ctx.reserved})

    def boom(ctx: SagaContext) -> None:
        raise RuntimeError("last step fails")

    saga = (
        Saga()
        .local_step(step("a"))
        .on_failure(undo("a"))
        .remote_step(lambda ctx: SagaRequest("echo", {"reserve": 1}))
        .on_success(lambda ctx, r: SagaContext(ctx, reserved=r.content()["reserve"]))
        .on_failure(undo_remote)
        .local_step(step("b"))  # no compensation
        .local_step(step("c"))
        .on_failure(undo("c"))
        .local_step(boom)
        .on_failure(undo("boom"))  # the failing step itself is not compensated
        .commit()
    )
    error = fail(manager, saga)
    assert error.rollback_errors == []
    assert [name for name, _ in log] == ["c", "remote", "a"]
    assert log[0][1] == {"a": True, "reserved": 1, "b": True, "c": True}
    assert log[1][1]["undone_c"] is True  # each compensation sees the one before
    assert broker.calls[-1] == ("echo", {"release": 1})  # type: ignore[attr-defined]
    [summary] = manager.storage.list_executions()
    assert summary.status is SagaStatus.Errored
    assert [s.status for s in summary.steps] == [
        SagaStepStatus.Compensated,
        SagaStepStatus.Compensated,
        SagaStepStatus.Finished,
        SagaStepStatus.Compensated,
        SagaStepStatus.ErroredOnExecute,
    ]
    assert summary.context["undone_a"] is True


def test_a_failing_compensation_is_recorded_and_the_others_still_run(
    manager: SagaManager, broker: InMemoryBroker
) -> None:
    ran: list[str] = []

    def undo_a(ctx: SagaContext) -> None:
        ran.append("a")

    def undo_b(ctx: SagaContext) -> None:
        ran.append("b")
        raise OSError("cannot undo b")

    saga = (
        Saga()
        .local_step(lambda ctx: None)
        .on_failure(undo_a)
        .local_step(lambda ctx: None)
        .on_failure(undo_b)
        .remote_step(lambda ctx: SagaRequest("echo", {}))
        .on_failure(lambda ctx: SagaRequest("reject", {"undo": "c"}))
        .local_step(lambda ctx: 1 / 0)
        .commit()
    )
    error = fail(manager, saga)
    assert ran == ["b", "a"]
    assert len(error.rollback_errors) == 2
    rejected, failed = error.rollback_errors
    assert isinstance(rejected, SagaRollbackExecutionException)
    assert "ERROR" in str(rejected)
    assert isinstance(failed, OSError)
    assert "cannot undo b" in str(error)
    assert isinstance(error.__cause__, ZeroDivisionError)

    execution = run(manager, saga, raise_on_error=False)
    assert execution.status is SagaStatus.Errored
    assert len(execution.rollback_errors) == 2
    assert [s.status for s in execution.steps] == [
        SagaStepStatus.Compensated,
        SagaStepStatus.ErroredOnFailure,
        SagaStepStatus.ErroredOnFailure,
        SagaStepStatus.ErroredOnExecute,
    ]


def test_return_execution_false_returns_the_uuid(manager: SagaManager) -> None:
    uuid = asyncio.run(
        manager.run(definition=Saga().local_step(lambda ctx: None).commit(), return_execution=False)
    )
    assert asyncio.run(manager.get(uuid)).status is SagaStatus.Finished


def test_a_finished_execution_cannot_run_again(manager: SagaManager) -> None:
    execution = run(manager, Saga().local_step(lambda ctx: None).commit())
    with pytest.raises(SagaExecutionAlreadyExecutedException):
        asyncio.run(manager.resume(execution.uuid))


# -- conditional steps -----------------------------------------------------------------------


def branch(label: str) -> Saga:
    def mark(ctx: SagaContext) -> None:
        ctx.setdefault("path", []).append(label)

    mark.__qualname__ = f"mark_{label}"
    return Saga().local_step(mark).commit()


@pytest.mark.parametrize(
    ("tier", "expected"), [("gold", ["gold"]), ("silver", ["silver"]), ("none", ["basic"])]
)
def test_conditional_runs_the_first_matching_branch_inline(
    manager: SagaManager, tier: str, expected: list[str]
) -> None:
    def is_gold(ctx: SagaContext) -> bool:
        ctx.mutated_by_condition = True
        return bool(ctx.tier == "gold")

    def is_precious(ctx: SagaContext) -> bool:
        return ctx.tier in ("gold", "silver")

    saga = (
        Saga()
        .conditional_step()
        .if_then(is_gold, branch("gold"))
        .if_then(is_precious, branch("silver"))
        .else_then(branch("basic"))
        .local_step(lambda ctx: ctx.path.append("after"))
        .commit()
    )
    execution = run(manager, saga, {"tier": tier})
    assert execution.context == {"tier": tier, "path": [*expected, "after"]}
    assert [s.path for s in execution.steps] == ["0", "0.0", "1"]


def test_conditional_without_a_match_or_else_runs_nothing(manager: SagaManager) -> None:
    saga = Saga().conditional_step().if_then(lambda ctx: False, branch("x")).commit()
    execution = run(manager, saga, {"a": 1})
    assert execution.context == {"a": 1}
    assert execution.steps[0].branch is None
    assert execution.status is SagaStatus.Finished


def test_failure_inside_a_branch_compensates_inner_then_outer_steps(
    manager: SagaManager, broker: InMemoryBroker
) -> None:
    order: list[str] = []
    inner = (
        Saga()
        .remote_step(lambda ctx: SagaRequest("echo", {"inner": 1}))
        .on_failure(lambda ctx: order.append("inner remote") or SagaRequest("echo", {"undo": 1}))
        .local_step(lambda ctx: 1 / 0)
        .commit()
    )
    saga = (
        Saga()
        .local_step(lambda ctx: None)
        .on_failure(lambda ctx: order.append("outer"))
        .conditional_step()
        .if_then(lambda ctx: True, inner)
        .local_step(lambda ctx: order.append("never"))
        .commit()
    )
    fail(manager, saga)
    assert order == ["inner remote", "outer"]
    [summary] = manager.storage.list_executions()
    assert [(s.path, s.status) for s in summary.steps] == [
        ("0", SagaStepStatus.Compensated),
        ("1", SagaStepStatus.ErroredByOnExecute),
        ("1.0", SagaStepStatus.Compensated),
        ("1.1", SagaStepStatus.ErroredOnExecute),
    ]


def test_a_failing_condition_fails_the_step(manager: SagaManager) -> None:
    saga = Saga().conditional_step().if_then(lambda ctx: ctx.missing, branch("x")).commit()
    error = fail(manager, saga)
    assert isinstance(error.__cause__, AttributeError)


def test_an_execution_runs_on_its_own_without_storage_or_broker() -> None:
    def ask(ctx: SagaContext) -> SagaRequest:
        return SagaRequest("inventory", {"order": ctx.order_id})

    def answered(ctx: SagaContext, response: SagaResponse) -> None:
        ctx.reservation = response.content()

    saga = Saga().local_step(lambda ctx: ctx.update(valid=True)).remote_step(ask)
    saga = saga.on_success(answered).commit()
    execution = SagaExecution.from_definition(saga, SagaContext(order_id=1))
    context = asyncio.run(execution.execute())
    assert execution.status is SagaStatus.Paused
    assert context == {"order_id": 1, "valid": True}
    assert execution.pending is not None
    assert (execution.pending.target, execution.pending.body) == ("inventory", '{"order":1}')
    context = asyncio.run(execution.execute(SagaResponse("R-1", uuid=execution.uuid)))
    assert execution.status is SagaStatus.Finished
    assert context == {"order_id": 1, "valid": True, "reservation": "R-1"}
    with pytest.raises(SagaExecutionAlreadyExecutedException):
        asyncio.run(execution.execute())
