"""Finding executions of both kinds, workflow and saga, by id or by filter: the command line
shows them side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from .engine import Engine
from .exceptions import ExecutionNotFound, SagaExecutionNotFoundException
from .json_views import saga_summary_json, summary_json
from .results import ExecutionResult

if TYPE_CHECKING:
    from .saga_repository import SagaExecutionRepository, SagaExecutionSummary


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
