"""The callbacks of a local or a remote step: one :class:`SagaOperation` a slot, each set once.

:class:`StepCallbacks` (``on_execute``, ``on_failure``) is mixed into ``LocalSagaStep``, and
:class:`ReplyCallbacks` (those two, then ``on_success``, ``on_error``) into ``RemoteSagaStep``
(both in ``durably.saga``). What a step holds, checks and hashes is here; what ties it to the
saga it belongs to (building the saga on, refusing changes once it is committed) stays with the
step classes, which the saga refers to in turn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .exceptions import (
    EmptySagaStepException,
    MultipleOnErrorException,
    MultipleOnExecuteException,
    MultipleOnFailureException,
    MultipleOnSuccessException,
    SagaException,
    UndefinedOnExecuteException,
)
from .saga_operation import Callback, SagaOperation, operation, signature_of

__all__ = ["ReplyCallbacks", "StepCallbacks"]


class StepCallbacks:
    """A step run by its callbacks: ``on_execute`` (required) and ``on_failure``."""

    kind: ClassVar[str]
    _slots: ClassVar[tuple[str, ...]] = ("on_execute_operation", "on_failure_operation")
    on_execute_operation: SagaOperation | None
    on_failure_operation: SagaOperation | None

    if TYPE_CHECKING:  # defined by SagaStep

        def _check_open(self) -> None: ...

    def _keep(self, **callbacks: Callback | SagaOperation | None) -> None:
        """Store the callbacks a constructor was given, by slot name."""
        for name, callback in callbacks.items():
            op = operation(callback, None, {}) if callback is not None else None
            setattr(self, f"{name}_operation", op)

    def _set(
        self,
        slot: str,
        error: type[SagaException],
        callback: Callback | SagaOperation,
        parameters: Mapping[str, Any] | None,
        kwargs: Mapping[str, Any],
    ) -> Self:
        self._check_open()
        if getattr(self, slot) is not None:
            raise error()
        setattr(self, slot, operation(callback, parameters, kwargs))
        return self

    def on_execute(
        self,
        callback: Callback | SagaOperation,
        parameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        return self._set(
            "on_execute_operation", MultipleOnExecuteException, callback, parameters, kwargs
        )

    def on_failure(
        self,
        callback: Callback | SagaOperation,
        parameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        return self._set(
            "on_failure_operation", MultipleOnFailureException, callback, parameters, kwargs
        )

    def operations(self) -> list[SagaOperation | None]:
        return [getattr(self, slot) for slot in self._slots]

    def _value(self) -> Any:
        return self.operations()

    def validate(self) -> None:
        if all(op is None for op in self.operations()):
            raise EmptySagaStepException()
        if self.on_execute_operation is None:
            raise UndefinedOnExecuteException()

    def signature(self) -> list[Any]:
        return [self.kind, *(signature_of(op) for op in self.operations())]

    def describe(self) -> str:
        op = self.on_execute_operation
        return f"{self.kind} {op.name}" if op else self.kind


class ReplyCallbacks(StepCallbacks):
    """A remote step's callbacks: ``on_execute`` returns the request, ``on_success`` or
    ``on_error`` takes the reply, ``on_failure`` returns the compensating request."""

    _slots = (
        "on_execute_operation",
        "on_success_operation",
        "on_error_operation",
        "on_failure_operation",
    )
    on_success_operation: SagaOperation | None
    on_error_operation: SagaOperation | None

    def on_success(
        self,
        callback: Callback | SagaOperation,
        parameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        return self._set(
            "on_success_operation", MultipleOnSuccessException, callback, parameters, kwargs
        )

    def on_error(
        self,
        callback: Callback | SagaOperation,
        parameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        return self._set(
            "on_error_operation", MultipleOnErrorException, callback, parameters, kwargs
        )
