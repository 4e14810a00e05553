"""A saga execution and the algorithm that runs it, with minos semantics.

Steps run in order; a conditional step runs its chosen sub-saga inline, its steps numbered under
it ("2.0", "2.1"). Every callback gets a deep copy of the context, so a failing one leaves the
context unchanged. After each step the execution is saved (context and step status in one
transaction, see ``SagaRuntime.save``); before a request goes out it is saved as paused with
that request, so a reply can never arrive before the state that expects it, and a crashed
process can be resumed from the last finished step.

On a failure the finished steps are compensated in reverse order. The failing step is not,
except a remote step whose ``on_success``/``on_error`` failed: its own ``on_failure`` runs
first. A failed compensation is recorded and the others still run.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID, uuid4

from . import codec
from .context import ExecutionScope, SagaContext
from .exceptions import (
    SagaException,
    SagaExecutionAlreadyExecutedException,
    SagaFailedExecutionException,
    SagaRollbackExecutionException,
)
from .saga import ConditionalSagaStep, LocalSagaStep, RemoteSagaStep, Saga, SagaOperation, SagaStep
from .saga_messages import SagaRequest, SagaResponse, SagaResponseStatus
from .saga_records import (
    COMPENSATING,
    FORWARD,
    PendingRequest,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
)

__all__ = [
    "PendingRequest",
    "SagaExecution",
    "SagaRuntime",
    "SagaStatus",
    "SagaStepRecord",
    "SagaStepStatus",
]

MAX_CONTEXT_BYTES = 1024 * 1024


class SagaRuntime(Protocol):
    """What an execution needs from its manager: durable saves and request/reply."""

    async def save(self, execution: SagaExecution, reply_key: str | None = None) -> bool:
        """Save the execution (its context too) in one transaction, recording ``reply_key`` as
        applied; return False, writing nothing, if that reply was applied already."""
        ...

    async def send(self, execution: SagaExecution, request: PendingRequest) -> None:
        """Save the execution, paused on ``request``, and queue the request in the same
        transaction (the outbox): it goes out if and only if that state is saved."""
        ...

    async def wait_reply(
        self, execution: SagaExecution, request: PendingRequest
    ) -> SagaResponse | None:
        """The reply to ``request``, or None to pause the execution on disk."""
        ...


class _Detached:
    """The runtime of an execution run on its own: no storage, no broker."""

    async def save(self, execution: SagaExecution, reply_key: str | None = None) -> bool:
        return True

    async def send(self, execution: SagaExecution, request: PendingRequest) -> None:
        pass

    async def wait_reply(
        self, execution: SagaExecution, request: PendingRequest
    ) -> SagaResponse | None:
        return None


class _Paused(Exception):
    """Unwinds the run: the execution is saved as paused, waiting for a reply."""


class _StepFailed(Exception):
    def __init__(self, path: str, error: BaseException, own: bool, reply_key: str | None) -> None:
        super().__init__(path)
        self.path, self.error, self.own, self.reply_key = path, error, own, reply_key


class _CompensationFailed(Exception):
    def __init__(self, error: BaseException, key: str | None = None) -> None:
        super().__init__(key)
        self.error, self.key = error, key


class SagaExecution:
    """One run of a saga: its uuid, definition, context, status and steps."""

    max_context_bytes = MAX_CONTEXT_BYTES

    def __init__(
        self,
        definition: Saga,
        uuid: UUID,
        context: Mapping[str, Any] | None = None,
        status: SagaStatus = SagaStatus.Created,
        *,
        records: list[SagaStepRecord] | None = None,
        phase: str = FORWARD,
        pending: PendingRequest | None = None,
        compensations: list[str] | None = None,
        error: str | None = None,
        rollback_errors: list[str] | None = None,
        created_at: datetime | None = None,
        updated_at: datetime | None = None,
    ) -> None:
        definition.validate()
        self.definition = definition
        self.uuid = uuid
        self.context = SagaContext(context or {})
        self.status = SagaStatus(status)
        self.phase = phase
        self.pending = pending
        self.compensations = list(compensations or [])
        self.error = error
        self.rollback_errors = list(rollback_errors or [])
        self.created_at = created_at or datetime.now(UTC)
        self.updated_at = updated_at or self.created_at
        self._records = {record.path: record for record in records or []}
        self._runtime: SagaRuntime | None = None
        self._response: SagaResponse | None = None
        self._cause: BaseException | None = None
        self._raised: dict[str, BaseException] = {}  # failed compensations' exceptions, by message

    @classmethod
    def from_definition(
        cls, definition: Saga, context: Mapping[str, Any] | None = None, uuid: UUID | None = None
    ) -> SagaExecution:
        """A new execution of ``definition``; raises the definition's errors."""
        return cls(definition, uuid or uuid4(), context)

    def __repr__(self) -> str:
        return f"SagaExecution({self.uuid}, {self.saga_name!r}, {self.status.value})"

    @property
    def saga_name(self) -> str:
        return self.definition.name

    @property
    def fingerprint(self) -> str:
        return self.definition.fingerprint

    @property
    def steps(self) -> list[SagaStepRecord]:
        """The steps started so far, in the order they started."""
        return list(self._records.values())

    @property
    def paused_step(self) -> SagaStepRecord | None:
        return self._records[self.pending.path] if self.pending else None

    # -- persistence -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything but the context and status, as plain JSON data."""
        return {
            "steps": [record.to_state() for record in self._records.values()],
            "phase": self.phase,
            "pending": asdict(self.pending) if self.pending else None,
            "compensations": self.compensations,
            "error": self.error,
            "rollback_errors": self.rollback_errors,
        }

    @classmethod
    def from_state(
        cls,
        definition: Saga,
        uuid: UUID,
        context: Mapping[str, Any],
        status: SagaStatus,
        state: Mapping[str, Any],
        created_at: datetime | None = None,
        updated_at: datetime | None = None,
    ) -> SagaExecution:
        """Rebuild an execution saved with :meth:`state`."""
        pending = state.get("pending")
        return cls(
            definition,
            uuid,
            context,
            status,
            records=[SagaStepRecord.from_state(step) for step in state.get("steps", [])],
            phase=state.get("phase", FORWARD),
            pending=PendingRequest(**pending) if pending else None,
            compensations=state.get("compensations"),
            error=state.get("error"),
            rollback_errors=state.get("rollback_errors"),
            created_at=created_at,
            updated_at=updated_at,
        )

    # -- running ---------------------------------------------------------------------------

    async def execute(
        self, response: SagaResponse | None = None, *, runtime: SagaRuntime | None = None
    ) -> SagaContext:
        """Run until the saga finishes, errors or pauses; ``response`` is the reply the paused
        step waits for. Raises ``SagaFailedExecutionException`` once compensated.

        ``SagaManager`` passes the ``runtime`` that saves each step and carries requests.
        Without one nothing is saved, and a remote step pauses with its request in
        :attr:`pending`, for the caller to deliver and answer with ``execute(response)``."""
        if self.status in (SagaStatus.Finished, SagaStatus.Errored):
            raise SagaExecutionAlreadyExecutedException(
                f"saga execution {self.uuid} is {self.status.value}: it cannot run again"
            )
        self._runtime, self._response = runtime or _Detached(), response
        self.status = SagaStatus.Running
        try:
            if self.phase == FORWARD:
                try:
                    await self._run_saga(self.definition, "")
                except _StepFailed as failure:
                    self._plan_compensation(failure)
                    await self._save(failure.reply_key)
                else:
                    self.status = SagaStatus.Finished
                    await self._save()
                    return self.context
            await self._compensate()
            self.status = SagaStatus.Errored
            await self._save()
        except _Paused:
            return self.context
        finally:
            self._runtime = self._response = None
        raise self._failed()

    async def _run_saga(self, saga: Saga, prefix: str) -> None:
        for index, step in enumerate(saga.steps):
            path = f"{prefix}.{index}" if prefix else str(index)
            record = self._records.get(path)
            if record is not None and record.status is SagaStepStatus.Finished:
                continue  # done before a pause or a crash
            if isinstance(step, LocalSagaStep):
                await self._run_local(path, step)
            elif isinstance(step, RemoteSagaStep):
                await self._run_remote(path, step)
            else:
                assert isinstance(step, ConditionalSagaStep)
                await self._run_conditional(path, step)

    async def _run_local(self, path: str, step: LocalSagaStep) -> None:
        record = self._record(path, step)
        ctx = self._copy(path)
        try:
            self.context = self._adopt(await _call(step.on_execute_operation, ctx), ctx)
        except Exception as exc:
            raise self._fail(record, SagaStepStatus.ErroredOnExecute, exc) from None
        record.status = SagaStepStatus.Finished
        await self._save()

    async def _run_remote(self, path: str, step: RemoteSagaStep) -> None:
        record = self._record(path, step)
        if record.status is not SagaStepStatus.PausedByOnExecute:
            try:
                request, body = _request(await _call(step.on_execute_operation, self._copy(path)))
            except Exception as exc:
                raise self._fail(record, SagaStepStatus.ErroredOnExecute, exc) from None
            if step.on_execute_operation is not None and step.on_execute_operation.anonymous:
                record.name = f"{step.kind} {request.target}"  # says more than "<lambda>"
            await self._send(record, "execute", request.target, body)
        response, key, target = await self._reply()
        if response.status is SagaResponseStatus.SYSTEM_ERROR:
            error = SagaException(f"{target} replied SYSTEM_ERROR: {response.content()!r}")
            raise self._fail(record, SagaStepStatus.ErroredByOnExecute, error, reply_key=key)
        op = step.on_success_operation if response.ok else step.on_error_operation
        if op is not None:
            ctx = self._copy(path)
            try:
                self.context = self._adopt(await _call(op, ctx, response), ctx)
            except Exception as exc:
                status = (
                    SagaStepStatus.ErroredOnSuccess
                    if response.ok
                    else SagaStepStatus.ErroredOnError
                )
                # The step's own compensation runs only when the participant fulfilled the
                # request (SUCCESS): after an ERROR reply there is nothing of it to undo.
                own = step.on_failure_operation is not None and response.ok
                raise self._fail(record, status, exc, own=own, reply_key=key) from None
        record.status = SagaStepStatus.Finished
        await self._save(key)

    async def _run_conditional(self, path: str, step: ConditionalSagaStep) -> None:
        record = self._records.get(path)
        if record is None:
            record = self._record(path, step)
            try:
                record.branch = await _choose(step, self._copy(path))
            except Exception as exc:
                raise self._fail(record, SagaStepStatus.ErroredOnExecute, exc) from None
            record.status = SagaStepStatus.RunningOnSuccess
        if record.branch is not None:
            try:
                await self._run_saga(step.branch(record.branch), path)
            except _StepFailed:
                record.status = SagaStepStatus.ErroredByOnExecute
                raise
        record.status = SagaStepStatus.Finished
        await self._save()

    # -- compensation ----------------------------------------------------------------------

    def _plan_compensation(self, failure: _StepFailed) -> None:
        record = self._records[failure.path]
        self.error = f"step {record.path} ({record.name}) failed: {record.error}"
        self._cause = failure.error
        finished = [
            path
            for path, r in self._records.items()
            if r.status is SagaStepStatus.Finished and _undo_operation(self._step_at(path))
        ]
        self.compensations = ([failure.path] if failure.own else []) + finished[::-1]
        self.phase = COMPENSATING

    def begin_rollback(self, reason: str) -> PendingRequest | None:
        """Turn a created, running or paused execution to compensating its finished steps, in
        reverse order; return the request it waited on, now abandoned. A step whose request is
        unanswered is not compensated: like a failing step, it never finished (minos' rule)."""
        if self.status in (SagaStatus.Finished, SagaStatus.Errored):
            raise SagaExecutionAlreadyExecutedException(
                f"saga execution {self.uuid} is {self.status.value}: nothing to roll back"
            )
        abandoned, self.pending = self.pending, None
        if self.phase == FORWARD:
            if abandoned is not None:
                record = self._records[abandoned.path]
                record.status = SagaStepStatus.ErroredByOnExecute
                record.error = reason
            self.error = reason
            self.compensations = [
                path
                for path, r in reversed(self._records.items())
                if r.status is SagaStepStatus.Finished and _undo_operation(self._step_at(path))
            ]
            self.phase = COMPENSATING
        elif abandoned is not None and self.compensations:
            # Rolling back a rollback: the compensation awaited is given up, the others run.
            record = self._records[self.compensations.pop(0)]
            record.status, record.error = SagaStepStatus.ErroredOnFailure, reason
            self.rollback_errors.append(f"compensation of step {record.path} abandoned: {reason}")
        self.status = SagaStatus.Running
        return abandoned

    def __eq__(self, other: object) -> bool:
        # Value equality (minos): what was saved, not when or by which run.
        if not isinstance(other, SagaExecution):
            return NotImplemented
        return (
            self.uuid == other.uuid
            and self.definition == other.definition
            and self.context == other.context
            and self.status == other.status
            and self.state() == other.state()
        )

    __hash__ = None  # type: ignore[assignment]

    async def _compensate(self) -> None:
        while self.compensations:
            path = self.compensations[0]
            step, record = self._step_at(path), self._records[path]
            key: str | None = None
            try:
                if isinstance(step, LocalSagaStep):
                    await self._undo_local(path, step)
                else:
                    assert isinstance(step, RemoteSagaStep)
                    key = await self._undo_remote(path, step, record)
            except _CompensationFailed as failed:
                key = failed.key
                self._compensation_failed(record, failed.error)
            else:
                record.status = SagaStepStatus.Compensated
            self.compensations.pop(0)
            await self._save(key)

    async def _undo_local(self, path: str, step: LocalSagaStep) -> None:
        ctx = self._copy(path)
        try:
            self.context = self._adopt(await _call(step.on_failure_operation, ctx), ctx)
        except Exception as exc:
            raise _CompensationFailed(exc) from None

    async def _undo_remote(self, path: str, step: RemoteSagaStep, record: SagaStepRecord) -> str:
        """Send the compensating request (unless it is out already) and await its reply;
        return the key the reply is recorded under."""
        if record.status is not SagaStepStatus.PausedOnFailure:
            try:
                request, body = _request(await _call(step.on_failure_operation, self._copy(path)))
            except Exception as exc:
                raise _CompensationFailed(exc) from None
            await self._send(record, "failure", request.target, body)
        response, key, target = await self._reply()
        if not response.ok:
            error = SagaRollbackExecutionException(
                f"{target} replied {response.status.name}: {response.content()!r}"
            )
            raise _CompensationFailed(error, key)
        return key

    def _compensation_failed(self, record: SagaStepRecord, exc: BaseException) -> None:
        record.status = SagaStepStatus.ErroredOnFailure
        record.error = _describe(exc)
        message = f"compensation of step {record.path} ({record.name}) failed: {record.error}"
        self.rollback_errors.append(message)
        self._raised[message] = exc

    def _failed(self) -> SagaFailedExecutionException:
        message = f"saga {self.saga_name!r} execution {self.uuid} failed: {self.error}"
        if self.rollback_errors:
            message += "; " + "; ".join(self.rollback_errors)
        errors = [
            self._raised.get(m) or SagaRollbackExecutionException(m) for m in self.rollback_errors
        ]
        exc = SagaFailedExecutionException(message, rollback_errors=errors, exception=self._cause)
        exc.__cause__ = self._cause
        return exc

    # -- helpers ---------------------------------------------------------------------------

    def _record(self, path: str, step: SagaStep) -> SagaStepRecord:
        record = self._records.get(path)
        if record is None:
            record = self._records[path] = SagaStepRecord(path, step.kind, step.describe())
        return record

    def _step_at(self, path: str) -> SagaStep:
        saga, parts = self.definition, path.split(".")
        for depth in range(1, len(parts)):
            parent = saga.steps[int(parts[depth - 1])]
            branch = self._records[".".join(parts[:depth])].branch
            assert isinstance(parent, ConditionalSagaStep)
            assert branch is not None
            saga = parent.branch(branch)
        return saga.steps[int(parts[-1])]

    def _copy(self, path: str) -> SagaContext:
        # A deep copy: a callback that fails after changing nested data changes nothing.
        scope = ExecutionScope(self.uuid, None, path)
        return SagaContext._from_data(self.context.to_dict(), scope)

    def _adopt(self, result: Any, ctx: SagaContext) -> SagaContext:
        """The context a callback leaves: the Context or dict it returned, else its mutated
        copy. Returning an exception fails the step; so does a context that cannot be saved."""
        if isinstance(result, BaseException):
            raise result
        new = SagaContext(result if isinstance(result, Mapping) else ctx)
        codec.dumps(new, max_bytes=self.max_context_bytes)
        return new

    def _fail(
        self,
        record: SagaStepRecord,
        status: SagaStepStatus,
        exc: BaseException,
        *,
        own: bool = False,
        reply_key: str | None = None,
    ) -> _StepFailed:
        record.status, record.error = status, _describe(exc)
        return _StepFailed(record.path, exc, own, reply_key)

    async def _send(self, record: SagaStepRecord, phase: str, target: str, body: str) -> None:
        # The key names the request (a participant dedupes on it, it is the same on every
        # delivery); the token is its unguessable secret, which only the participant that
        # received the request can echo in a reply.
        self.pending = PendingRequest(
            record.path,
            phase,
            f"{self.uuid}:{record.path}:{phase}",
            target,
            body,
            secrets.token_urlsafe(16),
        )
        record.status = (
            SagaStepStatus.PausedByOnExecute
            if phase == "execute"
            else SagaStepStatus.PausedOnFailure
        )
        self.status = SagaStatus.Paused
        assert self._runtime is not None
        # Saved with the request in one transaction, before it goes out: the reply must find
        # this state, and the request must not go out unless this state is saved.
        await self._runtime.send(self, self.pending)

    async def _reply(self) -> tuple[SagaResponse, str, str]:
        """The reply the pending request waits for, the key it is recorded under, and the
        service that sent it."""
        pending, runtime = self.pending, self._runtime
        assert pending is not None
        assert runtime is not None
        response, self._response = self._response, None
        if response is None:
            response = await runtime.wait_reply(self, pending)
            if response is None:
                raise _Paused
        self.pending = None
        self.status = SagaStatus.Running
        return response, response.idempotency_key or pending.key, pending.target

    async def _save(self, reply_key: str | None = None) -> None:
        assert self._runtime is not None
        if not await self._runtime.save(self, reply_key):
            raise SagaExecutionAlreadyExecutedException(
                f"the reply {reply_key} to saga execution {self.uuid} was already applied"
            )


async def _call(op: SagaOperation | None, *args: Any) -> Any:
    assert op is not None  # validate() guarantees the callbacks this is called with
    result = op.callback(*args, **op.parameters)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _choose(step: ConditionalSagaStep, ctx: SagaContext) -> int | None:
    for index, alternative in enumerate(step.if_then_alternatives):
        if await _call(alternative.condition, ctx):
            return index
    return -1 if step.else_then_alternative is not None else None


def _request(result: Any) -> tuple[SagaRequest, str]:
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, SagaRequest):
        raise TypeError(f"a remote step callback must return a SagaRequest, not {result!r}")
    return result, codec.dumps_value(result.content())


def _undo_operation(step: SagaStep) -> SagaOperation | None:
    return getattr(step, "on_failure_operation", None)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
