"""Schedules: ``wf.schedule(cron, ...)`` starts one execution per cron slot (SPEC §3.5).

This module is the pure part: a schedule's definition, checked when it is declared, its slots
and what the catch-up policy makes of them. :mod:`durably.scheduler` fires them.

Catch-up after downtime (``catch_up=``): ``"none"`` fires only a slot noticed within
:data:`ON_TIME` of its time, ``"latest"`` fires the newest missed slot, ``"all"`` fires each,
oldest first, at most :data:`CATCH_UP_LIMIT` (the newest ones); every slot not fired is
counted in ``missed``.

Time zones: cron fields are wall-clock times in ``timezone``. A wall time that occurs twice
(clocks going back) fires once, at its first occurrence; one skipped by clocks going forward
fires at the moment the clock jumps, as cron does. So an hourly schedule in a zone with
daylight saving skips the repeated hour in autumn: interval-like schedules belong in UTC.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .arguments import encode_initial
from .exceptions import DurablyError, WorkflowDefinitionError

if TYPE_CHECKING:
    from .context import Context

POLICIES = ("none", "latest", "all")
CATCH_UP_LIMIT = 100
# A slot noticed this many seconds after its time is on time, not missed (a worker's turn, a
# short database hiccup): "none" still fires it.
ON_TIME = 60.0
# Slots scanned per turn: a long outage of a frequent schedule is caught up in steps of this
# many (about a third of a second each), so the worker keeps serving tasks in between.
SCAN_LIMIT = 10_000
ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
MAX_CONTEXT_BYTES = 1024 * 1024
MAX_NAME = 200


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ModuleNotFoundError as exc:
        raise WorkflowDefinitionError(
            "schedules need croniter: pip install 'durably[schedules]'"
        ) from exc
    return croniter


def _zone(name: object) -> tzinfo:
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError(f"timezone must be an IANA name such as 'UTC', not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name == "UTC":  # a machine without a time-zone database still knows UTC
            return UTC
        raise WorkflowDefinitionError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def to_utc(wall: datetime, zone: tzinfo) -> datetime:
    """A naive wall-clock time in ``zone`` as the UTC instant it fires at: the first of two
    occurrences, or for a time in a gap the instant the clock jumps over it."""
    utc = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == wall:
        return utc
    # In a gap, fold=1 reads it with the offset after the jump, which lands before the jump
    # (PEP 495): the jump lies between the two readings.
    before = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    after = int(utc.timestamp())
    offset = datetime.fromtimestamp(before, zone).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            before = middle
        else:
            after = middle
    return datetime.fromtimestamp(after, UTC)


@dataclass(frozen=True)
class Scan:
    """The slots in a stretch of time: how many, the newest :data:`CATCH_UP_LIMIT` of them,
    and whether the scan reached the end (False: :data:`SCAN_LIMIT` stopped it)."""

    count: int
    newest: tuple[datetime, ...]
    complete: bool


@dataclass(frozen=True)
class CatchUp:
    """What a worker does now: fire these slots, count that many missed, move the cursor."""

    fire: tuple[datetime, ...]
    missed: int
    checked: datetime
    complete: bool


@dataclass(frozen=True, eq=False)
class Schedule:
    """A schedule as declared by :meth:`Workflow.schedule`. ``context`` is the codec text
    every execution it starts begins with."""

    workflow: str
    name: str
    cron: str
    timezone: str
    catch_up: str
    context: str = "{}"

    @classmethod
    def define(
        cls,
        workflow: str,
        cron: object,
        context: Context | Mapping[str, Any] | None = None,
        *,
        name: object = None,
        timezone: object = "UTC",
        catch_up: object = "latest",
    ) -> Schedule:
        """Check everything at definition: a bad cron, timezone, policy, name or context is a
        WorkflowDefinitionError here, never a worker's surprise later."""
        if not isinstance(cron, str) or not cron.strip():
            raise WorkflowDefinitionError(f"cron must be a str such as '0 9 * * *', not {cron!r}")
        text = " ".join(cron.split())
        if text.lower() not in ALIASES:
            fields = text.split(" ")
            if len(fields) != 5:
                raise WorkflowDefinitionError(
                    f"cron {cron!r} has {len(fields)} field(s): write 5 (minute hour "
                    "day-of-month month day-of-week), e.g. '0 9 * * 1-5'"
                )
            if not _croniter().is_valid(text):
                raise WorkflowDefinitionError(f"cron {cron!r} is not a valid cron expression")
        _zone(timezone)
        if catch_up not in POLICIES:
            raise WorkflowDefinitionError(
                f"catch_up must be one of {', '.join(map(repr, POLICIES))}, not {catch_up!r}"
            )
        if name is None:
            name = text
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise WorkflowDefinitionError(
                f"schedule name must be a non-empty str of at most {MAX_NAME} characters"
            )
        try:
            initial = encode_initial(context, MAX_CONTEXT_BYTES)
        except (DurablyError, TypeError) as exc:
            raise WorkflowDefinitionError(f"schedule {name!r}: bad context: {exc}") from exc
        schedule = cls(workflow, name, text, str(timezone), str(catch_up), initial)
        try:
            schedule.next_after(datetime.now(UTC))
        except (ValueError, KeyError) as exc:  # croniter's "failed to find next date"
            raise WorkflowDefinitionError(f"cron {cron!r} never matches a date") from exc
        return schedule

    @property
    def definition(self) -> tuple[str, str, str]:
        return (self.cron, self.timezone, self.catch_up)

    def key(self, slot: datetime) -> str:
        """The idempotency key of the execution a slot starts."""
        return f"schedule:{self.name}:{slot.astimezone(UTC):%Y-%m-%dT%H:%M}Z"

    def _slots(self, after: datetime) -> Any:
        """The slots after ``after``, as UTC instants, in order (one per instant)."""
        zone = _zone(self.timezone)
        # croniter walks naive wall-clock times: reliable where its time-zone handling is not.
        walk = _croniter()(self.cron, after.astimezone(zone).replace(tzinfo=None))
        last: datetime | None = None
        while True:
            slot = to_utc(walk.get_next(datetime), zone)
            if slot > after and slot != last:
                last = slot
                yield slot

    def next_after(self, moment: datetime) -> datetime:
        slot: datetime = next(self._slots(moment))
        return slot

    def scan(self, after: datetime, until: datetime, limit: int | None = None) -> Scan:
        """The slots in ``(after, until]``, at most ``limit`` (:data:`SCAN_LIMIT`) of them."""
        limit = max(SCAN_LIMIT if limit is None else limit, CATCH_UP_LIMIT)
        newest: deque[datetime] = deque(maxlen=CATCH_UP_LIMIT)
        count = 0
        for slot in self._slots(after):
            if slot > until:
                return Scan(count, tuple(newest), True)
            count += 1
            newest.append(slot)
            if count >= limit:
                break
        return Scan(count, tuple(newest), False)

    def plan(self, after: datetime, now: datetime) -> CatchUp:
        """The catch-up policy applied to the slots since the cursor ``after`` (pure)."""
        scan = self.scan(after, now)
        if not scan.complete:
            # A long outage: whatever the policy, only the newest slots may still fire, so all
            # but the last CATCH_UP_LIMIT - 1 of this stretch are missed. Come back for the rest.
            keep = CATCH_UP_LIMIT - 1
            return CatchUp((), scan.count - keep, scan.newest[-keep - 1], False)
        slots = scan.newest
        if self.catch_up == "all":
            fire = slots
        elif self.catch_up == "latest":
            fire = slots[-1:]
        else:
            fire = tuple(s for s in slots[-1:] if (now - s).total_seconds() < ON_TIME)
        return CatchUp(fire, scan.count - len(fire), now, True)
