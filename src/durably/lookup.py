"""Finding executions of both kinds, workflow and saga, by id, by a prefix of their id, by
key or by filter: the command line shows them side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .cli_common import CLIError
from .engine import Engine
from .exceptions import ExecutionNotFound, SagaExecutionNotFoundException
from .json_views import saga_summary_json, summary_json
from .records import ExecutionRecord
from .results import ExecutionResult

if TYPE_CHECKING:
    from .saga_repository import SagaExecutionRepository, SagaExecutionSummary


MIN_PREFIX = 8
"""Hex characters an abbreviated id needs (SPEC §6): enough to be unique in practice."""
SHOWN_CANDIDATES = 5
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class IdPrefix:
    """The first hex digits of an execution id (at least :data:`MIN_PREFIX`, fewer than 32)."""

    digits: str

    def __str__(self) -> str:
        return _dashed(self.digits)

    @property
    def low(self) -> str:
        """The smallest id starting with the prefix; :attr:`high` the largest. Ids compare
        as their hex digits do, as text on SQLite and as uuid on PostgreSQL, so the range
        is an index range scan on either."""
        return str(UUID(self.digits.ljust(32, "0")))

    @property
    def high(self) -> str:
        return str(UUID(self.digits.ljust(32, "f")))


def _dashed(digits: str) -> str:
    """Hex digits as the start of an id's text: ``8-4-4-4-12``."""
    groups, start = [], 0
    for size in (8, 4, 4, 4, 12):
        if start < len(digits):
            groups.append(digits[start : start + size])
        start += size
    return "-".join(groups)


def parse_id(value: str) -> UUID | IdPrefix:
    """An ``ID`` argument: a whole execution id, or a prefix of at least 8 hex characters of
    one (with or without its dashes). Checked before the database is opened."""
    text = value.strip().lower()
    try:
        return UUID(text)
    except ValueError:
        pass
    digits = text.replace("-", "")
    # Dashes only where an id has them, a trailing one included (copied up to a group's end).
    ends = (_dashed(digits) + "-",) if len(digits) in (8, 12, 16, 20) else ()
    well_formed = text in (digits, _dashed(digits), *ends)
    if not digits or not set(digits) <= _HEX or len(digits) >= 32 or not well_formed:
        raise CLIError(
            f"{value!r} is not a valid execution id (expected a UUID, or the first "
            f"{MIN_PREFIX} or more characters of one)"
        )
    if len(digits) < MIN_PREFIX:
        raise CLIError(
            f"{value!r} is not a valid execution id: too short (an abbreviated id needs "
            f"at least {MIN_PREFIX} characters; durably list shows the ids)"
        )
    return IdPrefix(digits)


def resolve_id(engine: Engine, ref: UUID | IdPrefix) -> UUID:
    """The id of the one workflow or saga execution ``ref`` names. A whole id is returned as
    it is (the command's own read finds whether it exists); a prefix costs one query."""
    if isinstance(ref, UUID):
        return ref
    with engine.store.read() as tx:
        found = engine.runtime.repo.executions_by_prefix(
            tx, ref.low, ref.high, limit=SHOWN_CANDIDATES + 1
        )
    if not found:
        raise ExecutionNotFound(f"no execution id starts with {ref}")
    if len(found) > 1:
        count = (
            f"more than {SHOWN_CANDIDATES}" if len(found) > SHOWN_CANDIDATES else str(len(found))
        )
        shown = ", ".join(f"{id_} ({kind})" for id_, kind in found[:SHOWN_CANDIDATES])
        raise CLIError(
            f"execution id prefix {ref} is ambiguous: it matches {count} executions "
            f"({shown}); give more characters"
        )
    return UUID(found[0][0])


def execution_by_key(engine: Engine, workflow: str, key: str) -> ExecutionRecord | None:
    """The execution of ``workflow`` started with idempotency ``key``, if any."""
    with engine.store.read() as tx:
        return engine.runtime.repo.execution_by_key(tx, workflow, key)


def saga_repository(engine: Engine) -> SagaExecutionRepository | None:
    """The saga store on the engine's database (None in a build without sagas)."""
    try:
        from .saga_repository import SagaExecutionRepository
    except ModuleNotFoundError as exc:
        if exc.name == "durably.saga_repository":
            return None
        raise
    return SagaExecutionRepository(store=engine.store)


def find_saga(engine: Engine, execution_id: UUID) -> SagaExecutionSummary | None:
    repo = saga_repository(engine)
    if repo is None:
        return None
    try:
        return repo.load_sync(execution_id)
    except SagaExecutionNotFoundException:
        return None


def find_execution(engine: Engine, execution_id: UUID) -> ExecutionResult | SagaExecutionSummary:
    """The workflow execution with this id, else the saga execution with it."""
    try:
        return engine.get(execution_id)
    except ExecutionNotFound:
        saga = find_saga(engine, execution_id)
        if saga is None:
            raise ExecutionNotFound(f"no execution with id {execution_id}") from None
        return saga


def list_executions(
    engine: Engine, status: str | None, name: str | None, limit: int
) -> list[dict[str, Any]]:
    """Summaries (JSON) of both kinds of execution, newest first."""
    rows = [summary_json(r) for r in engine.list(status=status, workflow=name, limit=limit)]
    repo = saga_repository(engine)
    if repo is not None:
        sagas = [saga_summary_json(e) for e in repo.list_executions(status=status, limit=limit)]
        rows.extend(row for row in sagas if name is None or row["workflow"] == name)
    rows.sort(key=lambda row: row["created_at"] or "", reverse=True)
    return rows[:limit]
