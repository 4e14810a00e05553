"""Inserting a new execution under an optional idempotency key (``run``, ``start``): a key
already used for the workflow creates nothing and names the execution that has it."""

from __future__ import annotations

from . import tracing
from .arguments import check_key
from .runtime import Runtime
from .state import TaskState
from .store import Tx
from .workflow import Workflow


class KeyTaken(Exception):
    """Another start with the same key won the race: roll back and read that one."""


def insert(
    rt: Runtime, tx: Tx, wf: Workflow, initial: str, key: str | None, *, claimed: bool,
    priority: int = 0, notify: bool = False,
) -> tuple[str | None, tuple[str, list[TaskState]]]:  # fmt: skip
    """``(existing id, _)`` when the key is taken, else ``(None, (id, task states))``;
    :class:`KeyTaken` when a concurrent start inserted the key after the look-up.
    ``notify``: wake idle workers when it commits (a start for workers)."""
    key = check_key(key)
    if key is not None and (found := rt.repo.execution_by_key(tx, wf.name, key)) is not None:
        return found.id, ("", [])
    created = rt.repo.create_execution(
        tx,
        wf,
        rt.now(),
        initial=initial,
        claimed_by=rt.worker_id if claimed else None,
        key=key,
        priority=priority,
        notify=notify,
    )
    if created is None:
        raise KeyTaken
    trace = tracing.carrier()
    if trace is not None:
        rt.repo.set_trace(tx, created[0], trace)
        tracing.annotate(execution_id=created[0])
    return None, created


def by_key(rt: Runtime, wf: Workflow, key: str | None) -> str:
    """The id of the execution holding ``key`` (after :class:`KeyTaken`)."""
    with rt.store.read() as tx:
        found = rt.repo.execution_by_key(tx, wf.name, key or "")
    assert found is not None, "an idempotency key conflict without its execution"
    return found.id
