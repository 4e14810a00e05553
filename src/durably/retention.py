"""Retention: deleting finished executions older than an age, with everything they own.

``engine.prune(older_than)`` and ``durably prune --older-than 30d`` delete workflow executions
that are completed, failed or cancelled (by ``completed_at``) and saga executions that are
finished or errored (by their last update), in batches of :data:`BATCH` per transaction, so
a large prune never holds the write lock (SQLite) or row locks (PostgreSQL) for long. A
running, pending or paused execution is never touched. A context is deleted only when nothing
references it any more (a fork shares its parent's initial context and reused outputs).

A prune of every status also deletes the replies a saga participant recorded (its inbox, by
idempotency key) more than the same age ago: they guard against a request delivered twice,
and a broker redelivers within minutes, not weeks. A request delivered again after its reply
is pruned runs its handler again. They are not executions: the count returned leaves them out.

:class:`Pruner` is the background variant a worker runs (``durably worker --retain 30d``):
one batch per worker turn, and a new pass at most every :data:`PRUNE_EVERY` seconds.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import TYPE_CHECKING

from .logs import log
from .repository.maintenance import INBOX, SAGA, WORKFLOW

if TYPE_CHECKING:
    from .repository import Repository
    from .runtime import Runtime
    from .store import Store

logger = logging.getLogger("durably.retention")

BATCH = 500
PRUNE_EVERY = 60.0
MAX_AGE = timedelta(days=100 * 365)
FINISHED = {WORKFLOW: ("completed", "failed", "cancelled"), SAGA: ("finished", "errored")}

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)\s*([wdhms])")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum such as ``1d12h``."""
    compact = text.strip().lower()
    parts = _PART.findall(compact)
    if not compact or _PART.sub("", compact).strip():
        raise ValueError(
            f"{text!r} is not a duration: write a number and a unit (s, m, h, d or w), "
            "e.g. 30d, 12h, 90m, 45s or 1d12h"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if seconds > MAX_AGE.total_seconds():  # before timedelta(), which overflows on huge ones
        raise ValueError(f"{text!r} is longer than the limit of {MAX_AGE.days} days")
    return timedelta(seconds=seconds)


def check_age(older_than: object) -> timedelta:
    if not isinstance(older_than, timedelta):
        raise TypeError(
            f"older_than must be a datetime.timedelta (e.g. timedelta(days=30)), "
            f"not {type(older_than).__name__}"
        )
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, not {older_than}")
    if older_than > MAX_AGE:
        raise ValueError(f"older_than must be at most {MAX_AGE.days} days, not {older_than}")
    return older_than


def targets(status: str | None) -> list[tuple[str, str]]:
    """The (kind, status) pairs a prune deletes: every finished status, or the one asked."""
    every = [(kind, st) for kind, statuses in FINISHED.items() for st in statuses]
    if status is None:
        return every
    found = [(kind, st) for kind, st in every if st == status]
    if not found:
        names = ", ".join(st for _, st in every)
        raise ValueError(
            f"cannot prune status {status!r}: only finished executions are pruned "
            f"(status is one of {names}, or None for all of them)"
        )
    return found


def passes(status: str | None) -> list[tuple[str, str]]:
    """What a prune goes through, in order: :func:`targets`, then, when it prunes every
    status, the participant's inbox."""
    return targets(status) + ([(INBOX, "")] if status is None else [])


def prune(
    store: Store,
    repo: Repository,
    now: float,
    older_than: timedelta,
    status: str | None = None,
    *,
    dry_run: bool = False,
) -> int:
    """Delete (or, ``dry_run``, count) the finished executions older than ``older_than``;
    return how many. Each batch commits on its own: an interrupted prune keeps its progress."""
    cutoff = now - check_age(older_than).total_seconds()
    if dry_run:
        with store.read() as tx:
            return sum(repo.count_prunable(tx, kind, st, cutoff) for kind, st in targets(status))
    counts = dict.fromkeys((WORKFLOW, SAGA, INBOX), 0)
    for kind, st in passes(status):
        while True:
            with store.transaction() as tx:
                deleted = repo.prune_batch(tx, kind, st, cutoff, BATCH)
            counts[kind] += deleted
            if deleted < BATCH:
                break
    total = counts[WORKFLOW] + counts[SAGA]
    if counts[INBOX]:
        _log_inbox(counts[INBOX], older_than)
    if total:
        log(
            logger,
            logging.INFO,
            "pruned %d execution(s) finished more than %s ago",
            total,
            older_than,
            action="pruned",
        )
    return total


class Pruner:
    """Background retention for a worker: :meth:`tick` on every turn does at most one batch."""

    def __init__(self, rt: Runtime, retain: timedelta) -> None:
        self.rt = rt
        self.retain = check_age(retain)
        self._due = rt.now()
        self._pending = passes(None)
        self.pruned = 0  # executions, not inbox replies

    def tick(self) -> None:
        now = self.rt.now()
        if now < self._due:
            return
        kind, status = self._pending[0]
        cutoff = now - self.retain.total_seconds()
        try:
            with self.rt.store.transaction() as tx:
                deleted = self.rt.repo.prune_batch(tx, kind, status, cutoff, BATCH)
        except Exception as exc:  # retention must never stop a worker: try again later
            log(logger, logging.WARNING, "pruning failed: %s", exc, action="prune_failed")
            self._due = now + PRUNE_EVERY
            return
        if kind == INBOX:
            if deleted:
                _log_inbox(deleted, self.retain)
        elif deleted:
            self.pruned += deleted
            log(
                logger,
                logging.INFO,
                "pruned %d %s execution(s) %s more than %s ago",
                deleted,
                kind,
                status,
                self.retain,
                action="pruned",
            )
        if deleted < BATCH:  # this status is done: the next one, or rest until the next pass
            self._pending.pop(0)
            if not self._pending:
                self._pending = passes(None)
                self._due = now + PRUNE_EVERY


def _log_inbox(deleted: int, older_than: timedelta) -> None:
    log(
        logger,
        logging.INFO,
        "pruned %d saga inbox entries recorded more than %s ago",
        deleted,
        older_than,
        action="pruned",
    )
