"""Claims under flow control (SPEC §3.5, :mod:`durably.flow`): which query claims a task, and
what a limited claim books (admitted executions, spent tokens); and the definitions each
worker advertises, for ``durably list --stranded``.

Workflows without limits are claimed by ``claim_tasks`` alone, as before. Those with limits
go through ``lock_flow`` + ``claim_limited_tasks``, two statements (on PostgreSQL the claim's
counts must be read after the lock is held) sent together in one round trip
(:meth:`~durably.store.Tx.fetch_batch`): a limited claim that fills its batch costs what a
plain one does. One that comes back short then sends ``claim_tasks`` (for rows from before a
limit was declared) and ``next_token`` (when a rate held it back) together: one round trip
more.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..flow import Limits, capacity, is_limited
from ..records import Claim, ExecutionRecord, WorkerVersions
from ..store import Row, Statement, Tx, parse_timestamp, timestamp
from .rows import claims_of, execution_of


@dataclass(frozen=True)
class ClaimSets:
    """A worker's claimable definitions (JSON objects ``name@shape version -> the version
    that runs it``): all of them, and those with limits, whose task rows marked
    ``flow_limited`` only the limited claim takes (rows from before a limit was declared
    carry no key to count, so the plain claim takes those)."""

    plain: str | None
    limited: str | None
    limited_keys: str
    limits: Limits
    # Each definition's tasks without dependencies (they run on the initial context, which
    # PostgreSQL's claim reads with them): a JSON object, ``name@shape version -> [names]``.
    roots: str = "{}"


class Flow:
    _claim_sets: tuple[Mapping[str, Any], ClaimSets] | None = None
    # When a rate limit held the last limited claim back: the epoch second its bucket next
    # holds a token (the worker sleeps until then, not less). None otherwise.
    next_token_at: float | None = None
    _workflow_limits: dict[int, tuple[Any, Limits | None]]

    def claim_sets(self, claimable: Mapping[str, Any]) -> ClaimSets:
        """Built once per registry change (the registry hands out the same mapping until)."""
        cached = self._claim_sets
        if cached is not None and cached[0] is claimable:
            return cached[1]
        every = {k: wf.version for k, wf in claimable.items()}
        limited = {k: wf.version for k, wf in claimable.items() if is_limited(wf)}
        sets = ClaimSets(
            json.dumps(every) if every else None,
            json.dumps(limited) if limited else None,
            json.dumps(sorted(limited)),
            Limits.of(dict.fromkeys(wf for wf in claimable.values() if is_limited(wf))),
            json.dumps(
                {
                    k: [name for name, task in wf.tasks.items() if not task.dependencies]
                    for k, wf in claimable.items()
                }
            ),
        )
        self._claim_sets = (claimable, sets)
        return sets

    def limits_of(self, wf: Any) -> Limits | None:
        """One workflow's limits (None: it has none), for an in-process run's claims."""
        cache = self.__dict__.setdefault("_workflow_limits", {})
        found: tuple[Any, Limits | None] | None = cache.get(id(wf))
        if found is None or found[0] is not wf:
            found = (wf, Limits.of([wf]) if is_limited(wf) else None)
            cache[id(wf)] = found
        return found[1]

    def claim_tasks(
        self, tx: Tx, worker: str, claimable: Mapping[str, Any], limit: int, now: float
    ) -> list[Claim]:
        """Claim up to ``limit`` ready tasks of the executions the ``claimable`` definitions
        can run (``name@shape version -> Workflow``); limited workflows first, so plentiful
        unlimited work never starves them."""
        sets = self.claim_sets(claimable)
        claims: list[Claim] = []
        then: list[Statement] = []  # sent together, after the limited claim
        if sets.limited is not None:
            claims = self._claim_limited(tx, worker, sets, limit, now)
            self.next_token_at = None
            if len(claims) < limit and sets.limits.rates != "{}":
                then.append(("next_token", {"rate_limits": sets.limits.rates, "clock": now}))
        if sets.plain is not None and len(claims) < limit:
            then.append(_plain_claim(sets, worker, limit - len(claims), now))
        for (name, _), rows in zip(then, tx.fetch_batch(then), strict=True):
            if name == "claim_tasks":
                claims += claims_of(rows)
            elif rows and rows[0]["at"] is not None:
                self.next_token_at = float(rows[0]["at"])
        return claims

    def plain_claim(
        self, worker: str, claimable: Mapping[str, Any], limit: int, now: float
    ) -> Statement | None:
        """The claim as one statement that needs no other's answer, where it is one (no
        definition has limits), for a caller to send with statements of its own; its rows
        are then :func:`claims_of`'s. None: call :meth:`claim_tasks`."""
        sets = self.claim_sets(claimable)
        if sets.limited is not None or sets.plain is None:
            return None
        return _plain_claim(sets, worker, limit, now)

    def claims_from(self, rows: Sequence[Row]) -> list[Claim]:
        """The claims a :meth:`plain_claim` statement's rows hold."""
        return claims_of(rows)

    def _claim_limited(
        self, tx: Tx, worker: str, sets: ClaimSets, limit: int, now: float
    ) -> list[Claim]:
        limits = sets.limits
        params = {
            **_limit_params(limits, now),
            "worker": worker,
            "versions": sets.limited,
            "limit": limit,
            # Candidates looked at: a batch can be cut short by a key with few free slots.
            "window": limit * 4 + 16,
            "roots": sets.roots,
        }
        _, rows = tx.fetch_batch([_lock_flow(limits, now), ("claim_limited_tasks", params)])
        self._book(tx, rows, limits, now)
        return claims_of(rows)

    def start_limited_task(
        self, tx: Tx, task_id: str, worker: str, now: float, code_version: str, limits: Limits
    ) -> bool:
        """``start_task`` for an in-process run of a limited workflow: only when the task's
        key has a free slot, its bucket a token and its execution a slot (counted under the
        same locks as a worker's claim); the slot and the token are then booked."""
        params = {**_limit_params(limits, now), "id": task_id}
        _, rows = tx.fetch_batch([_lock_flow(limits, now), ("flow_free", params)])
        row = rows[0] if rows else None
        if row is None or any(row[f] is not None and row[f] < 1 for f in _FREE):
            if row is not None and row["rfree"] is not None and row["rfree"] < 1:
                rate = float(json.loads(limits.rates)[row["rate_key"]][0])
                self.next_token_at = now + (1 - float(row["rfree"])) / rate
            return False
        if not self.start_task(tx, task_id, worker, now, code_version):
            return False
        self._book(tx, [row], limits, now)
        return True

    def start_task(
        self, tx: Tx, task_id: str, worker: str, now: float, code_version: str | None = None
    ) -> bool:
        raise NotImplementedError  # the Tasks' (Flow comes after it in the Repository)

    def _book(self, tx: Tx, rows: Iterable[Row], limits: Limits, now: float) -> None:
        """SQLite's limited claim leaves the admissions and the tokens to its caller."""
        rows = list(rows)
        if not rows or rows[0]["booked"]:
            return
        admitted = [str(row["pipeline_execution_id"]) for row in rows if row["admits"]]
        if admitted:
            tx.execute("admit_executions", {"ids": json.dumps(admitted)})
        rates = json.loads(limits.rates)
        for name, count in Counter(row["rate_key"] for row in rows if row["rate_key"]).items():
            if name not in rates:
                continue
            rate = float(rates[name][0])
            params = {"name": name, "count": count, "rate": rate, "capacity": capacity(rate)}
            tx.execute("take_tokens", {**params, "clock": now})

    # -- which definitions workers serve ---------------------------------------------------------

    def advertise(
        self, tx: Tx, worker: str, served: Iterable[str], lease: float, now: float
    ) -> None:
        params = {"worker": worker, "versions": json.dumps(sorted(served)), "lease": lease}
        tx.execute("advertise_versions", {**params, "now": timestamp(now)})

    def retire(self, tx: Tx, worker: str) -> None:
        tx.execute("retire_worker", {"worker": worker})

    def worker_versions(self, tx: Tx) -> list[WorkerVersions]:
        return [
            WorkerVersions(
                worker=row["worker_id"],
                versions=tuple(json.loads(row["versions"])),
                lease=float(row["lease"]),
                started_at=parse_timestamp(row["started_at"]),
                heartbeat_at=parse_timestamp(row["heartbeat_at"]),
            )
            for row in tx.fetch_all("get_worker_versions", {})
        ]

    def forget_workers(self, tx: Tx, cutoff: float) -> None:
        tx.execute("forget_workers", {"cutoff": timestamp(cutoff)})

    def unserved_executions(
        self, tx: Tx, served: Iterable[str], names: Iterable[str] | None, limit: int
    ) -> list[ExecutionRecord]:
        """Queued executions no definition in ``served`` (``name@shape version``) can run,
        of the workflows ``names`` (None: of any)."""
        params = {
            "served": json.dumps(sorted(served)),
            "names": None if names is None else json.dumps(sorted(names)),
            "limit": limit,
        }
        return [execution_of(row) for row in tx.fetch_all("unserved_executions", params)]


_FREE = ("tfree", "rfree", "wfree")


def _lock_flow(limits: Limits, now: float) -> Statement:
    """What a limited claim sends first, in the same round trip: the locks of its keys
    (PostgreSQL) and the buckets it may take tokens from (created full)."""
    return "lock_flow", {"locks": limits.locks, "rate_limits": limits.rates, "clock": now}


def _plain_claim(sets: ClaimSets, worker: str, limit: int, now: float) -> Statement:
    params = {"worker": worker, "now": timestamp(now), "limit": limit, "versions": sets.plain}
    return "claim_tasks", {**params, "limited": sets.limited_keys, "roots": sets.roots}


def _limit_params(limits: Limits, now: float) -> dict[str, Any]:
    return {
        "task_limits": limits.tasks,
        "flow_limits": limits.workflows,
        "rate_limits": limits.rates,
        "clock": now,
        "now": timestamp(now),
    }
