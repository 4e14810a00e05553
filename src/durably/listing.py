"""Which executions a list shows, and where one page of it starts: the filters of
``durably list`` and the dashboard, and the keyset cursor that pages through them.

Pure data. The workflow repository (:mod:`durably.repository.listing`) and the saga
repository turn a :class:`ListFilter` into the one index-backed named query that fits it:
executions are ordered newest first by ``(created_at, id)``, and a page starts strictly
after the cursor, so a page costs an index range scan of ``limit`` rows however deep it is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

# Bounds that every stored time and id lie inside: a filter always binds a range, so each
# query has one shape (no ``:x IS NULL OR`` branch, which no planner turns into an index range).
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
LAST_ID = "ffffffff-ffff-ffff-ffff-ffffffffffff"
FIRST_ID = "00000000-0000-0000-0000-000000000000"


def stored(moment: datetime) -> str:
    """A time as the stores write it (``store.timestamp``): UTC, fixed microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Cursor:
    """The last execution of the previous page: the next page starts strictly after it."""

    created_at: datetime
    id: str

    def __str__(self) -> str:
        return f"{self.created_at.isoformat()}_{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor as :meth:`__str__` wrote it; ``ValueError`` for anything else."""
        moment, sep, ident = text.rpartition("_")
        if not sep:
            raise ValueError(f"{text!r} is not a page cursor")
        at = datetime.fromisoformat(moment)
        if at.tzinfo is None:
            raise ValueError(f"{text!r} is not a page cursor (its time has no timezone)")
        return cls(at, str(UUID(ident)))


@dataclass(frozen=True)
class ListFilter:
    """Executions of one ``status``, ``workflow`` (or saga name) and idempotency ``key``
    (each None: any), created in ``[since, until)``, starting after ``after``."""

    status: str | None = None
    workflow: str | None = None
    key: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: Cursor | None = None

    def params(self, limit: int) -> dict[str, object]:
        """The bind parameters every list query of both repositories takes."""
        before_at, before_id = LATEST, LAST_ID
        if self.until is not None and self.until < before_at:
            before_at, before_id = self.until, FIRST_ID  # until is exclusive
        if self.after is not None and self.after.created_at <= before_at:
            before_at, before_id = self.after.created_at, self.after.id
        return {
            "status": self.status,
            "workflow": self.workflow,
            "key": self.key,
            "since": stored(self.since or EARLIEST),
            "until": stored(self.until or LATEST),
            "before_at": stored(before_at),
            "before_id": before_id,
            "limit": limit,
        }

    def unpaged(self) -> ListFilter:
        """The same executions from the first page (what the counts cover)."""
        return replace(self, after=None, status=None)
