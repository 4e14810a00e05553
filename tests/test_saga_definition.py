"""Saga definitions: the builder, its errors where minos raises them, fingerprints, registry."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from durably.exceptions import (
    AlreadyCommittedException,
    AlreadyOnSagaException,
    EmptySagaException,
    EmptySagaStepException,
    MultipleElseThenException,
    MultipleOnErrorException,
    MultipleOnExecuteException,
    MultipleOnFailureException,
    MultipleOnSuccessException,
    SagaException,
    SagaNotCommittedException,
    UndefinedOnExecuteException,
)
from durably.saga import (
    ConditionalSagaStep,
    LocalSagaStep,
    RemoteSagaStep,
    Saga,
    register_saga,
    registered_saga,
    sagas_in,
)
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest
from durably.saga_repository import SagaExecutionRepository


def act(ctx: Any) -> None:
    ctx["acted"] = True


def undo(ctx: Any) -> None:
    pass


def request(ctx: Any) -> SagaRequest:
    return SagaRequest("svc", {})


def on_reply(ctx: Any, response: Any) -> None:
    pass


def is_big(ctx: Any) -> bool:
    return bool(ctx.get("big"))


def sub_saga() -> Saga:
    return Saga().local_step(act).commit()


def test_chained_builder_returns_the_saga_and_its_steps() -> None:
    premium, basic = sub_saga(), sub_saga()
    saga = (
        Saga()
        .local_step()
        .on_execute(act)
        .on_failure(undo)
        .remote_step()
        .on_execute(request)
        .on_success(on_reply)
        .on_error(on_reply)
        .on_failure(request)
        .conditional_step()
        .if_then(is_big, premium)
        .else_then(basic)
        .commit()
    )
    assert isinstance(saga, Saga)
    assert saga.committed
    kinds = [type(step) for step in saga.steps]
    assert kinds == [LocalSagaStep, RemoteSagaStep, ConditionalSagaStep]
    conditional = saga.steps[2]
    assert isinstance(conditional, ConditionalSagaStep)
    assert conditional.branch(0) is premium
    assert conditional.branch(-1) is basic
    saga.validate()


def test_minos_statement_style_and_callbacks_given_to_the_step_methods() -> None:
    saga = Saga()
    saga.local_step(act)
    saga.remote_step(request).on_success(on_reply)
    saga.commit()
    assert [step.describe() for step in saga.steps] == ["local act", "remote request"]


def test_parameters_are_passed_to_the_callback() -> None:
    seen: list[Any] = []

    def with_params(ctx: Any, factor: int, label: str) -> None:
        seen.append((factor, label))

    saga = Saga().local_step().on_execute(with_params, {"factor": 2}, label="x").commit()
    repo = SagaExecutionRepository("sqlite://:memory:")
    asyncio.run(SagaManager(storage=repo).run(definition=saga))
    assert seen == [(2, "x")]


def test_second_callback_of_one_kind_raises() -> None:
    local = Saga().local_step(act)
    with pytest.raises(MultipleOnExecuteException):
        local.on_execute(act)
    local.on_failure(undo)
    with pytest.raises(MultipleOnFailureException):
        local.on_failure(undo)
    remote = Saga().remote_step(request).on_success(on_reply).on_error(on_reply).on_failure(request)
    with pytest.raises(MultipleOnExecuteException):
        remote.on_execute(request)
    with pytest.raises(MultipleOnSuccessException):
        remote.on_success(on_reply)
    with pytest.raises(MultipleOnErrorException):
        remote.on_error(on_reply)
    with pytest.raises(MultipleOnFailureException):
        remote.on_failure(request)
    conditional = Saga().conditional_step().else_then(sub_saga())
    with pytest.raises(MultipleElseThenException):
        conditional.else_then(sub_saga())


def test_adding_after_commit_raises() -> None:
    saga = Saga().local_step(act).commit()
    with pytest.raises(AlreadyCommittedException):
        saga.local_step(act)
    with pytest.raises(AlreadyCommittedException):
        saga.remote_step(request)
    with pytest.raises(AlreadyCommittedException):
        saga.conditional_step()
    with pytest.raises(AlreadyCommittedException):
        saga.commit()
    step = saga.steps[0]
    assert isinstance(step, LocalSagaStep)
    with pytest.raises(AlreadyCommittedException):
        step.on_failure(undo)  # the fingerprint would no longer describe the saga


def test_a_step_on_two_sagas_raises() -> None:
    step = LocalSagaStep(act)
    Saga().local_step(step)
    with pytest.raises(AlreadyOnSagaException):
        Saga().local_step(step)
    with pytest.raises(TypeError):
        Saga().remote_step(LocalSagaStep(act))  # type: ignore[arg-type]


def test_empty_and_incomplete_steps_raise_when_the_chain_moves_on() -> None:
    with pytest.raises(EmptySagaStepException):
        Saga().local_step().local_step()
    with pytest.raises(EmptySagaStepException):
        Saga().remote_step().commit()
    with pytest.raises(UndefinedOnExecuteException):
        Saga().local_step().on_failure(undo).remote_step()
    with pytest.raises(UndefinedOnExecuteException):
        Saga().remote_step().on_success(on_reply).commit()
    with pytest.raises(EmptySagaStepException):
        Saga().conditional_step().commit()
    with pytest.raises(SagaNotCommittedException):
        Saga().conditional_step().if_then(is_big, Saga().local_step(act).saga).commit()  # type: ignore[arg-type]


def test_empty_or_uncommitted_saga_raises_at_run() -> None:
    repo = SagaExecutionRepository("sqlite://:memory:")
    manager = SagaManager(storage=repo)
    with pytest.raises(EmptySagaException):
        asyncio.run(manager.run(definition=Saga().commit()))
    uncommitted = Saga()
    uncommitted.local_step(act)
    with pytest.raises(SagaNotCommittedException):
        asyncio.run(manager.run(definition=uncommitted))
    incomplete = Saga()
    incomplete.local_step().on_failure(undo)  # not checked: the saga's own methods add steps
    incomplete.commit()
    with pytest.raises(UndefinedOnExecuteException):
        asyncio.run(manager.run(definition=incomplete))
    assert repo.list_executions() == []  # nothing half-written
    assert issubclass(EmptySagaException, SagaException)


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        Saga().local_step().on_execute("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Saga().conditional_step().if_then(is_big, "not a saga")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SagaRequest("", {})


def test_fingerprint_hashes_step_kinds_and_callback_names() -> None:
    one = Saga().local_step(act).remote_step(request).commit()
    same = Saga("another name").local_step(act).remote_step(request).commit()
    assert one.fingerprint == same.fingerprint  # the name is for display only
    assert len(one.fingerprint) == 16
    other_callback = Saga().local_step(undo).remote_step(request).commit()
    other_kind = Saga().local_step(act).local_step(act).commit()
    with_failure = Saga().local_step(act).on_failure(undo).remote_step(request).commit()
    fingerprints = {one.fingerprint, other_callback.fingerprint, other_kind.fingerprint}
    assert len(fingerprints | {with_failure.fingerprint}) == 4


def test_fingerprint_includes_nested_sagas() -> None:
    a = Saga().conditional_step().if_then(is_big, Saga().local_step(act).commit()).commit()
    b = Saga().conditional_step().if_then(is_big, Saga().local_step(undo).commit()).commit()
    assert a.fingerprint != b.fingerprint


def test_lambdas_on_different_lines_get_different_fingerprints() -> None:
    a = Saga().local_step(lambda ctx: None).commit()
    b = Saga().local_step(lambda ctx: None).commit()
    assert a.fingerprint != b.fingerprint
    partial = Saga().local_step(functools.partial(act)).commit()
    assert partial.fingerprint == Saga().local_step(act).commit().fingerprint


def test_commit_registers_under_the_fingerprint() -> None:
    saga = Saga().local_step(act).on_failure(act).commit()
    assert registered_saga(saga.fingerprint) is saga
    assert registered_saga("0" * 16) is None
    with pytest.raises(SagaNotCommittedException):
        register_saga(Saga())
    assert sagas_in([saga, Saga(), 3]) == [saga]


def test_default_name_is_the_building_function() -> None:
    assert Saga().name == f"{__name__}.test_default_name_is_the_building_function"
    assert Saga("orders").name == "orders"
    assert "orders" in repr(Saga("orders").local_step(act).saga)
