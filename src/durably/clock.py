"""Where the engine reads the time: a clock it is given, so tests move time instead of sleeping.

Times are seconds since the epoch (floats), as ``time.time()`` gives them; the repository turns
them into stored timestamps.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """The current time, in seconds since the epoch."""

    def sleep(self, seconds: float) -> None:
        """Pause the calling thread (a test clock may return early)."""


class SystemClock:
    """The real time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told (``advance``), for tests of leases and retries.

    ``sleep`` does not move it: it yields the thread for a moment, so a loop waiting for a
    retry time re-checks soon and sees the time a test set.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(min(max(0.0, seconds), 0.005))


SYSTEM = SystemClock()
