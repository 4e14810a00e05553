"""The timeline of an execution's attempts, as Gantt bars: pure arithmetic, no I/O.

Each task is a row on one time axis (the execution's creation to its end, or now). Each
attempt is a bar coloured by its outcome; the time between two attempts (a retry's delay)
is a "retry wait" bar, and a task waiting now (a timer, an event, a retry) a "waiting" bar up
to now. A mapped task's row holds its instances' attempts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

MIN_WIDTH = 0.4  # percent: an attempt of a millisecond stays visible


@dataclass(frozen=True)
class Span:
    """One attempt (or wait) of one task: ``kind`` is an attempt's status, ``retry-wait`` or
    ``waiting``; ``end`` None means still going on."""

    kind: str
    start: datetime
    end: datetime | None
    title: str


@dataclass(frozen=True)
class Bar:
    kind: str
    left: float  # percent of the axis
    width: float
    title: str


@dataclass(frozen=True)
class Row:
    task: str
    bars: list[Bar]


@dataclass(frozen=True)
class Timeline:
    rows: list[Row]
    start: datetime | None
    end: datetime | None

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, (self.end - self.start).total_seconds())


def attempt_spans(
    attempts: Iterable[tuple[int, str, datetime | None, datetime | None]],
    *,
    waiting_since: datetime | None = None,
    waiting_for: str = "",
) -> list[Span]:
    """``(number, status, started, finished)`` of a task's attempts, oldest first, as spans,
    with the retry waits between them and, when it waits now, its current wait."""
    spans: list[Span] = []
    previous_end: datetime | None = None
    for number, status, started, finished in attempts:
        if started is None:
            continue
        if previous_end is not None and started > previous_end:
            spans.append(Span("retry-wait", previous_end, started, f"retry wait before #{number}"))
        end = finished if status != "running" else None
        spans.append(Span(status, started, end, f"attempt {number}: {status}"))
        previous_end = finished
    if waiting_since is not None:
        start = previous_end if previous_end is not None else waiting_since
        spans.append(Span("waiting", start, None, waiting_for or "waiting"))
    return spans


def build(
    rows: Sequence[tuple[str, Sequence[Span]]], start: datetime | None, end: datetime
) -> Timeline:
    """Bars for ``(task, spans)`` rows on the axis ``start`` .. ``end`` (now, for an
    unfinished execution: a span without an end runs to it)."""
    firsts = [span.start for _, spans in rows for span in spans]
    if start is None:
        start = min(firsts, default=None)
    if start is None:
        return Timeline([Row(task, []) for task, _ in rows], None, None)
    lasts = [span.end for _, spans in rows for span in spans if span.end is not None]
    end = max([end, *lasts])
    total = max((end - start).total_seconds(), 1e-6)
    built = []
    for task, spans in rows:
        bars = []
        for span in spans:
            left = max(0.0, (span.start - start).total_seconds() / total * 100)
            stop = span.end or end
            width = max(MIN_WIDTH, (stop - span.start).total_seconds() / total * 100)
            width = min(width, 100 - left)
            bars.append(Bar(span.kind, round(left, 3), round(width, 3), span.title))
        built.append(Row(task, bars))
    return Timeline(built, start, end)
