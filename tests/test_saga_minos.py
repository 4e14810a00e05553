"""minos-microservice-saga code runs unchanged (SPEC §4): each test is written from minos'
public behaviour, not copied from its suite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import durably
from durably import (
    ConditionalSagaStep,
    DurablyError,
    ElseThenAlternative,
    IfThenAlternative,
    InMemoryBroker,
    LocalSagaStep,
    RemoteSagaStep,
    Saga,
    SagaContext,
    SagaExecution,
    SagaExecutionRepository,
    SagaManager,
    SagaOperation,
    SagaRequest,
    SagaResponse,
    SagaResponseStatus,
    SagaStatus,
)
from durably.exceptions import (
    AlreadyOnSagaException,
    EmptySagaException,
    EmptySagaStepException,
    MultipleElseThenException,
    SagaException,
    SagaExecutionAlreadyExecutedException,
    SagaExecutionException,
    SagaExecutionNotFoundException,
    SagaFailedCommitCallbackException,
    SagaFailedExecutionException,
    SagaFailedExecutionStepException,
    SagaNotDefinedException,
    SagaPausedExecutionStepException,
    SagaResponseException,
    SagaRollbackExecutionException,
    SagaRollbackExecutionStepException,
    SagaStepException,
    SagaStepExecutionException,
    UndefinedOnExecuteException,
)


def add_one(ctx: SagaContext) -> SagaContext:
    ctx["n"] = ctx.get("n", 0) + 1
    return ctx


def add(ctx: SagaContext, amount: int) -> SagaContext:
    ctx["n"] = ctx.get("n", 0) + amount
    return ctx


def is_big(ctx: SagaContext) -> bool:
    return bool(ctx["n"] > 10)


def reserve(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("minos-stock", {"n": ctx["n"]})


async def reserved(ctx: SagaContext, response: SagaResponse) -> SagaContext:
    ctx["reserved"] = (await response.content())["n"]  # minos' idiom: awaited
    return ctx


# -- messages ----------------------------------------------------------------------------------


def test_response_content_is_a_plain_call_and_can_be_awaited() -> None:
    response = SagaResponse({"a": 1})
    assert response.content() == {"a": 1}

    async def main() -> Any:
        return await response.content()

    assert asyncio.run(main()) == {"a": 1}
    assert asyncio.run(_await_request(SagaRequest("t", [1]))) == [1]


async def _await_request(request: SagaRequest) -> Any:
    return await request.content()


def test_response_takes_minos_positional_order() -> None:
    uuid = uuid4()
    response = SagaResponse({"x": 1}, {"billing"}, SagaResponseStatus.ERROR, uuid)
    assert response.status is SagaResponseStatus.ERROR  # not read as SUCCESS
    assert response.uuid == uuid
    assert response.related_services == {"billing"}
    assert SagaResponse({"x": 1}, None, 500).status is SagaResponseStatus.SYSTEM_ERROR
    # durably's own order still works, and so do keywords.
    assert SagaResponse({"x": 1}, SagaResponseStatus.ERROR, uuid) == response
    assert SagaResponse(content=1, status=400, uuid=str(uuid)).status is SagaResponseStatus.ERROR
    assert SagaResponse(None, None, None, None).status is SagaResponseStatus.SUCCESS
    with pytest.raises(TypeError, match="twice"):
        SagaResponse(1, None, 200, status=400)
    with pytest.raises(TypeError, match="status"):
        SagaResponse(1, None, "200")


def test_requests_and_responses_are_hashable_and_equal_by_value() -> None:
    first = SagaRequest("t", {"a": [1, {"b": 2}], "c": {3}})
    second = SagaRequest("t", {"c": {3}, "a": [1, {"b": 2}]})
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second, SagaRequest("u", 1)}) == 2
    uuid = uuid4()
    assert hash(SagaResponse({"a": 1}, status=400, uuid=uuid)) == hash(
        SagaResponse({"a": 1}, None, 400, uuid)
    )
    assert len({SagaResponse(1), SagaResponse(1), SagaResponse(2)}) == 2


# -- definitions -------------------------------------------------------------------------------


def test_saga_operation_with_parameters_is_accepted_where_a_callback_is() -> None:
    op = SagaOperation(add, amount=5)
    assert op.parameters == {"amount": 5}
    assert SagaOperation(add, parameters={"amount": 5}) == op
    assert SagaOperation(op) == op
    with pytest.raises(TypeError, match="callable"):
        SagaOperation("add")  # type: ignore[arg-type]
    saga = (
        Saga()
        .local_step(SagaOperation(add, amount=5))
        .on_failure(SagaOperation(add, amount=-5))
        .local_step()
        .on_execute(op)
        .conditional_step()
        .if_then(SagaOperation(is_big), Saga().local_step(SagaOperation(add, amount=100)).commit())
        .commit()
    )
    step = LocalSagaStep(on_execute=SagaOperation(add, amount=1))
    assert step.on_execute_operation == SagaOperation(add, amount=1)
    execution = SagaExecution.from_definition(saga, {"n": 1})
    context = asyncio.run(execution.execute())
    assert context["n"] == 111


def test_saga_takes_steps_and_committed() -> None:
    steps = [LocalSagaStep(add_one), RemoteSagaStep(reserve, reserved)]
    saga = Saga(steps=steps, committed=True)
    assert saga.committed
    assert saga.steps == steps
    assert all(step.saga is saga for step in steps)
    assert Saga(steps=[LocalSagaStep(add_one)]).committed is False
    with pytest.raises(AlreadyOnSagaException):
        Saga(steps=[steps[0]])
    with pytest.raises(TypeError):
        Saga(steps=[add_one])  # type: ignore[list-item]


def test_conditional_step_takes_alternatives_which_validate() -> None:
    big = Saga().local_step(SagaOperation(add, amount=100)).commit()
    small = Saga().local_step(add_one).commit()
    step = ConditionalSagaStep(
        if_then=[IfThenAlternative(is_big, big)], else_then=ElseThenAlternative(small)
    )
    assert step.if_then_alternatives == [IfThenAlternative(SagaOperation(is_big), big)]
    assert ConditionalSagaStep(if_then=IfThenAlternative(is_big, big)).if_then_alternatives
    IfThenAlternative(is_big, big).validate()
    ElseThenAlternative(small).validate()
    with pytest.raises(EmptySagaException):
        ElseThenAlternative(Saga()).validate()
    with pytest.raises(UndefinedOnExecuteException):
        IfThenAlternative(is_big, Saga(steps=[LocalSagaStep(on_failure=add_one)])).validate()
    with pytest.raises(TypeError):
        IfThenAlternative(is_big, "saga")  # type: ignore[arg-type]
    saga = Saga(steps=[LocalSagaStep(add_one), step], committed=True)
    assert asyncio.run(SagaExecution.from_definition(saga, {"n": 20}).execute())["n"] == 121
    assert asyncio.run(SagaExecution.from_definition(saga, {"n": 1}).execute())["n"] == 3


def test_a_step_without_a_saga_raises_saga_not_defined() -> None:
    with pytest.raises(SagaNotDefinedException):
        LocalSagaStep(add_one).commit()


def test_steps_and_sagas_compare_by_value() -> None:
    assert LocalSagaStep(add_one) == LocalSagaStep(add_one)
    assert LocalSagaStep(add_one) != LocalSagaStep(add_one, add_one)
    assert LocalSagaStep(add_one) != RemoteSagaStep(add_one)
    assert RemoteSagaStep(reserve, reserved) == RemoteSagaStep(reserve, reserved)

    def build() -> Saga:
        return (
            Saga()
            .local_step(add_one)
            .remote_step(reserve)
            .on_success(reserved)
            .conditional_step()
            .if_then(is_big, Saga().local_step(add_one).commit())
            .commit()
        )

    assert build() == build()
    assert hash(build()) == hash(build())
    assert build() != Saga().local_step(add_one).commit()


def test_executions_compare_by_value_also_after_store_and_load(tmp_path: Path) -> None:
    broker = InMemoryBroker()

    @broker.service("minos-stock")
    def stock(content: Any) -> Any:
        return content

    saga = Saga().local_step(add_one).remote_step(reserve).on_success(reserved).commit()
    repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/m.db")

    async def main() -> None:
        async with SagaManager(storage=repo, broker_pool=broker) as manager:
            uuid = await manager.run(saga, {"n": 1}, pause_on_disk=True, return_execution=False)
            paused = await repo.load(uuid)
            assert paused == await repo.load(uuid)
            await repo.store(paused)
            assert await repo.load(uuid) == paused
            listener = asyncio.create_task(manager.serve_replies())  # applies the queued reply
            for _ in range(200):
                if (await manager.get(uuid)).status is SagaStatus.Finished:
                    break
                await asyncio.sleep(0.01)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            done = await manager.get(uuid)
            assert done.status is SagaStatus.Finished
            assert done != paused
            assert done.context == {"n": 2, "reserved": 2}

    asyncio.run(main())


# -- the manager -------------------------------------------------------------------------------


def test_run_accepts_autocommit_and_the_manager_is_an_async_context_manager(
    tmp_path: Path,
) -> None:
    saga = Saga().local_step(add_one).commit()

    async def main() -> None:
        repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/m.db")
        async with SagaManager(storage=repo, broker_pool=InMemoryBroker()) as manager:
            for autocommit in (True, False):
                execution = await manager.run(saga, SagaContext(n=1), autocommit=autocommit)
                assert isinstance(execution, SagaExecution)
                assert execution.status is SagaStatus.Finished
                assert execution.context["n"] == 2

    asyncio.run(main())


def test_context_stores_a_method_name_written_as_an_attribute() -> None:
    ctx = SagaContext(foo=1)
    ctx.items = "bar"  # type: ignore[assignment,method-assign]
    assert ctx["items"] == "bar"
    assert callable(ctx.items)


# -- exceptions --------------------------------------------------------------------------------


MINOS_HIERARCHY = {
    "SagaStepException": ("SagaException",),
    "SagaNotDefinedException": ("SagaStepException",),
    "EmptySagaStepException": ("SagaStepException",),
    "MultipleOnExecuteException": ("SagaStepException",),
    "MultipleOnFailureException": ("SagaStepException",),
    "MultipleOnSuccessException": ("SagaStepException",),
    "MultipleOnErrorException": ("SagaStepException",),
    "MultipleElseThenException": ("SagaStepException",),
    "AlreadyOnSagaException": ("SagaStepException",),
    "UndefinedOnExecuteException": ("SagaStepException",),
    "EmptySagaException": ("SagaException",),
    "SagaNotCommittedException": ("SagaException",),
    "AlreadyCommittedException": ("SagaException",),
    "SagaExecutionException": ("SagaException",),
    "SagaExecutionNotFoundException": ("SagaExecutionException",),
    "SagaRollbackExecutionException": ("SagaExecutionException",),
    "SagaFailedExecutionException": ("SagaExecutionException",),
    "SagaExecutionAlreadyExecutedException": ("SagaExecutionException",),
    "SagaStepExecutionException": ("SagaException",),
    "SagaFailedExecutionStepException": (
        "SagaStepExecutionException",
        "SagaFailedExecutionException",
    ),
    "SagaPausedExecutionStepException": ("SagaStepExecutionException",),
    "SagaRollbackExecutionStepException": ("SagaStepExecutionException",),
    "SagaFailedCommitCallbackException": ("SagaFailedExecutionException",),
    "SagaResponseException": ("SagaException",),
}


@pytest.mark.parametrize("name", sorted(MINOS_HIERARCHY))
def test_minos_exception_names_keep_minos_hierarchy_under_durably_error(name: str) -> None:
    cls = getattr(durably, name)
    for parent in MINOS_HIERARCHY[name]:
        assert issubclass(cls, getattr(durably, parent)), (name, parent)
    assert issubclass(cls, SagaException)
    assert issubclass(cls, DurablyError)
    assert str(cls()) == (cls.__doc__ or "").strip()  # the docstring is its default message


def test_the_nine_new_names_are_those_minos_code_catches() -> None:
    new = [
        SagaStepException,
        SagaNotDefinedException,
        SagaExecutionException,
        SagaStepExecutionException,
        SagaFailedExecutionStepException,
        SagaPausedExecutionStepException,
        SagaRollbackExecutionStepException,
        SagaFailedCommitCallbackException,
        SagaResponseException,
    ]
    assert all(cls.__name__ in durably.__all__ for cls in new)
    assert issubclass(EmptySagaStepException, SagaStepException)
    assert issubclass(MultipleElseThenException, SagaStepException)
    assert issubclass(SagaExecutionNotFoundException, LookupError)
    assert issubclass(SagaExecutionAlreadyExecutedException, SagaExecutionException)
    assert issubclass(SagaRollbackExecutionException, SagaExecutionException)
    failure = SagaFailedExecutionException("boom", exception=ValueError("x"))
    assert isinstance(failure.exception, ValueError)  # minos' attribute name
