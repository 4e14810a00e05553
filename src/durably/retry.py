"""Retry policies: how many attempts a task gets and how long to wait between them."""

from __future__ import annotations

import math
import random
import reprlib
from dataclasses import dataclass, field
from typing import Any

from .exceptions import NonRetryable, WorkflowDefinitionError

BACKOFFS = ("exponential", "fixed", "linear")
# A bound on every delay and timeout: a larger one is a mistake, and an infinite or huge value
# breaks later, far from its cause (an OverflowError computing a retry time, NaN in SQL).
MAX_SECONDS = 365 * 24 * 3600


def is_seconds(value: Any, *, zero_ok: bool) -> bool:
    """Whether ``value`` is a finite number of seconds in range: > 0 (or >= 0), <= 365 days."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Comparisons are False for NaN, and exact for ints too large for a float.
    return (value >= 0 if zero_ok else value > 0) and value <= MAX_SECONDS


def shown(value: Any) -> str:
    """A short form of a bad value for a message (repr fails on an int of 4,300+ digits)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    return reprlib.repr(value)


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts every attempt, the first included (1 means no retry)."""

    max_attempts: int = 1
    backoff: str = "exponential"
    initial_delay: float = 1.0
    max_delay: float = 60.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise WorkflowDefinitionError("RetryPolicy.max_attempts must be an int")
        if self.max_attempts < 1:
            raise WorkflowDefinitionError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff not in BACKOFFS:
            raise WorkflowDefinitionError(
                f"RetryPolicy.backoff must be one of {', '.join(BACKOFFS)}, not {self.backoff!r}"
            )
        for name in ("initial_delay", "max_delay"):
            value: Any = getattr(self, name)
            if not is_seconds(value, zero_ok=True):
                raise WorkflowDefinitionError(
                    f"RetryPolicy.{name} must be a finite number of seconds >= 0 and at most "
                    f"365 days ({MAX_SECONDS} s), not {shown(value)}"
                )
        for name in ("retry_on", "give_up_on"):
            value = getattr(self, name)
            if isinstance(value, type):
                object.__setattr__(self, name, (value,))
            elif not all(isinstance(t, type) and issubclass(t, BaseException) for t in value):
                raise WorkflowDefinitionError(f"RetryPolicy.{name} must be exception classes")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry)."""
        n = max(attempt, 2)
        if self.backoff == "fixed":
            base = self.initial_delay
        elif self.backoff == "linear":
            base = self.initial_delay * (n - 1)
        else:
            try:
                base = math.ldexp(self.initial_delay, n - 2)
            except OverflowError:  # past 2**1023 every positive delay is over the cap anyway
                base = self.max_delay
        base = min(base, self.max_delay)
        if self.jitter:
            base *= (rng or random).uniform(0.75, 1.25)
        return float(base)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether a failed ``attempt`` gets another one."""
        if attempt >= self.max_attempts or isinstance(error, NonRetryable):
            return False
        if self.give_up_on and isinstance(error, self.give_up_on):
            return False
        return isinstance(error, self.retry_on)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "initial_delay": self.initial_delay,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }


NO_RETRY = RetryPolicy()
