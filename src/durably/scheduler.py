"""Firing schedules (:mod:`durably.schedules`): what workers and ``engine.fire_schedules()``
do, and what ``durably schedules`` lists.

Workers fire each slot exactly once across any number of them: the slot is the execution's
idempotency key (``schedule:NAME:2025-01-31T09:00Z``, unique per workflow), and the
schedule's cursor in the ``schedules`` table moves by compare-and-swap, so of two workers that
see the same slots one fires them and counts what was missed.

Where the state lives, and why: a row per (workflow, schedule) holds the cursor (every slot
at or before ``checked_at`` is handled), the missed count and the last run. Executions alone
cannot say which slots were missed during an outage (a missed slot has no execution), nor
where a schedule was before every worker restarted; the row also lets ``durably schedules``
list schedules without importing their modules. A schedule seen for the first time starts
at that moment: no backfill of the slots before it existed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .exceptions import DurablyError, StoreConnectionError
from .logs import log
from .schedules import Schedule

if TYPE_CHECKING:
    from .runtime import Runtime
    from .workflow import Workflow

logger = logging.getLogger("durably.scheduler")

# A schedule whose firing failed (not the database: the worker backs off for that) is tried
# again this many seconds later.
RETRY_AFTER = 60.0


class _SlotTaken(Exception):
    """Someone else is inserting a slot's key right now (rolls this firing back)."""


def fire(rt: Runtime, wf: Workflow, schedule: Schedule) -> tuple[list[str], float]:
    """Start the executions of the schedule's due slots, once across all workers. Return the
    ids started and when the schedule is next due (epoch seconds, the runtime's clock)."""
    now = rt.now()
    moment = datetime.fromtimestamp(now, UTC)
    started: list[str] = []
    try:
        with rt.store.transaction() as tx:
            record = rt.repo.schedule(tx, wf.name, schedule.name)
            if record is None:
                rt.repo.ensure_schedule(tx, wf.name, schedule.name, schedule.definition, now)
                return [], schedule.next_after(moment).timestamp()
            cursor = record.checked_at.astimezone(UTC)
            if cursor >= moment:
                return [], schedule.next_after(cursor).timestamp()
            catch = schedule.plan(cursor, moment)
            if not catch.fire and not catch.missed:
                return [], schedule.next_after(moment).timestamp()
            moved = rt.repo.advance_schedule(
                tx, record, schedule.definition, catch.checked, catch.missed, now
            )
            if not moved:  # another worker handled these slots first
                return [], now
            last = None
            for slot in catch.fire:
                last = _start(rt, tx, wf, schedule, slot, now, started)
            if last is not None:
                rt.repo.record_schedule_run(tx, wf.name, schedule.name, catch.fire[-1], last, now)
            if started:
                rt.repo.notify_work(tx)
    except _SlotTaken:
        return [], now
    if catch.missed:
        log(
            logger,
            logging.WARNING,
            "schedule %r of workflow %r missed %d slot(s) (catch_up=%s)",
            schedule.name,
            wf.name,
            catch.missed,
            schedule.catch_up,
            action="schedule_missed",
            workflow=wf.name,
            schedule=schedule.name,
            missed=catch.missed,
        )
    for execution_id in started:
        log(
            logger,
            logging.INFO,
            "schedule %r of workflow %r started execution %s",
            schedule.name,
            wf.name,
            execution_id,
            action="schedule_fired",
            execution_id=execution_id,
            workflow=wf.name,
            schedule=schedule.name,
        )
    due = schedule.next_after(moment).timestamp() if catch.complete else now
    return started, due


def _start(
    rt: Runtime,
    tx: Any,
    wf: Workflow,
    schedule: Schedule,
    slot: datetime,
    now: float,
    started: list[str],
) -> str:
    """The execution of one slot: queued for workers, or the one its key already names."""
    key = schedule.key(slot)
    existing = rt.repo.execution_by_key(tx, wf.name, key)
    if existing is not None:
        return existing.id
    created = rt.repo.create_execution(
        tx, wf, now, initial=schedule.context, claimed_by=None, key=key
    )
    if created is None:
        raise _SlotTaken
    started.append(created[0])
    return created[0]


def registered_workflows(rt: Runtime) -> list[Workflow]:
    """The latest definition of each workflow name the runtime serves."""
    names = dict.fromkeys(name for name, _ in rt.registry.versions())
    return [rt.registry.by_name(name) for name in names]


def fire_all(rt: Runtime) -> list[str]:
    """Fire every due schedule of the registered workflows now (what a worker's turn does)."""
    started: list[str] = []
    for wf in registered_workflows(rt):
        for schedule in wf.schedules.values():
            started += fire(rt, wf, schedule)[0]
    return started


class Scheduler:
    """A worker's schedules: :meth:`tick` each turn fires those due, and remembers when each
    is next due, so a turn with nothing due costs no query."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._due: dict[tuple[str, str], float] = {}

    def tick(self) -> None:
        now = self.rt.now()
        for wf in registered_workflows(self.rt):
            for schedule in wf.schedules.values():
                key = (wf.name, schedule.name)
                if self._due.get(key, now) > now:
                    continue
                try:
                    _, due = fire(self.rt, wf, schedule)
                except StoreConnectionError:
                    raise  # the worker backs off until the database is back
                except Exception as exc:  # one broken schedule must not stop the worker
                    log(
                        logger,
                        logging.ERROR,
                        "cannot fire schedule %r of workflow %r: %s",
                        schedule.name,
                        wf.name,
                        exc,
                        action="schedule_failed",
                        workflow=wf.name,
                    )
                    due = now + RETRY_AFTER
                self._due[key] = due


def next_slot(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The next slot of a stored schedule (None when it cannot be computed here)."""
    try:
        return Schedule("", "", cron, timezone, "latest").next_after(after)
    except (DurablyError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class ScheduleStatus:
    """What ``durably schedules`` shows of one schedule. ``checked_at`` is None for a schedule
    defined here that no worker has seen yet."""

    workflow: str
    name: str
    cron: str
    timezone: str
    catch_up: str
    next_slot: datetime | None
    last_slot: datetime | None
    last_execution_id: str | None
    last_status: str | None
    missed: int
    checked_at: datetime | None


def statuses(rt: Runtime) -> list[ScheduleStatus]:
    """Every schedule in the database, and those of the registered workflows not yet seen by
    a worker; the next slot by the definition registered here, else by the stored one."""
    with rt.store.read() as tx:
        records = rt.repo.schedules(tx)
    defined = {
        (s.workflow, s.name): s for wf in registered_workflows(rt) for s in wf.schedules.values()
    }
    now = datetime.fromtimestamp(rt.now(), UTC)
    found: list[ScheduleStatus] = []
    for record in records:
        schedule = defined.pop((record.workflow, record.name), None)
        cron, timezone, catch_up = (
            schedule.definition if schedule else (record.cron, record.timezone, record.catch_up)
        )
        after = max(record.checked_at.astimezone(UTC), now)
        found.append(
            ScheduleStatus(
                record.workflow,
                record.name,
                cron,
                timezone,
                catch_up,
                next_slot(cron, timezone, after),
                record.last_slot,
                record.last_execution_id,
                record.last_status,
                record.missed,
                record.checked_at,
            )
        )
    for (workflow, name), schedule in defined.items():
        cron, timezone, catch_up = schedule.definition
        upcoming = next_slot(cron, timezone, now)
        found.append(
            ScheduleStatus(
                workflow, name, cron, timezone, catch_up, upcoming, None, None, None, 0, None
            )
        )
    return sorted(found, key=lambda s: (s.workflow, s.name))
