"""Listing workflow executions a page at a time, and counting them per status.

Each :class:`~durably.listing.ListFilter` maps to the one named query whose index serves its
most selective condition (a key, then a workflow, then a status, else time alone); the other
conditions are checked on the rows that index yields. A standalone mixin: it needs only the
transaction.
"""

from __future__ import annotations

from ..listing import ListFilter
from ..records import ExecutionRecord
from ..store import Tx
from .rows import execution_of


class Listing:
    def page_executions(self, tx: Tx, where: ListFilter, limit: int) -> list[ExecutionRecord]:
        """Up to ``limit`` executions matching ``where``, newest first."""
        if where.key is not None:
            name = "list_executions_by_key"
        elif where.workflow is not None:
            name = "list_executions_by_workflow"
        elif where.status is not None:
            name = "list_executions_by_status"
        else:
            name = "list_executions"
        return [execution_of(row) for row in tx.fetch_all(name, where.params(limit))]

    def count_executions(self, tx: Tx, where: ListFilter) -> dict[str, int]:
        """How many executions match ``where`` (its status and cursor aside), per status."""
        if where.key is not None:
            name = "count_executions_by_key"
        elif where.workflow is not None:
            name = "count_executions_of_workflow"
        else:
            name = "count_executions"
        rows = tx.fetch_all(name, where.params(0))
        return {str(row["status"]): int(row["n"]) for row in rows}
