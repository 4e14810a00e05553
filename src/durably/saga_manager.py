"""SagaManager: runs saga executions against a repository and a broker (the minos API).

Two ways to wait for a participant's reply:

- in memory (the default): requests name this manager's private reply queue, and ``run``
  awaits each reply. The broker acknowledges a reply only once the step it resumes is saved. A
  reply nobody waits for any more (after a ``timeout``) is moved to the shared reply queue.
- on disk (``pause_on_disk=True``): requests name the shared reply queue and ``run`` returns at
  the first remote step. The reply resumes the execution in any process, through
  ``run(response=...)`` or a reply listener (``serve_replies()``).

A reply is applied once: one for a step that is no longer waiting, or whose key was recorded
already, is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID, uuid4

from .broker import Broker, InMemoryBroker, Message, Subscription
from .exceptions import (
    SagaDefinitionNotFound,
    SagaException,
    SagaExecutionAlreadyExecutedException,
    SagaExecutionNotFoundException,
    SagaFailedExecutionException,
    SagaTimeoutException,
)
from .saga import Saga, register_saga
from .saga_execution import PendingRequest, SagaExecution, SagaStatus
from .saga_messages import SagaResponse
from .saga_repository import SagaExecutionRepository

__all__ = ["DEFAULT_REPLY_TO", "SagaManager"]

logger = logging.getLogger(__name__)

DEFAULT_REPLY_TO = "durably.saga.replies"


@dataclass(frozen=True)
class _Waiter:
    reply: asyncio.Future[SagaResponse]
    applied: asyncio.Future[None]  # set once the state change the reply causes is committed


class SagaManager:
    """Runs sagas: ``storage`` saves every step, ``broker_pool`` carries remote steps
    (an :class:`InMemoryBroker` by default), ``sagas`` are registered for resuming."""

    def __init__(
        self,
        storage: SagaExecutionRepository,
        broker_pool: Broker | None = None,
        *,
        sagas: Iterable[Saga] = (),
        reply_to: str = DEFAULT_REPLY_TO,
    ) -> None:
        self.storage = storage
        self.broker_pool: Broker = broker_pool if broker_pool is not None else InMemoryBroker()
        self.reply_to = reply_to
        self._private_topic = f"{reply_to}.{uuid4().hex[:12]}"  # one per live manager
        self._private: Subscription | None = None
        self._waiters: dict[str, _Waiter] = {}
        for saga in sagas:
            register_saga(saga)

    async def run(
        self,
        definition: Saga | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        response: SagaResponse | None = None,
        pause_on_disk: bool = False,
        raise_on_error: bool = True,
        return_execution: bool = True,
        timeout: float | None = None,
    ) -> SagaExecution | UUID:
        """Start ``definition`` on ``context``, or continue the execution ``response.uuid``
        with that reply. Returns the execution (its uuid if ``return_execution=False``) once
        it is finished or errored, or paused on disk with ``pause_on_disk=True``. Raises
        ``SagaFailedExecutionException`` for an errored one unless ``raise_on_error=False``,
        and ``SagaTimeoutException`` after ``timeout`` seconds (the execution stays saved)."""
        if response is not None:
            if response.uuid is None:
                raise SagaExecutionNotFoundException("the response names no saga execution")
            execution = self.storage.load_execution(response.uuid)
            if not _expects(execution, response):
                logger.info(
                    "reply to saga execution %s ignored: no step waits for it",
                    execution.uuid,
                    extra={"action": "saga_reply_ignored", "key": response.idempotency_key},
                )
                return execution if return_execution else execution.uuid
        elif definition is None:
            raise TypeError("run() needs a saga definition or a response")
        else:
            execution = SagaExecution.from_definition(definition, context)
            register_saga(definition)
            self.storage.save(execution)
        return await self._execute(
            execution, response, pause_on_disk, raise_on_error, return_execution, timeout
        )

    async def resume(
        self,
        uuid: UUID | str,
        *,
        pause_on_disk: bool = False,
        raise_on_error: bool = True,
        return_execution: bool = True,
        timeout: float | None = None,
    ) -> SagaExecution | UUID:
        """Continue an execution a crashed process left behind, from its last saved step. A
        request it was waiting on is sent again, under the same idempotency key."""
        execution = self.storage.load_execution(uuid)
        if execution.status in (SagaStatus.Finished, SagaStatus.Errored):
            raise SagaExecutionAlreadyExecutedException(
                f"saga execution {execution.uuid} is {execution.status.value}: nothing to resume"
            )
        return await self._execute(
            execution, None, pause_on_disk, raise_on_error, return_execution, timeout, resend=True
        )

    async def get(self, uuid: UUID | str) -> SagaExecution:
        """The stored execution."""
        return await self.storage.load(uuid)

    async def serve_replies(self) -> None:
        """Resume paused executions as the replies to their requests arrive, until cancelled
        (run it as a task, or from ``durably worker``)."""
        subscription = await self.broker_pool.subscribe(self.reply_to, self._on_reply)
        try:
            await asyncio.Event().wait()
        finally:
            await subscription.close()

    async def close(self) -> None:
        """Stop consuming this manager's private reply queue."""
        if self._private is not None:
            await self._private.close()
            self._private = None

    # -- internals -------------------------------------------------------------------------

    async def _execute(
        self,
        execution: SagaExecution,
        response: SagaResponse | None,
        pause_on_disk: bool,
        raise_on_error: bool,
        return_execution: bool,
        timeout: float | None,
        *,
        resend: bool = False,
    ) -> SagaExecution | UUID:
        runtime = _Runtime(self, pause_on_disk)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if resend and execution.pending is not None:
                    await runtime.send(execution, execution.pending)
                await execution.execute(response, runtime=runtime)
        except SagaFailedExecutionException:
            if raise_on_error:
                raise
        except SagaExecutionAlreadyExecutedException:
            # Another run applied this reply first; this one saved nothing.
            execution = self.storage.load_execution(execution.uuid)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise SagaTimeoutException(
                f"saga execution {execution.uuid} did not finish within {timeout:g}s; it is "
                "saved as of its last step and goes on when its reply arrives or on resume()"
            ) from None
        finally:
            runtime.close()
        return execution if return_execution else execution.uuid

    async def _private_reply_topic(self) -> str:
        if self._private is None:
            self._private = await self.broker_pool.subscribe(
                self._private_topic, self._on_private_reply, durable=False
            )
        return self._private_topic

    async def _on_private_reply(self, message: Message) -> None:
        response = SagaResponse.from_message(message)
        waiter = self._waiters.get(response.idempotency_key or "")
        if waiter is None or waiter.reply.done():
            # Nobody here waits for it any more: leave it to the reply listener.
            await self.broker_pool.publish(replace(message, topic=self.reply_to))
            return
        waiter.reply.set_result(response)
        await waiter.applied  # acknowledged only once the step it resumes is saved

    async def _on_reply(self, message: Message) -> None:
        response = SagaResponse.from_message(message)
        try:
            await self.run(response=response, pause_on_disk=True, raise_on_error=False)
        except (SagaExecutionNotFoundException, SagaDefinitionNotFound) as exc:
            # It can never be applied here, and redelivering it would not change that.
            logger.error("reply dropped: %s", exc, extra={"action": "saga_reply_dropped"})


