"""Compensation of a saga execution (minos' rules), as a part of :class:`SagaExecution`.

On a failure the finished steps are compensated in reverse order. The failing step is not,
except a remote step whose ``on_success`` failed after a SUCCESS reply: its own ``on_failure``
runs first (after an ERROR reply the participant did nothing, so there is nothing of it to
undo). A failed compensation is recorded and the others still run. ``begin_rollback`` starts the
same compensation on request (``SagaManager.rollback``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

from .exceptions import (
    SagaExecutionAlreadyExecutedException,
    SagaFailedExecutionException,
    SagaRollbackExecutionException,
)
from .saga import LocalSagaStep, RemoteSagaStep, SagaStep
from .saga_messages import SagaResponse
from .saga_records import (
    COMPENSATING,
    FORWARD,
    PendingRequest,
    SagaStatus,
    SagaStepRecord,
    SagaStepStatus,
)
from .saga_runtime import (
    CompensationFailed,
    StepFailed,
    adopted,
    call,
    context_for,
    describe,
    request_of,
    undo_operation,
)

if TYPE_CHECKING:
    from .context import SagaContext

__all__ = ["Compensation"]


class Compensation:
    """The compensating half of :class:`~durably.saga_execution.SagaExecution`."""

    uuid: UUID
    context: SagaContext
    status: SagaStatus
    phase: str
    pending: PendingRequest | None
    compensations: list[str]
    error: str | None
    rollback_errors: list[str]
    max_context_bytes: int
    _records: dict[str, SagaStepRecord]
    _cause: BaseException | None
    _raised: dict[str, BaseException]

    if TYPE_CHECKING:  # defined by SagaExecution

        @property
        def saga_name(self) -> str: ...

        def _step_at(self, path: str) -> SagaStep: ...

        async def _send(
            self, record: SagaStepRecord, phase: str, target: str, body: str
        ) -> None: ...

        async def _reply(self) -> tuple[SagaResponse, str, str]: ...

        async def _save(self, reply_key: str | None = None) -> None: ...

        async def _flush(self) -> None: ...

    def _plan_compensation(self, failure: StepFailed) -> None:
        record = self._records[failure.path]
        self.error = f"step {record.path} ({record.name}) failed: {record.error}"
        self._cause = failure.error
        finished = [
            path
            for path, r in self._records.items()
            if r.status is SagaStepStatus.Finished and undo_operation(self._step_at(path))
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
                if r.status is SagaStepStatus.Finished and undo_operation(self._step_at(path))
            ]
            self.phase = COMPENSATING
        elif abandoned is not None and self.compensations:
            # Rolling back a rollback: the compensation awaited is given up, the others run.
            record = self._records[self.compensations.pop(0)]
            record.status, record.error = SagaStepStatus.ErroredOnFailure, reason
            self.rollback_errors.append(f"compensation of step {record.path} abandoned: {reason}")
        self.status = SagaStatus.Running
        return abandoned

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
            except CompensationFailed as failed:
                key = failed.key
                self._compensation_failed(record, failed.error)
            else:
                record.status = SagaStepStatus.Compensated
            self.compensations.pop(0)
            await self._save(key)

    async def _undo_local(self, path: str, step: LocalSagaStep) -> None:
        await self._flush()  # a local compensation acts on the world: the plan is saved first
        ctx = context_for(self.uuid, self.context, path)
        try:
            result = await call(step.on_failure_operation, ctx)
            self.context = adopted(result, ctx, self.max_context_bytes)
        except Exception as exc:
            raise CompensationFailed(exc) from None

    async def _undo_remote(self, path: str, step: RemoteSagaStep, record: SagaStepRecord) -> str:
        """Send the compensating request (unless it is out already) and await its reply;
        return the key the reply is recorded under."""
        if record.status is not SagaStepStatus.PausedOnFailure:
            try:
                ctx = context_for(self.uuid, self.context, path)
                request, body = request_of(await call(step.on_failure_operation, ctx))
            except Exception as exc:
                raise CompensationFailed(exc) from None
            await self._send(record, "failure", request.target, body)
        response, key, target = await self._reply()
        if not response.ok:
            error = SagaRollbackExecutionException(
                f"{target} replied {response.status.name}: {response.content()!r}"
            )
            raise CompensationFailed(error, key)
        return key

    def _compensation_failed(self, record: SagaStepRecord, exc: BaseException) -> None:
        record.status = SagaStepStatus.ErroredOnFailure
        record.error = describe(exc)
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
