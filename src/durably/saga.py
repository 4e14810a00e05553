"""Saga definitions: the minos builder of local, remote and conditional steps.

``commit()`` freezes a saga and registers it in this process under its *fingerprint*: a hash of
its step kinds and of its callbacks' ``__module__`` and ``__qualname__`` (nested sagas
included). An execution stores the fingerprint, and a stored execution is resumed only with a
definition registered under it: nothing is ever imported from a name read from the database.

A local or remote step keeps its callbacks through the mixins of ``saga_callbacks``, each one a
``SagaOperation`` (``saga_operation``); the steps and the saga stay together here because each
refers to the other: a step goes on with its saga, and a conditional step holds sagas.
"""

from __future__ import annotations

import abc
import hashlib
import json
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .exceptions import (
    AlreadyCommittedException,
    AlreadyOnSagaException,
    EmptySagaException,
    EmptySagaStepException,
    MultipleElseThenException,
    SagaNotCommittedException,
    SagaNotDefinedException,
)
from .saga_callbacks import ReplyCallbacks, StepCallbacks
from .saga_operation import Callback, SagaOperation, signature_of
from .saga_operation import callable_name as callable_name  # still importable from here

__all__ = [
    "ConditionalSagaStep",
    "ElseThenAlternative",
    "IfThenAlternative",
    "LocalSagaStep",
    "RemoteSagaStep",
    "Saga",
    "SagaOperation",
    "SagaStep",
    "register_saga",
    "registered_saga",
    "sagas_in",
]

_S = TypeVar("_S", bound="SagaStep")


class SagaStep(abc.ABC):
    """A step of a saga. Its builder methods return the step; ``local_step()``,
    ``remote_step()``, ``conditional_step()`` and ``commit()`` check it and go on with the saga."""

    kind: ClassVar[str]

    def __init__(self, saga: Saga | None = None) -> None:
        self.saga = saga

    def local_step(
        self, step: Callback | SagaOperation | LocalSagaStep | None = None, **kw: Any
    ) -> LocalSagaStep:
        return self._continue().local_step(step, **kw)

    def remote_step(
        self, step: Callback | SagaOperation | RemoteSagaStep | None = None, **kw: Any
    ) -> RemoteSagaStep:
        return self._continue().remote_step(step, **kw)

    def conditional_step(self, step: ConditionalSagaStep | None = None) -> ConditionalSagaStep:
        return self._continue().conditional_step(step)

    def commit(self) -> Saga:
        return self._continue().commit()

    def _continue(self) -> Saga:
        self.validate()
        if self.saga is None:
            raise SagaNotDefinedException()
        return self.saga

    def __eq__(self, other: object) -> bool:
        # Value equality (minos): the kind and the callbacks, never the saga it belongs to.
        if not isinstance(other, SagaStep):
            return NotImplemented
        return type(self) is type(other) and self._value() == other._value()

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.signature())))

    @abc.abstractmethod
    def _value(self) -> Any:
        """What two equal steps have equal."""

    def _check_open(self) -> None:
        if self.saga is not None and self.saga.committed:
            raise AlreadyCommittedException("the saga is committed: its steps cannot change")

    @abc.abstractmethod
    def validate(self) -> None:
        """Raise the definition error that makes this step unusable, if any."""

    @abc.abstractmethod
    def signature(self) -> list[Any]:
        """What the fingerprint hashes for this step."""

    def describe(self) -> str:
        """``kind name`` for display, e.g. ``remote reserve_stock``."""
        return self.kind


class LocalSagaStep(StepCallbacks, SagaStep):
    """A step run in this process: ``on_execute(ctx)``, compensated by ``on_failure(ctx)``."""

    kind = "local"

    def __init__(
        self,
        on_execute: Callback | SagaOperation | None = None,
        on_failure: Callback | SagaOperation | None = None,
        saga: Saga | None = None,
    ) -> None:
        super().__init__(saga)
        self._keep(on_execute=on_execute, on_failure=on_failure)


