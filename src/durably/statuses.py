"""The status vocabularies of executions and tasks (SPEC §3.2)."""

from __future__ import annotations

from typing import Final

# Execution statuses.
PENDING: Final = "pending"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
PAUSED: Final = "paused"
EXECUTION_TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})

# Task statuses (RUNNING, COMPLETED and FAILED are shared with executions).
NOT_STARTED: Final = "not_started"
READY: Final = "ready"
WAITING: Final = "waiting"
SKIPPED: Final = "skipped"
UPSTREAM_FAILED: Final = "upstream_failed"
ABANDONED: Final = "abandoned"
TASK_TERMINAL: Final = frozenset({COMPLETED, FAILED, SKIPPED, UPSTREAM_FAILED, ABANDONED})
# A dependency in one of these made its dependents' inputs incomplete: it failed the execution.
FAILED_LIKE: Final = frozenset({FAILED, UPSTREAM_FAILED, ABANDONED})
UNSTARTED: Final = frozenset({NOT_STARTED, READY})

# Attempt outcomes (task_attempts.status).
ATTEMPT_COMPLETED: Final = "completed"
ATTEMPT_FAILED: Final = "failed"
ATTEMPT_LOST: Final = "lost"
