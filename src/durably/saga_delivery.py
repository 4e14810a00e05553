"""How one ``SagaManager`` run sends requests and waits for replies (``saga_manager``).

A request is saved with the paused step and queued in the outbox in one transaction, then
handed to the manager's relay. Waiting in memory, the run registers a :class:`Waiter` under the
request's idempotency key before the request can go out; the manager's private reply consumer
fills it, and acknowledges the reply only once the step it resumes is saved.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import tracing
from .exceptions import SagaException
from .saga_messages import SagaResponse, request_message
from .saga_outbox import OutboxEntry
from .saga_records import PendingRequest

if TYPE_CHECKING:
    from .saga_execution import SagaExecution
    from .saga_outbox import OutboxRelay
    from .saga_repository import SagaExecutionRepository

__all__ = ["ManagerRuntime", "Waiter"]


@dataclass(frozen=True)
class Waiter:
    token: str
    reply: asyncio.Future[SagaResponse]
    applied: asyncio.Future[None]  # set once the state change the reply causes is committed


class ManagerRuntime:
    """What one ``execute`` call of a ``SagaManager`` uses: its repository, its relay and the
    runs waiting for a reply in memory (``waiters``, by request key), and the broker in one
    waiting mode. It is given the manager's parts, not the manager, so that the manager knows
    this module and not the other way round."""

    def __init__(
        self,
        storage: SagaExecutionRepository,
        relay: OutboxRelay,
        waiters: dict[str, Waiter],
        *,
        reply_to: str,
        private_topic: str,
        pause_on_disk: bool,
    ) -> None:
        self.storage = storage
        self.relay = relay
        self.waiters = waiters
        self.reply_to = reply_to  # the shared reply queue
        self.private_topic = private_topic  # the manager's own reply queue
        self.pause_on_disk = pause_on_disk
        self.sent: list[str] = []
        self.taken: dict[str, Waiter] = {}  # replies handed over, their step not saved yet

    async def save(self, execution: SagaExecution, reply_key: str | None = None) -> bool:
        saved = await self.storage.apply(execution, reply_key)
        self._applied(reply_key)
        return saved

    def _applied(self, reply_key: str | None) -> None:
        """The reply's state change is committed: its message can be acknowledged."""
        waiter = self.taken.pop(reply_key, None) if reply_key else None
        if waiter is not None and not waiter.applied.done():
            waiter.applied.set_result(None)

    async def send(
        self,
        execution: SagaExecution,
        request: PendingRequest,
        *,
        reply_key: str | None = None,
        resend: bool = False,
    ) -> bool:
        if self.pause_on_disk:
            reply_to = self.reply_to
        else:
            reply_to = self.private_topic
            loop = asyncio.get_running_loop()
            self.waiters[request.key] = Waiter(
                request.token, loop.create_future(), loop.create_future()
            )
            self.sent.append(request.key)
        message = request_message(
            request.target,
            request.body,
            str(execution.uuid),
            request.path,
            reply_to,
            request.key,
            request.token,
        )
        headers = dict(message.headers)
        tracing.inject(headers)  # the step's span: the participant's joins its trace
        entry = OutboxEntry(
            saga=str(execution.uuid),
            key=request.key,
            topic=request.target,
            body=request.body,
            headers=headers,
            creator=self.relay.id,
            fallback_reply_to=self.reply_to,
        )
        # A resend replaces an unsent copy of the request instead of adding a second one.
        saved = await self.storage.apply(
            execution, reply_key, outbox=entry, discard=request.key if resend else None
        )
        self._applied(reply_key)
        if not saved:
            return False  # that reply was applied by another run: nothing was written
        # On failure it stays queued and is retried. Waiting in memory, the reply's save
        # deletes the row, so the relay's own delete can wait and be batched; paused on disk,
        # this process may exit at once, and a row left behind would be published again.
        await self.relay.publish(entry, batch_delete=not self.pause_on_disk)
        return True

    async def wait_reply(
        self, execution: SagaExecution, request: PendingRequest
    ) -> SagaResponse | None:
        waiter = self.waiters.get(request.key)
        if self.pause_on_disk or waiter is None:
            return None  # saved as paused: the reply resumes it
        try:
            response = await waiter.reply
        finally:
            self.waiters.pop(request.key, None)
        self.taken[request.key] = waiter
        return response

    def close(self) -> None:
        for key in self.sent:
            self.waiters.pop(key, None)
        for waiter in self.taken.values():
            if not waiter.applied.done():  # the run ended before saving it: redeliver
                waiter.applied.set_exception(SagaException("the reply was not applied"))