class RemoteSagaStep(ReplyCallbacks, SagaStep):
    """A request to another service: ``on_execute(ctx)`` returns a ``SagaRequest``; the reply
    goes to ``on_success(ctx, response)`` or ``on_error(ctx, response)``; ``on_failure(ctx)``
    returns the compensating request."""

    kind = "remote"

    def __init__(
        self,
        on_execute: Callback | SagaOperation | None = None,
        on_success: Callback | SagaOperation | None = None,
        on_error: Callback | SagaOperation | None = None,
        on_failure: Callback | SagaOperation | None = None,
        saga: Saga | None = None,
    ) -> None:
        super().__init__(saga)
        self._keep(
            on_execute=on_execute,
            on_success=on_success,
            on_error=on_error,
            on_failure=on_failure,
        )


@dataclass(frozen=True)
class IfThenAlternative:
    """Run ``saga`` when ``condition(ctx)`` is true (a callback or a ``SagaOperation``)."""

    condition: SagaOperation
    saga: Saga

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition", SagaOperation(self.condition))
        _saga(self.saga)

    def validate(self) -> None:
        """Raise the definition error of the alternative's saga, if any."""
        self.saga.validate()


@dataclass(frozen=True)
class ElseThenAlternative:
    """Run ``saga`` when no ``if_then`` condition holds."""

    saga: Saga

    def __post_init__(self) -> None:
        _saga(self.saga)

    def validate(self) -> None:
        """Raise the definition error of the alternative's saga, if any."""
        self.saga.validate()


class ConditionalSagaStep(SagaStep):
    """Runs the saga of the first ``if_then`` whose condition holds, else the ``else_then``
    saga (or nothing), inline and on the same context."""

    kind = "conditional"

    def __init__(
        self,
        saga: Saga | None = None,
        *,
        if_then: IfThenAlternative | Iterable[IfThenAlternative] | None = None,
        else_then: ElseThenAlternative | None = None,
    ) -> None:
        super().__init__(saga)
        if isinstance(if_then, IfThenAlternative):
            if_then = [if_then]
        alternatives = list(if_then or ())
        for alternative in alternatives:
            if not isinstance(alternative, IfThenAlternative):
                raise TypeError(f"if_then takes IfThenAlternative objects, not {alternative!r}")
        if else_then is not None and not isinstance(else_then, ElseThenAlternative):
            raise TypeError(f"else_then takes an ElseThenAlternative, not {else_then!r}")
        self.if_then_alternatives: list[IfThenAlternative] = alternatives
        self.else_then_alternative: ElseThenAlternative | None = else_then

    def if_then(self, condition: Callback | SagaOperation, saga: Saga) -> ConditionalSagaStep:
        self._check_open()
        self.if_then_alternatives.append(IfThenAlternative(SagaOperation(condition), saga))
        return self

    def _value(self) -> Any:
        return [self.if_then_alternatives, self.else_then_alternative]

    def else_then(self, saga: Saga) -> ConditionalSagaStep:
        self._check_open()
        if self.else_then_alternative is not None:
            raise MultipleElseThenException()
        self.else_then_alternative = ElseThenAlternative(_saga(saga))
        return self

    def branch(self, index: int) -> Saga:
        """The saga of ``if_then`` number ``index``, or of ``else_then`` for ``-1``."""
        if index == -1 and self.else_then_alternative is not None:
            return self.else_then_alternative.saga
        return self.if_then_alternatives[index].saga

    def validate(self) -> None:
        if not self.if_then_alternatives and self.else_then_alternative is None:
            raise EmptySagaStepException()
        for alternative in self.if_then_alternatives:
            alternative.saga.validate()
        if self.else_then_alternative is not None:
            self.else_then_alternative.saga.validate()

    def signature(self) -> list[Any]:
        branches = [
            [signature_of(alt.condition), alt.saga.signature()] for alt in self.if_then_alternatives
        ]
        other = self.else_then_alternative
        return [self.kind, branches, other.saga.signature() if other else None]


def _saga(value: Any) -> Saga:
    if not isinstance(value, Saga):
        raise TypeError(f"a conditional step runs a Saga, not {type(value).__name__}")
    return value


