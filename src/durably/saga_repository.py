"""Saga executions in the database: the same store, and the same CLI, as workflow executions.

An execution is one ``saga_executions`` row (status, fingerprint, step states as JSON) and one
``contexts`` row, whose id is the execution's. Each save writes both in one transaction, with
the key of the reply it applies, if any (``saga_replies``), so a reply is applied exactly once,
and the request the new state sends, if any (``saga_outbox``, see ``saga_outbox.py``), so a
request goes out if and only if the state that awaits its reply is saved.

The database drivers block; every coroutine here runs them off the event loop, on threads of
the store's own (``saga_threads.off_loop``), so a slow save never stalls the loop that the
broker consumers share. ``bench/saga_storage.py`` measured that against psycopg's async
connection pool (see its docstring): within the run-to-run spread of each other, with no better
loop lag for the async pool, so the thread offload is kept; it serves SQLite too. The plain
methods (``save``, ``load_execution``) are for code that has no event loop (the CLI).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from . import codec
from .backends import open_store
from .context import SagaContext
from .exceptions import SagaDefinitionNotFound, SagaExecutionNotFoundException
from .listing import ListFilter
from .saga_records import PendingRequest, SagaStatus, SagaStepRecord
from .store import Row, Store, parse_timestamp, timestamp

if TYPE_CHECKING:
    from .saga_execution import SagaExecution
    from .saga_outbox import OutboxEntry

# The saga runtime (definitions, executions, the outbox and its broker, the event loop's
# threads) is imported by the methods that run sagas, not here: listing and showing stored
# executions, as `durably list` and `show` do, needs none of it.

__all__ = ["SagaExecutionRepository", "SagaExecutionSummary"]


@dataclass(frozen=True)
class SagaExecutionSummary:
    """A stored execution as the CLI shows it; reading it needs no saga definition."""

    id: UUID
    saga_name: str
    fingerprint: str
    status: SagaStatus
    context: SagaContext
    steps: list[SagaStepRecord]
    error: str | None
    rollback_errors: list[str]
    created_at: datetime
    updated_at: datetime
    pending: PendingRequest | None = None
    """The request a paused execution awaits the reply to."""
    compensations: tuple[str, ...] = ()
    """Paths of the steps still to compensate, in order (while rolling back)."""

    @property
    def uuid(self) -> UUID:
        return self.id


class SagaExecutionRepository:
    """Stores saga executions at ``url`` (``sqlite:///path.db``, ``postgresql://...``), or in
    an already open ``store``."""

    def __init__(self, url: str | None = None, *, store: Store | None = None) -> None:
        self.db = store if store is not None else open_store(url)

    def close(self) -> None:
        self.db.close()

    # -- the minos interface ---------------------------------------------------------------

    async def store(self, execution: SagaExecution) -> None:
        """Save ``execution`` and its context."""
        await self.apply(execution)

    async def load(self, uuid: UUID | str) -> SagaExecution:
        """The stored execution, with its definition from this process's registry."""
        from .saga_threads import off_loop

        return await off_loop(self.db, self.load_execution, uuid)

    async def delete(self, uuid: UUID | str | SagaExecution) -> None:
        """Remove the execution, its context, its reply keys and its unsent requests."""
        from .saga_threads import off_loop

        await off_loop(self.db, self.delete_sync, uuid)

    async def apply(
        self,
        execution: SagaExecution,
        reply_key: str | None = None,
        *,
        outbox: OutboxEntry | None = None,
        discard: str | None = None,
    ) -> bool:
        """:meth:`save` off the event loop. The execution is encoded here, on the caller's
        thread (it is the caller's to change), and only the database work moves."""
        from .saga_threads import off_loop

        write = _Write.of(execution, reply_key, outbox, discard)
        saved = await off_loop(self.db, self._write, write)
        if saved:
            execution.updated_at = parse_timestamp(write.now) or execution.updated_at
        return saved

    # -- what the manager and the CLI use ----------------------------------------------------

    def delete_sync(self, uuid: UUID | str | SagaExecution) -> None:
        from .saga_execution import SagaExecution

        key = str(uuid.uuid if isinstance(uuid, SagaExecution) else _as_uuid(uuid))
        with self.db.transaction() as tx:
            tx.execute("saga_delete_outbox", {"id": key})
            tx.execute("saga_delete_replies", {"id": key})
            tx.execute("saga_delete_execution", {"id": key})
            tx.execute("saga_delete_context", {"id": key})

    def save(
        self,
        execution: SagaExecution,
        reply_key: str | None = None,
        *,
        outbox: OutboxEntry | None = None,
        discard: str | None = None,
    ) -> bool:
        """Save the execution and its context in one transaction, recording ``reply_key`` as
        applied; return False, writing nothing, when that reply was applied already. The same
        transaction drops the unsent requests of idempotency key ``discard`` and queues
        ``outbox``, the request the saved state waits on."""
        write = _Write.of(execution, reply_key, outbox, discard)
        saved = self._write(write)
        if saved:
            execution.updated_at = parse_timestamp(write.now) or execution.updated_at
        return saved

    def _write(self, write: _Write) -> bool:
        key, now = write.key, write.now
        with self.db.transaction() as tx:
            if write.reply_key is not None:
                params = {"id": key, "key": write.reply_key, "now": now}
                if not tx.execute("saga_insert_reply", params):
                    return False
            tx.execute("saga_save_context", {"id": key, "value": write.value, "now": now})
            tx.execute("saga_save_execution", write.row)
            for done in (write.discard, write.reply_key):
                # A request abandoned, or answered already (its reply is applied here), must
                # not go out (again): a relay still trying to publish it finds no row.
                if done is not None:
                    tx.execute("saga_outbox_discard", {"id": key, "key": done})
            if write.outbox is not None:
                tx.execute("saga_outbox_insert", write.outbox.row(now))
        return True

    def outbox_count(self, uuid: UUID | str) -> int:
        """How many requests of the execution wait in the outbox, unsent."""
        with self.db.read() as tx:
            row = tx.fetch_one("saga_outbox_count", {"id": str(_as_uuid(uuid))})
        return int(row["n"]) if row is not None else 0

    def load_execution(self, uuid: UUID | str) -> SagaExecution:
        """``load`` without the event loop. Raises ``SagaExecutionNotFoundException``, and
        ``SagaDefinitionNotFound`` when no registered saga has the stored fingerprint."""
        from .saga import registered_saga
        from .saga_execution import SagaExecution

        row = self._row(uuid)
        definition = registered_saga(row["fingerprint"])
        if definition is None:
            raise SagaDefinitionNotFound(
                f"saga {row['saga_name']!r} (fingerprint {row['fingerprint']}) of execution "
                f"{row['id']} is not registered in this process: import the module that defines "
                "and commits it, or pass it to SagaManager(sagas=[...]); a changed definition "
                "has a new fingerprint and cannot resume executions of the old one"
            )
        return SagaExecution.from_state(
            definition,
            UUID(str(row["id"])),
            codec.loads(row["context"]),
            SagaStatus(row["status"]),
            _state(row),
            parse_timestamp(row["created_at"]),
            parse_timestamp(row["updated_at"]),
        )

    def load_sync(self, uuid: UUID | str) -> SagaExecutionSummary:
        """The stored execution as a summary (the CLI's ``show`` and ``context``)."""
        return _summary(self._row(uuid))

    def list_executions(
        self, status: SagaStatus | str | None = None, limit: int = 50
    ) -> list[SagaExecutionSummary]:
        """Stored executions, newest first, optionally of one status."""
        value = status.value if isinstance(status, SagaStatus) else status
        return self.page_executions(ListFilter(status=value), limit)

    def page_executions(self, where: ListFilter, limit: int) -> list[SagaExecutionSummary]:
        """Up to ``limit`` executions matching ``where`` (its ``workflow`` is the saga's
        name; sagas have no idempotency key, so a filter by key matches none), newest first."""
        if where.key is not None:
            return []
        if where.workflow is not None:
            name = "saga_list_executions_by_name"
        elif where.status is not None:
            name = "saga_list_executions_by_status"
        else:
            name = "saga_list_executions"
        with self.db.read() as tx:
            rows = tx.fetch_all(name, where.params(limit))
        return [_summary(row) for row in rows]

    def count_executions(self, where: ListFilter) -> dict[str, int]:
        """How many executions match ``where`` (its status and cursor aside), per status."""
        if where.key is not None:
            return {}
        name = "saga_count_executions_of_name" if where.workflow else "saga_count_executions"
        with self.db.read() as tx:
            rows = tx.fetch_all(name, where.params(0))
        return {str(row["status"]): int(row["n"]) for row in rows}

    def _row(self, uuid: UUID | str) -> Row:
        key = _as_uuid(uuid)
        with self.db.read() as tx:
            row = tx.fetch_one("saga_get_execution", {"id": str(key)})
        if row is None:
            raise SagaExecutionNotFoundException(f"no saga execution has the uuid {key}")
        return row


@dataclass(frozen=True)
class _Write:
    """One save, encoded: what the transaction writes."""

    key: str
    now: str
    value: str
    row: dict[str, Any]
    reply_key: str | None
    outbox: OutboxEntry | None
    discard: str | None

    @classmethod
    def of(
        cls,
        execution: SagaExecution,
        reply_key: str | None,
        outbox: OutboxEntry | None,
        discard: str | None,
    ) -> _Write:
        # Encoded before the transaction: a context that cannot be stored writes nothing.
        value = codec.dumps(execution.context, max_bytes=execution.max_context_bytes)
        key, now = str(execution.uuid), timestamp()
        row = {
            "id": key,
            "saga_name": execution.saga_name,
            "fingerprint": execution.fingerprint,
            "status": execution.status.value,
            "context_id": key,
            "state": json.dumps(execution.state(), separators=(",", ":")),
            "error_details": execution.error,
            "created_at": execution.created_at.isoformat(timespec="microseconds"),
            "now": now,
        }
        return cls(key, now, value, row, reply_key, outbox, discard)


def _as_uuid(value: Any) -> UUID:
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        raise SagaExecutionNotFoundException(f"{value!r} is not a saga execution uuid") from None


def _state(row: Row) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(row["state"])
    return state


def _summary(row: Row) -> SagaExecutionSummary:
    state = _state(row)
    created = parse_timestamp(row["created_at"])
    updated = parse_timestamp(row["updated_at"])
    assert created is not None
    assert updated is not None
    return SagaExecutionSummary(
        id=UUID(str(row["id"])),
        saga_name=row["saga_name"],
        fingerprint=row["fingerprint"],
        status=SagaStatus(row["status"]),
        context=SagaContext._from_data(codec.loads(row["context"])),
        steps=[SagaStepRecord.from_state(step) for step in state.get("steps", [])],
        error=row["error_details"],
        rollback_errors=list(state.get("rollback_errors", [])),
        created_at=created,
        updated_at=updated,
        pending=PendingRequest(**pending)
        if isinstance(pending := state.get("pending"), dict)
        else None,
        compensations=tuple(state.get("compensations") or ()),
    )
