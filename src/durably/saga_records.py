"""What a saga execution records: its status, each step's status, and the request it awaits.

Plain data, saved as JSON with the execution (``SagaExecution.state``) and read back by the
CLI without the saga's definition.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

__all__ = [
    "COMPENSATING",
    "FORWARD",
    "PendingRequest",
    "SagaStatus",
    "SagaStepRecord",
    "SagaStepStatus",
]

FORWARD, COMPENSATING = "forward", "compensating"


class SagaStatus(StrEnum):
    """Where a saga execution is (minos names and values)."""

    Created = "created"
    Running = "running"
    Paused = "paused"
    Finished = "finished"
    Errored = "errored"


class SagaStepStatus(StrEnum):
    """Where one step is (minos names and values, plus ``Compensated``)."""

    Created = "created"
    RunningOnExecute = "running-on-execute"
    FinishedOnExecute = "finished-on-execute"
    ErroredOnExecute = "errored-on-execute"
    PausedByOnExecute = "paused-by-on-execute"
    ErroredByOnExecute = "errored-by-on-execute"
    RunningOnFailure = "running-on-failure"
    PausedOnFailure = "paused-on-failure"
    ErroredOnFailure = "errored-on-failure"
    RunningOnSuccess = "running-on-success"
    ErroredOnSuccess = "errored-on-success"
    RunningOnError = "running-on-error"
    ErroredOnError = "errored-on-error"
    Finished = "finished"
    Compensated = "compensated"


@dataclass
class SagaStepRecord:
    """A step as executed: its path ("1", "2.0"), kind, display name, status and error. A
    conditional step also records the branch it ran: an ``if_then`` index, -1 for
    ``else_then``, ``None`` for nothing."""

    path: str
    kind: str
    name: str
    status: SagaStepStatus = SagaStepStatus.Created
    error: str | None = None
    branch: int | None = None

    def to_state(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> SagaStepRecord:
        return cls(**{**data, "status": SagaStepStatus(data["status"])})


@dataclass(frozen=True)
class PendingRequest:
    """The request a paused execution waits on: ``phase`` is "execute" or "failure";
    ``token`` the secret its reply must echo (empty in executions saved before tokens)."""

    path: str
    phase: str
    key: str
    target: str
    body: str  # the content as JSON (codec.dumps_value)
    token: str = ""

    @classmethod
    def new(cls, saga: UUID, path: str, phase: str, target: str, body: str) -> PendingRequest:
        """A request about to go out. Its key names it (a participant dedupes on it, it is the
        same on every delivery); its token is its unguessable secret, which only the
        participant that received the request can echo in a reply."""
        key = f"{saga}:{path}:{phase}"
        return cls(path, phase, key, target, body, secrets.token_urlsafe(16))
