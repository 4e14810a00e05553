"""SagaManager: runs saga executions against a repository and a broker (the minos API).

Two ways to wait for a participant's reply:

- in memory (the default): requests name this manager's private reply queue, and ``run``
  awaits each reply. The broker acknowledges a reply only once the step it resumes is saved. A
  reply nobody waits for any more (after a ``timeout``) is moved to the shared reply queue.
- on disk (``pause_on_disk=True``): requests name the shared reply queue and ``run`` returns at
  the first remote step. The reply resumes the execution in any process, through
  ``run(response=...)`` or a reply listener (``serve_replies()``).

Requests leave through the outbox (``saga_outbox.py``): saved with the step that sends them,
then published by the manager's relay, which retries while the broker is down. A broker error
never escapes ``run`` and never fails a step; only a ``timeout`` that expires while the request
still waits for the broker surfaces, as ``BrokerError`` carrying the execution's uuid.

A reply from a broker is applied once, and only when it echoes the token of the request the
step waits on: a duplicate, a reply to another request, a forged reply (wrong or no token) is
acknowledged, logged once and ignored. An undecodable one is rejected by the broker for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

from .broker_base import Broker
from .exceptions import (
    BrokerError,
    SagaDefinitionNotFound,
    SagaExecutionAlreadyExecutedException,
    SagaExecutionNotFoundException,
    SagaFailedExecutionException,
    SagaTimeoutException,
)
from .memory_broker import InMemoryBroker
from .saga import Saga, register_saga
from .saga_delivery import ManagerRuntime, Waiter
from .saga_execution import SagaExecution
from .saga_log import log_fields
from .saga_messages import HEADER_REPLY_TO, SagaResponse
from .saga_outbox import OutboxEntry, OutboxRelay
from .saga_records import SagaStatus
from .saga_repository import SagaExecutionRepository
from .wire import Message, Subscription

__all__ = ["DEFAULT_REPLY_TO", "SagaManager"]

logger = logging.getLogger(__name__)

DEFAULT_REPLY_TO = "durably.saga.replies"


class SagaManager:
    """Runs sagas: ``storage`` saves every step, ``broker_pool`` carries remote steps
    (an :class:`InMemoryBroker` by default), ``sagas`` are registered for resuming.
    ``async with SagaManager(...) as manager`` closes it at the end."""

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
        name = uuid4().hex[:12]
        self._private_topic = f"{reply_to}.{name}"  # one per live manager
        self._private: Subscription | None = None
        self._private_lock = asyncio.Lock()
        self._waiters: dict[str, Waiter] = {}
        self.relay = OutboxRelay(
            storage.db, self.broker_pool, name=f"manager-{name}", prepare=self._prepare
        )
        for saga in sagas:
            register_saga(saga)

    async def __aenter__(self) -> SagaManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

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
        autocommit: bool = True,
    ) -> SagaExecution | UUID:
        """Start ``definition`` on ``context``, or continue the execution ``response.uuid``
        with that reply. Returns the execution (its uuid if ``return_execution=False``) once
        it is finished or errored, or paused on disk with ``pause_on_disk=True``. Raises
        ``SagaFailedExecutionException`` for an errored one unless ``raise_on_error=False``,
        and ``SagaTimeoutException`` after ``timeout`` seconds (the execution stays saved) —
        ``BrokerError`` (with ``.uuid``) when the broker was unreachable all along.

        ``autocommit`` is accepted for minos code: durably's participants have no distributed
        transaction to commit, each reply being final."""
        del autocommit
        if response is not None:
            if response.uuid is None:
                raise SagaExecutionNotFoundException("the response names no saga execution")
            execution = await self.storage.load(response.uuid)
            reason = _unexpected(execution, response)
            if reason is not None:
                _log_ignored(execution.uuid, response, reason)
                return execution if return_execution else execution.uuid
        elif definition is None:
            raise TypeError("run() needs a saga definition or a response")
        else:
            execution = SagaExecution.from_definition(definition, context)
            register_saga(definition)
            # Not saved yet: its first step saves it (a transaction less per saga), and until
            # then nothing has happened that a crash could lose.
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
        request it was waiting on is sent again, under the same idempotency key and token."""
        execution = await self.storage.load(uuid)
        if execution.status in (SagaStatus.Finished, SagaStatus.Errored):
            raise SagaExecutionAlreadyExecutedException(
                f"saga execution {execution.uuid} is {execution.status.value}: nothing to resume"
            )
        return await self._execute(
            execution, None, pause_on_disk, raise_on_error, return_execution, timeout, resend=True
        )

    async def rollback(
        self,
        uuid: UUID | str,
        *,
        pause_on_disk: bool = False,
        timeout: float | None = None,
        reason: str = "rolled back on request",
    ) -> SagaExecution:
        """Compensate the finished steps of a created, paused or running execution in reverse
        order and end it ``errored``. The request it was waiting on is abandoned (unsent, it is
        dropped from the outbox; a late reply to it is ignored) and not compensated, as a
        failing step is not. Returns the execution; raises
        ``SagaExecutionAlreadyExecutedException`` for a finished or errored one."""
        execution = await self.storage.load(uuid)
        abandoned = execution.begin_rollback(reason)
        await self.storage.apply(execution, discard=abandoned.key if abandoned else None)
        logger.info(
            "saga execution %s rolled back on request",
            execution.uuid,
            extra=_extra(execution.uuid, "saga_rollback"),
        )
        # A run of this process may wait for the abandoned reply in memory: unhooked now, so
        # that a late reply cannot resume it, and told once the rollback is saved, so that it
        # returns the rolled-back execution.
        waiter = self._waiters.pop(abandoned.key, None) if abandoned is not None else None
        try:
            result = await self._execute(execution, None, pause_on_disk, False, True, timeout)
        finally:
            if waiter is not None and not waiter.reply.done():
                waiter.reply.set_exception(
                    SagaExecutionAlreadyExecutedException(f"{execution.uuid} was rolled back")
                )
        assert isinstance(result, SagaExecution)
        return result

    async def get(self, uuid: UUID | str) -> SagaExecution:
        """The stored execution."""
        return await self.storage.load(uuid)

    async def serve_replies(self) -> None:
        """Resume paused executions as the replies to their requests arrive, and publish the
        requests other managers left in the outbox, until cancelled (run it as a task, or from
        ``durably worker``)."""
        subscription = await self.broker_pool.subscribe(self.reply_to, self._on_reply)
        relay = asyncio.get_running_loop().create_task(self.relay.run())
        try:
            await relay  # runs until cancelled
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            await subscription.close()

    async def close(self) -> None:
        """Stop the relay's retries (unsent requests stay in the outbox for another relay) and
        stop consuming this manager's private reply queue."""
        await self.relay.close()
        if self._private is not None:
            private, self._private = self._private, None
            try:
                await private.close()
            except BrokerError as exc:
                logger.warning(
                    "closing the private reply queue: %s",
                    exc,
                    extra=log_fields("saga_private_queue_close_failed"),
                )

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
        runtime = ManagerRuntime(
            self.storage,
            self.relay,
            self._waiters,
            reply_to=self.reply_to,
            private_topic=self._private_topic,
            pause_on_disk=pause_on_disk,
        )
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if resend and execution.pending is not None:
                    await runtime.send(execution, execution.pending, resend=True)
                await execution.execute(response, runtime=runtime)
        except SagaFailedExecutionException:
            if raise_on_error:
                raise
        except SagaExecutionAlreadyExecutedException:
            # Another run applied this reply first (or rolled it back); this one saved nothing.
            execution = await self.storage.load(execution.uuid)
        except TimeoutError:
            if not deadline.expired():
                raise
            error = self._timed_out(execution, timeout)
            raise error from error.__cause__
        finally:
            runtime.close()
        return execution if return_execution else execution.uuid

    def _timed_out(self, execution: SagaExecution, timeout: float | None) -> Exception:
        pending = execution.pending
        failure = self.relay.failures.get(pending.key) if pending is not None else None
        if failure is not None:
            error = BrokerError(
                f"saga execution {execution.uuid}: the broker was unreachable for {timeout:g}s "
                f"({type(failure).__name__}: {failure}); the execution is saved and its request "
                "waits in the outbox, sent when the broker is back: do not start it again",
                uuid=execution.uuid,
            )
            error.__cause__ = failure
            return error
        return SagaTimeoutException(
            f"saga execution {execution.uuid} did not finish within {timeout:g}s; it is "
            "saved as of its last step and goes on when its reply arrives or on resume()"
        )

    async def _prepare(self, entry: OutboxEntry) -> None:
        """Before a request naming the private reply queue goes out, consume that queue."""
        if entry.headers.get(HEADER_REPLY_TO) == self._private_topic:
            async with self._private_lock:
                if self._private is None:
                    self._private = await self.broker_pool.subscribe(
                        self._private_topic, self._on_private_reply, durable=False
                    )

    async def _on_private_reply(self, message: Message) -> None:
        response = SagaResponse.from_message(message)  # undecodable: the broker rejects it
        key, token = response.idempotency_key, response.token
        if key is None:
            _log_ignored(response.uuid, response, ("it has no idempotency key", True))
            return
        waiter = self._waiters.get(key)
        if waiter is None or waiter.reply.done():
            # Nobody here waits for it any more: the reply listener decides on it.
            await self.broker_pool.publish(replace(message, topic=self.reply_to))
            return
        if token != waiter.token:
            reason = "it has no token" if token is None else "its token does not match"
            _log_ignored(response.uuid, response, (reason, True))
            return
        waiter.reply.set_result(response)
        await waiter.applied  # acknowledged only once the step it resumes is saved

    async def _on_reply(self, message: Message) -> None:
        response = SagaResponse.from_message(message)  # undecodable: the broker rejects it
        try:
            await self.run(response=response, pause_on_disk=True, raise_on_error=False)
        except (SagaExecutionNotFoundException, SagaDefinitionNotFound) as exc:
            # It can never be applied here, and redelivering it would not change that.
            logger.error(
                "reply dropped: %s",
                exc,
                extra=_extra(response.uuid, "saga_reply_dropped", message=message),
            )


