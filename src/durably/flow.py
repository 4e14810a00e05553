"""Flow control across workers (SPEC §3.5), the pure part: what a limit is, the keys a task
and an execution are counted under, and a token bucket's arithmetic.

- ``@wf.task(concurrency=N)``: at most N attempts of that task run at once, over every
  execution, worker and in-process run. Counted from the task rows themselves (those
  ``running`` under the task's key), so a crash never leaks a slot.
- ``Workflow(name, concurrency=Concurrency(max, key=None))``: at most ``max`` executions run
  at once (per value of the initial context's ``key``). An execution takes its slot when its
  first task is claimed ("admitted") and holds it until it finishes: queued ones wait.
- ``rate_limit=RateLimit(name, per_second)``: every attempt of every task naming it takes a
  token from one bucket stored in the database. The bucket holds at most :func:`capacity`
  tokens (a tenth of a second's worth, at least two, at most a second's worth), so a window
  of ``w`` seconds sees at most ``capacity + w * per_second`` starts.

The queries ``claim_limited_tasks`` and ``flow_free`` (sql/) apply these rules in SQL;
this module only builds what they are given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .exceptions import WorkflowDefinitionError

MAX_LIMIT = 1_000_000
MAX_RATE = 1_000_000.0


def _check_count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise WorkflowDefinitionError(f"{what} must be an int from 1 to {MAX_LIMIT}, not {value!r}")
    return value


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise WorkflowDefinitionError(
            f"{what} must be a non-empty str of at most 200 characters, not {value!r}"
        )
    return value


@dataclass(frozen=True)
class Concurrency:
    """At most ``max`` running executions of a workflow; per value of the initial context's
    ``key`` when given (an execution without that key counts under the value ``None``)."""

    max: int
    key: str | None = None

    def __post_init__(self) -> None:
        _check_count("Concurrency max", self.max)
        if self.key is not None:
            _check_name("Concurrency key", self.key)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket shared by every task that names it, across every worker: at most
    ``per_second`` attempt starts per second."""

    name: str
    per_second: float

    def __post_init__(self) -> None:
        _check_name("RateLimit name", self.name)
        rate = self.per_second
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or not 0 < rate <= MAX_RATE
        ):
            raise WorkflowDefinitionError(
                f"RateLimit per_second must be a finite number > 0 and at most {MAX_RATE:g}, "
                f"not {rate!r}"
            )
        object.__setattr__(self, "per_second", float(rate))


def check_task_limits(concurrency: object, rate_limit: object) -> None:
    """``@wf.task(concurrency=, rate_limit=)``, refused at decoration when malformed."""
    if concurrency is not None:
        _check_count("concurrency", concurrency)
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise WorkflowDefinitionError(
            f"rate_limit must be a RateLimit(name, per_second), not {rate_limit!r}"
        )


def check_workflow_limit(concurrency: object) -> Concurrency | None:
    if concurrency is None or isinstance(concurrency, Concurrency):
        return concurrency
    raise WorkflowDefinitionError(
        f"a workflow's concurrency must be Concurrency(max, key=None), not {concurrency!r}"
    )


MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1


def check_priority(priority: object) -> int:
    """``start(..., priority=n)``: an int (higher runs first), stored as a 32-bit integer."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, not {priority}")
    return priority


def capacity(per_second: float) -> float:
    """How many tokens a bucket holds at most: a tenth of a second's worth, but at least two
    (so a claim a few milliseconds late loses no token), and never more than a second's worth
    (a limit under one per second holds one)."""
    return max(1.0, min(per_second, max(2.0, per_second / 10)))


def task_key(workflow: str, task: str) -> str:
    """The key a task's ``concurrency=`` counts its running attempts under."""
    return f"{workflow}/{task}"


def execution_key(
    limit: Concurrency | None, workflow: str, initial: Mapping[str, Any]
) -> str | None:
    """The key a workflow's ``Concurrency`` counts an execution under (None: no limit)."""
    if limit is None:
        return None
    if limit.key is None:
        return workflow
    value = initial.get(limit.key)
    try:
        shown = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        shown = repr(value)
    return f"{workflow}:{shown}"


@dataclass(frozen=True)
class Limits:
    """What the limited claim query is given: each limited task's max, each limited
    workflow's max, each bucket's rate and capacity (JSON objects), and the keys a
    PostgreSQL claim locks first so two workers never count the same slot."""

    tasks: str
    workflows: str
    rates: str
    locks: str

    @classmethod
    def of(cls, definitions: Iterable[Any]) -> Limits:
        tasks: dict[str, int] = {}
        workflows: dict[str, int] = {}
        rates: dict[str, list[float]] = {}
        for wf in definitions:
            if wf.concurrency is not None:
                workflows[wf.name] = wf.concurrency.max
            for task in wf.tasks.values():
                if task.concurrency is not None:
                    tasks[task_key(wf.name, task.name)] = task.concurrency
                if task.rate_limit is not None:
                    rate = task.rate_limit.per_second
                    rates[task.rate_limit.name] = [rate, capacity(rate)]
        locks = sorted({*(f"t:{k}" for k in tasks), *(f"w:{k}" for k in workflows),
                        *(f"r:{k}" for k in rates)})  # fmt: skip
        return cls(json.dumps(tasks), json.dumps(workflows), json.dumps(rates), json.dumps(locks))


def is_limited(wf: Any) -> bool:
    """Whether any flow limit applies to the workflow's tasks (they go through the limited
    claim; the others through the plain one, whose cost does not change)."""
    return wf.concurrency is not None or bool(wf.has_task_limits())