class Saga:
    """A sequence of steps. Build it, then ``commit()`` it before it runs.

    ``name`` is for display; by default it names the module and function that built it.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        steps: Iterable[SagaStep] | None = None,
        committed: bool = False,
    ) -> None:
        self.steps: list[SagaStep] = []
        self.committed = False
        self.name = name or _caller_name()
        self._fingerprint: str | None = None
        for step in steps or ():
            if not isinstance(step, SagaStep):
                raise TypeError(f"a saga's steps are SagaStep objects, not {step!r}")
            self._add(type(step), step)
        if committed:
            self.commit()  # minos' Saga(steps=..., committed=True): ready to run and resume

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, steps={[step.describe() for step in self.steps]})"

    def __eq__(self, other: object) -> bool:
        # Value equality (minos): same steps, same commit state; the display name aside.
        if not isinstance(other, Saga):
            return NotImplemented
        return self.committed == other.committed and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def local_step(
        self, step: Callback | SagaOperation | LocalSagaStep | None = None, **parameters: Any
    ) -> LocalSagaStep:
        """Add a local step; ``step`` may be its ``on_execute`` callback or a step."""
        if step is not None and not isinstance(step, SagaStep):
            step = LocalSagaStep().on_execute(step, **parameters)
        return self._add(LocalSagaStep, step)

    def remote_step(
        self, step: Callback | SagaOperation | RemoteSagaStep | None = None, **parameters: Any
    ) -> RemoteSagaStep:
        """Add a remote step; ``step`` may be its ``on_execute`` callback or a step."""
        if step is not None and not isinstance(step, SagaStep):
            step = RemoteSagaStep().on_execute(step, **parameters)
        return self._add(RemoteSagaStep, step)

    def conditional_step(self, step: ConditionalSagaStep | None = None) -> ConditionalSagaStep:
        """Add a conditional step; chain ``if_then(condition, saga)`` and ``else_then(saga)``."""
        return self._add(ConditionalSagaStep, step)

    def _add(self, cls: type[_S], step: SagaStep | None) -> _S:
        if self.committed:
            raise AlreadyCommittedException("a committed saga cannot get more steps")
        if step is None:
            step = cls()
        elif not isinstance(step, cls):
            raise TypeError(f"expected a {cls.__name__}, got {type(step).__name__}")
        elif step.saga is not None:
            raise AlreadyOnSagaException()
        step.saga = self
        self.steps.append(step)
        return step

    def commit(self) -> Saga:
        """Freeze the saga and register it in this process under its fingerprint."""
        if self.committed:
            raise AlreadyCommittedException("the saga is already committed")
        self.committed = True
        self._fingerprint = self._hash()
        register_saga(self)
        return self

    def validate(self) -> None:
        """Raise the definition error that stops this saga from running, if any."""
        if not self.steps:
            raise EmptySagaException()
        for step in self.steps:
            step.validate()
        if not self.committed:
            raise SagaNotCommittedException()

    def signature(self) -> list[Any]:
        return [step.signature() for step in self.steps]

    @property
    def fingerprint(self) -> str:
        """A hex hash of the step kinds and the callbacks' qualified names."""
        return self._fingerprint or self._hash()

    def _hash(self) -> str:
        text = json.dumps(self.signature(), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _caller_name() -> str:
    frame = sys._getframe(2)  # the code that called Saga()
    module = frame.f_globals.get("__name__", "saga")
    function = frame.f_code.co_qualname
    return module if function == "<module>" else f"{module}.{function}"


# -- the registry of committed definitions ----------------------------------------------------

_registry: dict[str, Saga] = {}
_registry_lock = threading.Lock()


def register_saga(saga: Saga) -> Saga:
    """Make ``saga`` resumable in this process (``commit()`` does it)."""
    if not isinstance(saga, Saga):
        raise TypeError(f"expected a Saga, got {type(saga).__name__}")
    if not saga.committed:
        raise SagaNotCommittedException()
    with _registry_lock:
        _registry[saga.fingerprint] = saga
    return saga


def registered_saga(fingerprint: str) -> Saga | None:
    """The committed saga of that fingerprint, if this process has one."""
    return _registry.get(fingerprint)


def sagas_in(values: Iterable[Any]) -> list[Saga]:
    """The committed sagas among ``values`` (e.g. a module's top-level names)."""
    return [value for value in values if isinstance(value, Saga) and value.committed]
