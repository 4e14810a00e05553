"""Putting an event into an execution's mailbox, inside the caller's transaction: what
``engine.send`` does and what a child execution's end does for its parent's task.

A task waiting for the event gets it at once: it becomes ready with the payload in its
received payloads, at its wait's key; otherwise the event waits in the mailbox.
"""

from __future__ import annotations

import json
from typing import Any

from . import codec, waits
from .repository import Repository
from .store import Tx
from .subworkflows import CHILD_OUTCOME


def post(
    repo: Repository, tx: Tx, execution_id: str, name: str, payload: Any, stored: str,
    key: str | None, now: float,
) -> bool:  # fmt: skip
    """Store the event (``stored``: the payload as codec text); False when ``key`` was used
    already for this execution (nothing changes then). The caller holds the execution's
    lock, the one a task takes to start waiting: it finds this event, or we find it."""
    seq = repo.insert_event(tx, execution_id, name, key, stored, now)
    if seq is None:
        return False
    waiter = repo.waiting_for_event(tx, execution_id, name)
    if waiter is not None:
        config = json.loads(waiter.config_text or "{}")
        wait = waits.from_json(config.get("wait") if isinstance(config, dict) else None)
        at = wait.context_key if isinstance(wait, waits.Event) else _child_key(config, name)
        received = codec.loads(waiter.received_text) if waiter.received_text else {}
        received[at] = payload
        # Consumed only if delivered: a task claimed meanwhile (its wait timed out)
        # leaves the event in the mailbox, for its retry to take.
        if repo.deliver_event(tx, waiter.task_id, codec.dumps(received), now):
            repo.consume_event(tx, seq, waiter.task_id, now)
            repo.notify_work(tx)
    return True


def _child_key(config: Any, name: str) -> str:
    # A sub-workflow task waits for its child's outcome under a reserved key.
    return CHILD_OUTCOME if isinstance(config, dict) and config.get("child") else name
