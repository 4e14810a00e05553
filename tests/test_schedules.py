"""Schedules (SPEC §3.5): ``wf.schedule(cron, ...)`` fires one execution per slot, exactly
once across engines and workers, with the catch-up policies, missed counts and time zones.
Time is a ManualClock the tests move: nothing sleeps for a slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from durably import Engine, Workflow, WorkflowDefinitionError
from durably import schedules as schedules_module
from durably.cli import cli as durably_cli
from durably.clock import ManualClock
from durably.schedules import CATCH_UP_LIMIT, Schedule, to_utc

from .conftest import unique, wait_until

NEW_YORK = ZoneInfo("America/New_York")
START = datetime(2025, 1, 6, 9, 0, 30, tzinfo=UTC)  # a Monday, 30 s after a whole minute


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def scheduled(cron: str = "*/5 * * * *", **options: Any) -> Workflow:
    wf = Workflow(unique("sched"))

    @wf.task()
    def tick(ctx: Any) -> None:
        ctx["ticked"] = True

    wf.schedule(cron, {"source": "cron"}, **options)
    return wf


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START.timestamp())


@pytest.fixture
def timed(store_url: str, clock: ManualClock) -> Iterator[Engine]:
    with Engine(store_url, clock=clock) as opened:
        yield opened


def keys(engine: Engine) -> list[str]:
    return sorted(str(r.key) for r in engine.list(limit=1000))


def slot_keys(name: str, *slots: datetime) -> list[str]:
    return sorted(f"schedule:{name}:{slot:%Y-%m-%dT%H:%M}Z" for slot in slots)


def status_of(engine: Engine, wf: Workflow) -> Any:
    (found,) = [s for s in engine.schedules() if s.workflow == wf.name]
    return found


# -- definitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "fragment"),
    [
        (("* * * *",), {}, "has 4 field(s): write 5"),
        (("0 * * * * *",), {}, "has 6 field(s)"),
        (("61 * * * *",), {}, "not a valid cron expression"),
        (("0 0 31 2 *",), {}, "never matches"),
        (("",), {}, "cron must be a str"),
        ((None,), {}, "cron must be a str"),
        (("0 9 * * *",), {"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        (("0 9 * * *",), {"timezone": ""}, "timezone must be an IANA name"),
        (("0 9 * * *",), {"timezone": 1}, "timezone must be an IANA name"),
        (("0 9 * * *",), {"catch_up": "some"}, "catch_up must be one of 'none', 'latest', 'all'"),
        (("0 9 * * *",), {"name": ""}, "schedule name must be a non-empty str"),
        (("0 9 * * *", {"fn": lambda: 1}), {}, "bad context"),
        (("0 9 * * *", [1]), {}, "bad context"),
    ],
)
def test_bad_definitions_are_refused_at_definition(
    args: tuple[Any, ...], options: dict[str, Any], fragment: str
) -> None:
    wf = Workflow(unique("bad"))
    with pytest.raises(WorkflowDefinitionError) as info:
        wf.schedule(*args, **options)
    assert fragment in str(info.value)
    assert wf.schedules == {}


def test_a_definition_names_itself_and_names_are_unique() -> None:
    wf = Workflow(unique("names"))
    first = wf.schedule("0  9 * * 1-5", {"k": 1}, timezone="Europe/Paris", catch_up="all")
    assert first.name == "0 9 * * 1-5"
    assert wf.schedules == {"0 9 * * 1-5": first}
    assert (first.timezone, first.catch_up, first.context) == ("Europe/Paris", "all", '{"k":1}')
    with pytest.raises(WorkflowDefinitionError, match="already has a schedule named"):
        wf.schedule("0 9 * * 1-5")
    wf.schedule("0 9 * * 1-5", name="weekday-mornings")
    assert wf.schedule("@hourly").name == "@hourly"
    assert first.key(at(2025, 1, 6, 8, 0)) == "schedule:0 9 * * 1-5:2025-01-06T08:00Z"


# -- slots and catch-up (pure) ---------------------------------------------------------------------


def test_catch_up_policies_after_an_outage() -> None:
    after, now = at(2025, 1, 6, 9, 0, 30), at(2025, 1, 6, 10, 2, 0)  # 12 slots of */5 missed
    slots = [at(2025, 1, 6, 9, 5) + timedelta(minutes=5 * i) for i in range(12)]

    def plan(policy: str) -> Any:
        return Schedule.define("w", "*/5 * * * *", catch_up=policy).plan(after, now)

    assert plan("all").fire == tuple(slots)
    assert plan("all").missed == 0
    assert plan("latest").fire == (slots[-1],)
    assert plan("latest").missed == 11
    # 10:00 was 2 minutes ago: not on time, so "none" skips it too.
    assert plan("none").fire == ()
    assert plan("none").missed == 12
    assert {plan(p).checked for p in ("all", "latest", "none")} == {now}


def test_none_still_fires_a_slot_noticed_on_time() -> None:
    schedule = Schedule.define("w", "*/5 * * * *", catch_up="none")
    catch = schedule.plan(at(2025, 1, 6, 9, 50, 0), at(2025, 1, 6, 10, 0, 20))
    assert catch.fire == (at(2025, 1, 6, 10, 0),)
    assert catch.missed == 1  # 9:55


def test_all_fires_at_most_the_newest_hundred_and_counts_the_rest() -> None:
    schedule = Schedule.define("w", "* * * * *", catch_up="all")
    after = at(2025, 1, 6, 0, 0)
    catch = schedule.plan(after, after + timedelta(minutes=250, seconds=5))
    assert len(catch.fire) == CATCH_UP_LIMIT
    assert catch.fire[0] == after + timedelta(minutes=151)
    assert catch.fire[-1] == after + timedelta(minutes=250)
    assert list(catch.fire) == sorted(catch.fire)
    assert catch.missed == 150


def test_a_very_long_outage_is_caught_up_in_bounded_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedules_module, "SCAN_LIMIT", 300)
    schedule = Schedule.define("w", "* * * * *", catch_up="all")
    cursor, now = at(2025, 1, 6, 0, 0), at(2025, 1, 6, 0, 0) + timedelta(minutes=1000, seconds=1)
    missed, fired, steps = 0, (), 0
    while True:
        steps += 1
        catch = schedule.plan(cursor, now)
        missed += catch.missed
        cursor = catch.checked
        if catch.complete:
            fired = catch.fire
            break
        assert catch.fire == ()
    assert steps > 3
    assert (missed, len(fired), fired[-1]) == (900, 100, now - timedelta(seconds=1))


def test_wall_clock_times_across_daylight_saving_changes() -> None:
    # Spring forward (2:00 -> 3:00 in New York): 2:30 does not exist, it fires at the jump.
    spring = Schedule.define("w", "30 2 * * *", timezone="America/New_York")
    slots = spring.scan(at(2024, 3, 9, 12, 0), at(2024, 3, 12, 12, 0)).newest
    assert [s.astimezone(NEW_YORK).isoformat() for s in slots] == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]
    # Fall back (2:00 -> 1:00): 1:30 happens twice and fires once, at the first.
    fall = Schedule.define("w", "30 1 * * *", timezone="America/New_York")
    slots = fall.scan(at(2024, 11, 2, 12, 0), at(2024, 11, 4, 12, 0)).newest
    assert slots == (at(2024, 11, 3, 5, 30), at(2024, 11, 4, 6, 30))
    # An hourly schedule in the gap fires once for 2:00 and 3:00 (the same instant).
    hourly = Schedule.define("w", "0 * * * *", timezone="America/New_York")
    slots = hourly.scan(at(2024, 3, 10, 5, 30), at(2024, 3, 10, 8, 30)).newest
    assert slots == (at(2024, 3, 10, 6, 0), at(2024, 3, 10, 7, 0), at(2024, 3, 10, 8, 0))
    assert to_utc(datetime(2024, 3, 10, 2, 59), NEW_YORK) == at(2024, 3, 10, 7, 0)
    assert to_utc(datetime(2024, 7, 1, 9, 0), NEW_YORK) == at(2024, 7, 1, 13, 0)


# -- firing, on both backends ----------------------------------------------------------------------


def test_a_slot_fires_once_with_the_schedule_context(timed: Engine, clock: ManualClock) -> None:
    wf = scheduled()
    timed.register(wf)
    # First sight records the schedule: slots before it are not backfilled.
    assert timed.fire_schedules() == []
    assert status_of(timed, wf).next_slot == at(2025, 1, 6, 9, 5)
    clock.advance(4 * 60 + 30)  # 9:05:00 exactly
    (started,) = timed.fire_schedules()
    assert timed.fire_schedules() == []
    result = timed.get(started)
    assert result.key == "schedule:*/5 * * * *:2025-01-06T09:05Z"
    assert timed.resume(started).context == {
        "source": "cron",
        "ticked": True,
    }
    listed = status_of(timed, wf)
    assert (listed.last_slot, listed.missed, listed.next_slot) == (
        at(2025, 1, 6, 9, 5),
        0,
        at(2025, 1, 6, 9, 10),
    )
    assert listed.last_execution_id == str(started)
    assert listed.last_status == "completed"


@pytest.mark.parametrize("policy", ["none", "latest", "all"])
def test_catch_up_policies_with_the_clock_moved_over_many_slots(
    timed: Engine, clock: ManualClock, policy: str
) -> None:
    wf = scheduled(catch_up=policy)
    timed.register(wf)
    timed.fire_schedules()
    clock.advance(62 * 60)  # 12 slots: 9:05 ... 10:00, now 10:02:30
    started = timed.fire_schedules()
    slots = [at(2025, 1, 6, 9, 5) + timedelta(minutes=5 * i) for i in range(12)]
    expected = {"none": [], "latest": slots[-1:], "all": slots}[policy]
    assert keys(timed) == slot_keys("*/5 * * * *", *expected)
    assert len(started) == len(expected)
    assert status_of(timed, wf).missed == 12 - len(expected)
    if policy == "all":  # oldest first
        assert [timed.get(i).key for i in started] == slot_keys("*/5 * * * *", *slots)
    # Missed slots stay counted; the next slot fires normally under every policy.
    clock.advance(2 * 60 + 30)
    assert len(timed.fire_schedules()) == 1
    assert status_of(timed, wf).missed == 12 - len(expected)


def test_catch_up_all_is_capped_at_a_hundred(timed: Engine, clock: ManualClock) -> None:
    wf = scheduled("* * * * *", catch_up="all")
    timed.register(wf)
    timed.fire_schedules()
    clock.advance(250 * 60)
    assert len(timed.fire_schedules()) == CATCH_UP_LIMIT
    assert status_of(timed, wf).missed == 150
    assert len(keys(timed)) == CATCH_UP_LIMIT


def _fire_together(engine: Engine, barrier: threading.Barrier, fired: list[Any]) -> None:
    barrier.wait()
    fired.append(engine.fire_schedules())


def test_two_engines_racing_fire_each_slot_once(store_url: str, clock: ManualClock) -> None:
    wf = scheduled("* * * * *", catch_up="all")
    engines = [Engine(store_url, clock=clock, workflows=[wf]) for _ in range(2)]
    try:
        engines[0].fire_schedules()
        for _ in range(3):
            clock.advance(7 * 60)
            barrier = threading.Barrier(len(engines))
            fired: list[list[Any]] = []
            threads = [
                threading.Thread(target=_fire_together, args=(e, barrier, fired)) for e in engines
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(len(ids) for ids in fired) in ([0, 7], [7, 0])
        assert len(keys(engines[0])) == len(set(keys(engines[0]))) == 21
        assert status_of(engines[1], wf).missed == 0
    finally:
        for engine in engines:
            engine.close()


def test_racing_engines_count_missed_slots_once(store_url: str, clock: ManualClock) -> None:
    wf = scheduled("* * * * *", catch_up="latest")
    engines = [Engine(store_url, clock=clock, workflows=[wf]) for _ in range(2)]
    try:
        engines[0].fire_schedules()
        clock.advance(30 * 60)
        assert len(engines[0].fire_schedules() + engines[1].fire_schedules()) == 1
        assert status_of(engines[1], wf).missed == 29
    finally:
        for engine in engines:
            engine.close()


def test_slots_in_a_time_zone_across_a_dst_change(store_url: str) -> None:
    clock = ManualClock(at(2024, 3, 9, 12, 0).timestamp())
    wf = scheduled("30 2 * * *", timezone="America/New_York", catch_up="all")
    with Engine(store_url, clock=clock, workflows=[wf]) as engine:
        engine.fire_schedules()
        clock.advance(3 * 86400)
        assert len(engine.fire_schedules()) == 3
        assert keys(engine) == [
            "schedule:30 2 * * *:2024-03-10T07:00Z",  # 3:00 EDT: 2:30 did not exist
            "schedule:30 2 * * *:2024-03-11T06:30Z",
            "schedule:30 2 * * *:2024-03-12T06:30Z",
        ]
        assert status_of(engine, wf).next_slot == at(2024, 3, 13, 6, 30)


def test_a_worker_fires_its_schedules_and_runs_them(timed: Engine, clock: ManualClock) -> None:
    wf = scheduled("*/5 * * * *")
    timed.register(wf)
    worker = timed.worker(concurrency=2, poll_interval=0.01)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: status_of(timed, wf).checked_at is not None, "the schedule recorded")
        clock.advance(5 * 60)
        wait_until(
            lambda: [r.status for r in timed.list()] == ["completed"], "the slot's execution"
        )
        (result,) = timed.list()
        assert result.key == "schedule:*/5 * * * *:2025-01-06T09:05Z"
    finally:
        worker.stop()
        thread.join(10)


def test_a_stored_schedule_is_listed_without_its_module(store_url: str, clock: ManualClock) -> None:
    wf = scheduled("0 9 * * *", timezone="Europe/Paris")
    with Engine(store_url, clock=clock, workflows=[wf]) as engine:
        engine.fire_schedules()
    with Engine(store_url, clock=clock) as bare:
        (listed,) = bare.schedules()
    assert (listed.workflow, listed.cron, listed.timezone) == (wf.name, "0 9 * * *", "Europe/Paris")
    assert listed.next_slot == at(2025, 1, 7, 8, 0)  # 9:00 in Paris, winter
    assert listed.last_slot is None


# -- the command line ------------------------------------------------------------------------------


def test_cli_schedules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = f"sqlite:///{tmp_path / 'sched.db'}"
    name = unique("cli_sched")
    module = unique("sched_module")
    (tmp_path / f"{module}.py").write_text(
        "from durably import Workflow\n"
        f"wf = Workflow({name!r})\n"
        "@wf.task()\n"
        "def tick(ctx):\n"
        "    pass\n"
        "wf.schedule('0 * * * *', name='hourly', catch_up='none')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        runner = CliRunner()
        empty = runner.invoke(durably_cli, ["schedules", "--db", db])
        assert empty.exit_code == 0, empty.output
        assert "no schedules" in empty.stdout
        defined = runner.invoke(durably_cli, ["schedules", "-m", module, "--db", db, "--json"])
        assert defined.exit_code == 0, defined.output
        (row,) = json.loads(defined.stdout)
        assert row["workflow"] == name
        assert (row["name"], row["cron"], row["catch_up"]) == ("hourly", "0 * * * *", "none")
        assert row["checked_at"] is None
        assert row["next_slot"] is not None
        wf = sys.modules[module].wf
        clock = ManualClock(at(2025, 1, 6, 9, 30).timestamp())
        with Engine(db, clock=clock, workflows=[wf]) as engine:
            engine.fire_schedules()
            clock.advance(3 * 3600)  # 10:00, 11:00, 12:00, all late: "none" misses them
            engine.fire_schedules()
        seen = runner.invoke(durably_cli, ["schedules", "--db", db, "--json"])
        (row,) = json.loads(seen.stdout)
        assert row["missed"] == 3
        assert row["last_slot"] is None
        table = runner.invoke(durably_cli, ["schedules", "--db", db])
        assert table.exit_code == 0, table.output
        assert "hourly" in table.stdout
        assert "0 * * * *" in table.stdout
    finally:
        sys.modules.pop(module, None)


# -- real processes on PostgreSQL ------------------------------------------------------------------

RACER = """
import sys, time
from durably import Engine, Workflow
from durably.clock import ManualClock

url, name, start, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
wf = Workflow(name)

@wf.task()
def tick(ctx):
    pass

wf.schedule("* * * * *", catch_up="all")
clock = ManualClock(start)
with Engine(url, clock=clock, workflows=[wf]) as engine:
    engine.fire_schedules()
    while time.time() < go:  # start the race together
        time.sleep(0.001)
    for _ in range(20):
        clock.advance(60)
        engine.fire_schedules()
"""


@pytest.mark.postgres
@pytest.mark.slow
def test_three_processes_racing_start_one_execution_per_slot(
    postgres_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    name = unique("racing")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    go = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), postgres_url, name, str(START.timestamp()), str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with Engine(postgres_url) as engine:
        found = keys(engine)
        (listed,) = [s for s in engine.schedules() if s.workflow == name]
    slots = [START.replace(second=0) + timedelta(minutes=n) for n in range(1, 21)]
    assert found == slot_keys("* * * * *", *slots)
    assert listed.missed == 0
