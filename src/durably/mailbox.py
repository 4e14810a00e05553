"""Events sent to executions (SPEC §3.4): ``engine.send`` stores one in one transaction.

Events are a mailbox: one sent before any task waits for it is kept and consumed when a task
does; each is consumed once; a repeated idempotency key is ignored. A task waiting for the
event gets it at once: it becomes ready with the payload in its input, at its wait's key.
"""

from __future__ import annotations

from typing import Any

from . import codec, events
from .exceptions import ExecutionNotFound, ExecutionStateError
from .runtime import Runtime
from .statuses import EXECUTION_TERMINAL


def send(
    rt: Runtime, execution_id: str, name: str, payload: Any = None, *, key: str | None = None
) -> bool:
    """Store the event; True when stored, False when ``key`` was already used for this
    execution (nothing changes then). A payload that cannot be stored raises
    ContextSerializationError and stores nothing."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"an event needs a non-empty str name, not {name!r}")
    if name.startswith("durably."):
        raise ValueError(f"event names starting with 'durably.' are reserved: {name!r}")
    if key is not None and (not isinstance(key, str) or not key):
        raise TypeError(f"an event's key must be a non-empty str, not {key!r}")
    stored = codec.dumps_value(payload)
    if len(stored) > rt.max_context_bytes:
        codec.dumps({"payload": payload}, max_bytes=rt.max_context_bytes)  # raises: too large
    repo = rt.repo
    with rt.store.transaction() as tx:
        record = repo.execution(tx, execution_id)
        if record is None:
            raise ExecutionNotFound(f"no execution with id {execution_id}")
        if record.status in EXECUTION_TERMINAL:
            raise ExecutionStateError(
                f"execution {execution_id} is {record.status}: it takes no more events"
            )
        # The same lock a task takes to start waiting: it finds this event, or we find it.
        repo.lock_execution(tx, execution_id)
        now = rt.now()
        return events.post(repo, tx, execution_id, name, payload, stored, key, now)
