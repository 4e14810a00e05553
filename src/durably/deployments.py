"""Executions a deploy left without a definition (SPEC §3.5): who serves what, and what is
stranded.

A worker advertises the definitions it serves (``name@shape version``, see
:mod:`durably.versions`) and, between tasks, looks for queued executions of its workflows that
none of them can run: each is logged once, at WARNING, with the version it needs.
``durably list --stranded`` lists what no live worker serves, or, given modules, what none of
their definitions can run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from .logs import log
from .records import ExecutionRecord
from .runtime import Runtime
from .workflow import Workflow

logger = logging.getLogger("durably.worker")

# How long a worker's advertisement counts as live, in leases since its last refresh.
LIVE_LEASES = 2
# Executions remembered as already logged (beyond that, one may be logged again).
MAX_REMEMBERED = 100_000


@dataclass(frozen=True)
class Stranded:
    """A queued execution no definition can run: it needs ``version`` (of shape ``shape``)."""

    execution_id: str
    workflow: str
    version: str
    shape: str | None
    status: str
    created_at: datetime | None


def served(definitions: Iterable[Workflow]) -> set[str]:
    """What these definitions can run, as the claim query names it."""
    found: set[str] = set()
    for wf in definitions:
        found.add(f"{wf.name}@{wf.shape_version}")
        found.add(f"{wf.name}@{wf.version}")  # rows from before 0008
    return found


class Deployments:
    """A worker's chore: advertise what it serves, and log each stranded execution of its
    workflows once. Ticks at most every ``min(lease / 2, 10)`` seconds."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._every = min(runtime.lease / 2, 10.0)
        self._last = -self._every
        self._logged: dict[str, None] = {}

    def tick(self) -> None:
        if time.monotonic() - self._last < self._every:
            return
        self._last = time.monotonic()
        claimable = self.rt.registry.claimable()
        definitions = list(dict.fromkeys(claimable.values()))
        now = self.rt.now()
        with self.rt.store.transaction() as tx:
            self.rt.repo.advertise(tx, self.rt.worker_id, claimable, self.rt.lease, now)
            self.rt.repo.forget_workers(tx, now - 50 * self.rt.lease)
            names = {wf.name for wf in definitions}
            stranded = self.rt.repo.unserved_executions(tx, claimable, names, 1000) if names else []
        for record in stranded:
            if record.id not in self._logged:
                self._warn(record, definitions)

    def _warn(self, record: ExecutionRecord, definitions: list[Workflow]) -> None:
        if len(self._logged) >= MAX_REMEMBERED:
            self._logged.clear()
        self._logged[record.id] = None
        mine = ", ".join(sorted(wf.version for wf in definitions if wf.name == record.workflow))
        log(
            logger,
            logging.WARNING,
            "execution %s of workflow %r needs version %s, which this worker does not have "
            "(it serves version %s, whose task names or dependencies differ): keep the module "
            "that defines version %s importable and pass it to `durably worker` too",
            record.id,
            record.workflow,
            record.version,
            mine,
            record.version,
            action="execution_stranded",
            execution_id=record.id,
            workflow=record.workflow,
        )

    def retire(self) -> None:
        """The worker stops: it serves nothing any more."""
        try:
            with self.rt.store.transaction() as tx:
                self.rt.repo.retire(tx, self.rt.worker_id)
        except Exception:  # the database may be what stopped it: the advertisement ages out
            pass


def stranded(
    rt: Runtime, definitions: Iterable[Workflow] | None = None, *, limit: int = 1000
) -> tuple[list[Stranded], int]:
    """Queued executions that nothing can run, and how many live workers were asked: relative
    to ``definitions`` when given, else to what the live workers advertised."""
    now = rt.now()
    with rt.store.read() as tx:
        if definitions is not None:
            names: set[str] = served(definitions)
            workers = 0
        else:
            live = [
                w
                for w in rt.repo.worker_versions(tx)
                if w.heartbeat_at is not None
                and w.heartbeat_at.timestamp() >= now - LIVE_LEASES * w.lease
            ]
            names = {version for w in live for version in w.versions}
            workers = len(live)
        records = rt.repo.unserved_executions(tx, names, None, limit)
    found = [
        Stranded(r.id, r.workflow, r.version, r.shape, r.status, r.created_at) for r in records
    ]
    return found, workers
