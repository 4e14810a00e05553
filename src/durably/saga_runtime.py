"""What a saga execution runs on: the runtime its manager gives it, the callbacks it calls and
the contexts they get and leave, and the exceptions that unwind a run (pause, step failure,
compensation failure).

Kept apart from :class:`~durably.saga_execution.SagaExecution` so that the forward run
(``saga_execution``) and the compensation (``saga_compensation``) share them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar
from uuid import UUID

from . import codec
from .context import SagaContext
from .saga import ConditionalSagaStep, SagaOperation, SagaStep
from .saga_messages import SagaRequest, SagaResponse
from .saga_records import PendingRequest
from .scope import ExecutionScope

__all__ = ["SagaRuntime"]

_E_contra = TypeVar("_E_contra", contravariant=True)


class SagaRuntime(Protocol[_E_contra]):
    """What an execution needs from its manager: durable saves and request/reply.

    Generic in the execution it saves: ``SagaExecution.execute`` takes a
    ``SagaRuntime[SagaExecution]``. The protocol is declared here, with what the run calls,
    and the execution class above it uses both."""

    async def save(self, execution: _E_contra, reply_key: str | None = None) -> bool:
        """Save the execution (its context too) in one transaction, recording ``reply_key`` as
        applied; return False, writing nothing, if that reply was applied already."""
        ...

    async def send(
        self, execution: _E_contra, request: PendingRequest, *, reply_key: str | None = None
    ) -> bool:
        """Save the execution, paused on ``request``, and queue the request in the same
        transaction (the outbox): it goes out if and only if that state is saved. Like
        ``save``, record ``reply_key`` and return False, writing nothing, if it was applied."""
        ...

    async def wait_reply(
        self, execution: _E_contra, request: PendingRequest
    ) -> SagaResponse | None:
        """The reply to ``request``, or None to pause the execution on disk."""
        ...


class Detached:
    """The runtime of an execution run on its own: no storage, no broker."""

    async def save(self, execution: object, reply_key: str | None = None) -> bool:
        return True

    async def send(
        self, execution: object, request: PendingRequest, *, reply_key: str | None = None
    ) -> bool:
        return True

    async def wait_reply(self, execution: object, request: PendingRequest) -> SagaResponse | None:
        return None


class Paused(Exception):
    """Unwinds the run: the execution is saved as paused, waiting for a reply."""


class StepFailed(Exception):
    def __init__(self, path: str, error: BaseException, own: bool, reply_key: str | None) -> None:
        super().__init__(path)
        self.path, self.error, self.own, self.reply_key = path, error, own, reply_key


class CompensationFailed(Exception):
    def __init__(self, error: BaseException, key: str | None = None) -> None:
        super().__init__(key)
        self.error, self.key = error, key


async def call(op: SagaOperation | None, *args: Any) -> Any:
    assert op is not None  # validate() guarantees the callbacks this is called with
    result = op.callback(*args, **op.parameters)
    if inspect.isawaitable(result):
        result = await result
    return result


async def choose(step: ConditionalSagaStep, ctx: SagaContext) -> int | None:
    for index, alternative in enumerate(step.if_then_alternatives):
        if await call(alternative.condition, ctx):
            return index
    return -1 if step.else_then_alternative is not None else None


def context_for(execution: UUID, context: SagaContext, path: str) -> SagaContext:
    """What a callback of step ``path`` gets: a deep copy of the context, so that a callback
    that fails after changing nested data changes nothing."""
    scope = ExecutionScope(execution, None, path)
    return SagaContext._from_data(context.to_dict(), scope)


def adopted(result: Any, ctx: SagaContext, max_bytes: int) -> SagaContext:
    """The context a callback leaves: the Context or dict it returned, else its mutated copy
    ``ctx``. Returning an exception fails the step; so does a context that cannot be saved."""
    if isinstance(result, BaseException):
        raise result
    new = SagaContext(result if isinstance(result, Mapping) else ctx)
    codec.dumps(new, max_bytes=max_bytes)
    return new


def request_of(result: Any) -> tuple[SagaRequest, str]:
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, SagaRequest):
        raise TypeError(f"a remote step callback must return a SagaRequest, not {result!r}")
    return result, codec.dumps_value(result.content())


def undo_operation(step: SagaStep) -> SagaOperation | None:
    return getattr(step, "on_failure_operation", None)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
