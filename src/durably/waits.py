"""Durable waits (SPEC §3.4): a task that waits for a time or for an event before it runs.

``@wf.task(wait=delay(30))``, ``wait=until(datetime)``, ``wait=event("approved",
timeout=3600, key="approval")``. A ready task with a wait becomes ``waiting``: its wake time
and the event it waits for are stored with it, so no process needs to stay up meanwhile. An
event's payload lands in the task's input at ``key`` (default: the event's name); an event
wait past its timeout fails that attempt with :class:`~durably.WaitTimeout`, retried by the
task's policy like any error. A wait is satisfied once per execution: a retry of the task
does not wait again, unless the wait itself timed out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .exceptions import WorkflowDefinitionError

MAX_WAIT = 366 * 24 * 3600.0  # a year and a day: longer is almost surely a unit mistake


def _seconds(value: object, what: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_WAIT  # compared before isfinite: a huge int overflows it
        or not math.isfinite(value)
    ):
        raise WorkflowDefinitionError(
            f"{what} must be a number of seconds (or a timedelta) from 0 to {MAX_WAIT:g}, "
            f"not {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class Wait:
    """Base of the three waits; ``to_json`` is what the task row stores."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def wake_at(self, now: float) -> float | None:
        """When a timer wait is over, or when an event wait times out (None: never)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Delay(Wait):
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": "delay", "seconds": self.seconds}

    def wake_at(self, now: float) -> float | None:
        return now + self.seconds


@dataclass(frozen=True)
class Until(Wait):
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"kind": "until", "at": self.at.isoformat()}

    def wake_at(self, now: float) -> float | None:
        return self.at.timestamp()


@dataclass(frozen=True)
class Event(Wait):
    name: str
    timeout: float | None = None
    key: str | None = None

    @property
    def context_key(self) -> str:
        """Where the payload lands in the task's input."""
        return self.key or self.name

    def to_json(self) -> dict[str, Any]:
        return {"kind": "event", "name": self.name, "timeout": self.timeout, "key": self.key}

    def wake_at(self, now: float) -> float | None:
        return None if self.timeout is None else now + self.timeout


def delay(duration: float | timedelta) -> Wait:
    """Wait this long (seconds or a timedelta) before the task runs."""
    return Delay(_seconds(duration, "delay()"))


def until(moment: datetime) -> Wait:
    """Wait until this moment (an aware datetime) before the task runs."""
    if not isinstance(moment, datetime):
        raise WorkflowDefinitionError(f"until() needs a datetime, not {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise WorkflowDefinitionError(
            "until() needs an aware datetime (with a timezone): a naive one is ambiguous "
            "across machines; use datetime(..., tzinfo=timezone.utc)"
        )
    return Until(moment)


def event(name: str, timeout: float | timedelta | None = None, key: str | None = None) -> Wait:
    """Wait for ``engine.send(execution_id, name, payload)``; the payload lands in the input
    at ``key`` (default ``name``). Past ``timeout`` seconds the attempt fails (WaitTimeout)."""
    if not isinstance(name, str) or not name.strip():
        raise WorkflowDefinitionError(f"event() needs a non-empty str name, not {name!r}")
    if key is not None and (not isinstance(key, str) or not key or key.startswith("_")):
        raise WorkflowDefinitionError(
            f"event() key must be a non-empty str not starting with '_', not {key!r}"
        )
    seconds = None if timeout is None else _seconds(timeout, "event() timeout")
    if seconds == 0:
        raise WorkflowDefinitionError("event() timeout must be > 0 (or None: no timeout)")
    return Event(name, seconds, key)


def from_json(data: object) -> Wait | None:
    """The wait stored with a task (None: it has none, or the row predates waits)."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind == "delay":
        return Delay(float(data["seconds"]))
    if kind == "until":
        return Until(datetime.fromisoformat(str(data["at"])))
    if kind == "event":
        timeout = data.get("timeout")
        return Event(
            str(data["name"]), None if timeout is None else float(timeout), data.get("key")
        )
    return None
