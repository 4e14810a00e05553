"""The executions list: workflow and saga executions side by side, newest first, one page at a
time, with their counts per status. Read through the two repositories' index-backed list
queries (``repository.listing``, ``SagaExecutionRepository.page_executions``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from ..engine import Engine
from ..json_views import saga_summary_json, summary_json
from ..listing import EARLIEST, Cursor, ListFilter
from ..lookup import saga_repository
from ..results import summary_of

WORKFLOW_STATUSES = ("pending", "running", "paused", "completed", "failed", "cancelled")
SAGA_STATUSES = ("created", "running", "paused", "finished", "errored")
STATUSES = tuple(dict.fromkeys(WORKFLOW_STATUSES + SAGA_STATUSES))
PAGE_SIZES = (25, 50, 100, 200)
MAX_TEXT = 500  # a workflow name or a key longer than this is no filter anyone meant


class BadFilter(ValueError):
    """A list filter that cannot be applied; the message says which and why."""


@dataclass(frozen=True)
class Page:
    filter: ListFilter
    limit: int
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    next_cursor: Cursor | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _moment(value: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadFilter(f"{what} {value!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    # A time without an offset is UTC, as the page shows every time.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if len(value) > MAX_TEXT:
        raise BadFilter(f"{name} is longer than {MAX_TEXT} characters")
    return value or None


def parse_filter(params: Mapping[str, str]) -> tuple[ListFilter, int]:
    """The filter and page size a query string asks for; ``BadFilter`` says what is wrong."""
    status = _text(params, "status")
    if status is not None and status not in STATUSES:
        raise BadFilter(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
    since = _moment(params["since"], "since") if params.get("since") else None
    until = _moment(params["until"], "until") if params.get("until") else None
    if since is not None and until is not None and since >= until:
        raise BadFilter("since must be before until")
    after = None
    if params.get("after"):
        try:
            after = Cursor.parse(params["after"])
        except ValueError as exc:
            raise BadFilter(f"bad page cursor: {exc}") from None
    raw = params.get("limit") or "50"
    if not raw.isdigit() or int(raw) not in PAGE_SIZES:
        raise BadFilter(f"limit must be one of {', '.join(map(str, PAGE_SIZES))}")
    where = ListFilter(status, _text(params, "workflow"), _text(params, "key"), since, until, after)
    return where, int(raw)


def load(engine: Engine, where: ListFilter, limit: int) -> Page:
    """One page of both kinds of execution (``limit`` + 1 read of each tells whether
    another page follows), and the counts per status of everything the filter matches."""
    with engine.store.read() as tx:
        records = engine.runtime.repo.page_executions(tx, where, limit + 1)
        counts = engine.runtime.repo.count_executions(tx, where.unpaged())
    found = [(r.created_at or EARLIEST, r.id, summary_json(summary_of(r))) for r in records]
    sagas = saga_repository(engine)
    if sagas is not None:
        for saga in sagas.page_executions(where, limit + 1):
            found.append((saga.created_at, str(saga.id), saga_summary_json(saga)))
        for status, n in sagas.count_executions(where.unpaged()).items():
            counts[status] = counts.get(status, 0) + n
    # Times compared as times: PostgreSQL returns them in the session's time zone.
    found.sort(key=lambda row: (row[0], row[1]), reverse=True)
    page = found[:limit]
    cursor = Cursor(page[-1][0], page[-1][1]) if len(found) > limit else None
    rows = [row for _, _, row in page]
    ordered = {s: counts[s] for s in STATUSES if s in counts}
    ordered.update({s: n for s, n in counts.items() if s not in ordered})
    return Page(where, limit, rows, ordered, cursor)


def query_string(where: ListFilter, limit: int, **changes: Any) -> str:
    """The list's URL query for ``where`` (with ``changes``), for links and the live poll."""
    where = replace(where, **{k: v for k, v in changes.items() if k != "limit"})
    pairs = {
        "status": where.status,
        "workflow": where.workflow,
        "key": where.key,
        "since": where.since.isoformat() if where.since else None,
        "until": where.until.isoformat() if where.until else None,
        "after": str(where.after) if where.after else None,
        "limit": str(changes.get("limit", limit)),
    }
    return urlencode({k: v for k, v in pairs.items() if v})
