"""A saga execution and the algorithm that runs it, with minos semantics.

Steps run in order; a conditional step runs its chosen sub-saga inline, its steps numbered under
it ("2.0", "2.1"). Every callback gets a deep copy of the context, so a failing one leaves the
context unchanged. After each step the execution is saved (context and step status in one
transaction, see ``SagaRuntime.save``); before a request goes out it is saved as paused with
that request, so a reply can never arrive before the state that expects it, and a crashed
process can be resumed from the last finished step.

Requests leave through the runtime's ``send``, which saves the paused state and queues the
request in one transaction (the outbox). Compensation is in ``saga_compensation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from . import saga_telemetry, tracing
from .context import SagaContext
from .exceptions import SagaException, SagaExecutionAlreadyExecutedException
from .saga import ConditionalSagaStep, LocalSagaStep, RemoteSagaStep, Saga, SagaStep
from .saga_compensation import Compensation
from .saga_messages import SagaResponse, SagaResponseStatus
from .saga_records import FORWARD, PendingRequest, SagaStatus, SagaStepRecord, SagaStepStatus
from .saga_runtime import (
    Detached,
    Paused,
    SagaRuntime,
    StepFailed,
    adopted,
    call,
    choose,
    context_for,
    describe,
    request_of,
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


class SagaExecution(Compensation):
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
        trace: str | None = None,
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
        # The trace context (tracing.carrier) of the first run's span: every later run (after
        # a pause, in whichever process) is its child, so the saga is one trace.
        self.trace = trace
        self._records = {record.path: record for record in records or []}
        self._runtime: SagaRuntime[SagaExecution] | None = None
        self._response: SagaResponse | None = None
        self._cause: BaseException | None = None
        self._raised: dict[str, BaseException] = {}  # failed compensations' exceptions, by message
        self._dirty = False  # changed since the last save (see _save)
        self._dirty_key: str | None = None  # the reply that the next save records as applied

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
            **({"trace": self.trace} if self.trace is not None else {}),
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
            trace=trace if isinstance(trace := state.get("trace"), str) else None,
        )

    # -- running ---------------------------------------------------------------------------

    async def execute(
        self,
        response: SagaResponse | None = None,
        *,
        runtime: SagaRuntime[SagaExecution] | None = None,
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
        self._runtime, self._response = runtime or Detached(), response
        self.status = SagaStatus.Running
        with saga_telemetry.run(self.saga_name, self.uuid, self.trace):
            if self.trace is None:
                self.trace = tracing.carrier()
            return await self._execute()

    async def _execute(self) -> SagaContext:
        try:
            if self.phase == FORWARD:
                try:
                    await self._run_saga(self.definition, "")
                except StepFailed as failure:
                    self._plan_compensation(failure)
                    await self._save(failure.reply_key)
                else:
                    self.status = SagaStatus.Finished
                    await self._save()
                    await self._flush()
                    return self.context
            await self._compensate()
            self.status = SagaStatus.Errored
            await self._save()
            await self._flush()
        except Paused:
            await self._flush()  # nothing is left unsaved at a pause; kept as a guard
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
            with saga_telemetry.step(self.saga_name, self.uuid, path, step):
                if isinstance(step, LocalSagaStep):
                    await self._run_local(path, step)
                elif isinstance(step, RemoteSagaStep):
                    await self._run_remote(path, step)
                else:
                    assert isinstance(step, ConditionalSagaStep)
                    await self._run_conditional(path, step)

    async def _run_local(self, path: str, step: LocalSagaStep) -> None:
        await self._flush()  # a local step may act on the world: what led here is saved first
        record = self._record(path, step)
        ctx = context_for(self.uuid, self.context, path)
        try:
            result = await call(step.on_execute_operation, ctx)
            self.context = adopted(result, ctx, self.max_context_bytes)
        except Exception as exc:
            raise self._fail(record, SagaStepStatus.ErroredOnExecute, exc) from None
        record.status = SagaStepStatus.Finished
        await self._save()

    async def _run_remote(self, path: str, step: RemoteSagaStep) -> None:
        record = self._record(path, step)
        if record.status is not SagaStepStatus.PausedByOnExecute:
            try:
                ctx = context_for(self.uuid, self.context, path)
                request, body = request_of(await call(step.on_execute_operation, ctx))
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
            ctx = context_for(self.uuid, self.context, path)
            try:
                result = await call(op, ctx, response)
                self.context = adopted(result, ctx, self.max_context_bytes)
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
                record.branch = await choose(step, context_for(self.uuid, self.context, path))
            except Exception as exc:
                raise self._fail(record, SagaStepStatus.ErroredOnExecute, exc) from None
            record.status = SagaStepStatus.RunningOnSuccess
        if record.branch is not None:
            try:
                await self._run_saga(step.branch(record.branch), path)
            except StepFailed:
                record.status = SagaStepStatus.ErroredByOnExecute
                raise
        record.status = SagaStepStatus.Finished
        await self._save()

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

    def _fail(
        self,
        record: SagaStepRecord,
        status: SagaStepStatus,
        exc: BaseException,
        *,
        own: bool = False,
        reply_key: str | None = None,
    ) -> StepFailed:
        record.status, record.error = status, describe(exc)
        return StepFailed(record.path, exc, own, reply_key)

    async def _send(self, record: SagaStepRecord, phase: str, target: str, body: str) -> None:
        self.pending = PendingRequest.new(self.uuid, record.path, phase, target, body)
        record.status = (
            SagaStepStatus.PausedByOnExecute
            if phase == "execute"
            else SagaStepStatus.PausedOnFailure
        )
        self.status = SagaStatus.Paused
        assert self._runtime is not None
        # Saved with the request in one transaction, before it goes out: the reply must find
        # this state, and the request must not go out unless this state is saved. The same
        # transaction records the reply that led here, if its save was deferred.
        key, self._dirty, self._dirty_key = self._dirty_key, False, None
        if not await self._runtime.send(self, self.pending, reply_key=key):
            raise SagaExecutionAlreadyExecutedException(
                f"the reply {key} to saga execution {self.uuid} was already applied"
            )

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
                raise Paused
        self.pending = None
        self.status = SagaStatus.Running
        return response, response.idempotency_key or pending.key, pending.target

    async def _save(self, reply_key: str | None = None) -> None:
        """Mark the execution to be saved, recording ``reply_key`` as applied, at the next
        flush point: before a local callback (which may act on the world), with the next
        request (one transaction for both), or when the run ends. Nothing else can observe
        the state in between, so a crash loses the same as with a save here; a 3-step saga
        with two remote steps costs 3 transactions instead of 6."""
        if reply_key is not None and self._dirty_key not in (None, reply_key):
            await self._flush()
        self._dirty = True
        if reply_key is not None:
            self._dirty_key = reply_key

    async def _flush(self) -> None:
        if not self._dirty:
            return
        assert self._runtime is not None
        key, self._dirty, self._dirty_key = self._dirty_key, False, None
        if not await self._runtime.save(self, key):
            raise SagaExecutionAlreadyExecutedException(
                f"the reply {key} to saga execution {self.uuid} was already applied"
            )