def _expects(execution: SagaExecution, response: SagaResponse) -> bool:
    """Whether ``response`` is the reply the execution waits for."""
    pending = execution.pending
    if execution.status is not SagaStatus.Paused or pending is None:
        return False
    return response.idempotency_key in (None, pending.key)


class _Runtime:
    """What one ``execute`` call uses: the repository, and the broker in one waiting mode."""

    def __init__(self, manager: SagaManager, pause_on_disk: bool) -> None:
        self.manager = manager
        self.pause_on_disk = pause_on_disk
        self.sent: list[str] = []
        self.taken: dict[str, _Waiter] = {}  # replies handed over, their step not saved yet

    def save(self, execution: SagaExecution, reply_key: str | None = None) -> bool:
        saved = self.manager.storage.save(execution, reply_key)
        waiter = self.taken.pop(reply_key, None) if reply_key else None
        if waiter is not None and not waiter.applied.done():
            waiter.applied.set_result(None)
        return saved

    async def send(self, execution: SagaExecution, request: PendingRequest) -> None:
        manager = self.manager
        if self.pause_on_disk:
            reply_to = manager.reply_to
        else:
            reply_to = await manager._private_reply_topic()
            loop = asyncio.get_running_loop()
            manager._waiters[request.key] = _Waiter(loop.create_future(), loop.create_future())
            self.sent.append(request.key)
        await manager.broker_pool.request(
            request.target,
            request.body,
            saga=str(execution.uuid),
            step=request.path,
            reply_to=reply_to,
            key=request.key,
        )

    async def wait_reply(
        self, execution: SagaExecution, request: PendingRequest
    ) -> SagaResponse | None:
        waiter = self.manager._waiters.get(request.key)
        if self.pause_on_disk or waiter is None:
            return None  # saved as paused: the reply resumes it
        try:
            response = await waiter.reply
        finally:
            self.manager._waiters.pop(request.key, None)
        self.taken[request.key] = waiter
        return response

    def close(self) -> None:
        for key in self.sent:
            self.manager._waiters.pop(key, None)
        for waiter in self.taken.values():
            if not waiter.applied.done():  # the run ended before saving it: redeliver
                waiter.applied.set_exception(SagaException("the reply was not applied"))