def _unexpected(execution: SagaExecution, response: SagaResponse) -> tuple[str, bool] | None:
    """Why ``response`` is not the reply the execution waits for, and whether it is forged
    (it could not come from the participant that got the request); None when it is the one."""
    pending = execution.pending
    if execution.status is not SagaStatus.Paused or pending is None:
        return "no step waits for it", False
    if response.received or response.token is not None:
        # From a broker: it must name the request and echo its secret. (A pending request
        # saved before tokens existed has none to compare.)
        if response.idempotency_key is None:
            return "it has no idempotency key", True
        if pending.token and response.token is None:
            return "it has no token", True
        if response.idempotency_key != pending.key:
            return "it answers another request", False
        if pending.token and response.token != pending.token:
            return "its token does not match the request's", True
        return None
    # Handed to run(response=...) by the application itself, as minos does.
    if response.idempotency_key in (None, pending.key):
        return None
    return "it answers another request", False


def _log_ignored(uuid: UUID | None, response: SagaResponse, why: tuple[str, bool]) -> None:
    reason, forged = why
    logger.log(
        logging.WARNING if forged else logging.INFO,
        "reply %s to saga execution %s ignored: %s",
        response.idempotency_key or "(no key)",
        uuid,
        reason,
        extra=_extra(uuid, "saga_reply_forged" if forged else "saga_reply_ignored"),
    )


def _extra(uuid: UUID | None, action: str, *, message: Message | None = None) -> dict[str, Any]:
    return {
        "execution_id": str(uuid) if uuid else None,
        "workflow": None,
        "task": None,
        "attempt": None,
        "action": action,
        "message_id": message.id if message is not None else None,
    }
