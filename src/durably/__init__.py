"""durably: durable workflows and sagas whose tasks share a persisted context."""

from .context import MISSING, Context, ExecutionScope, SagaContext
from .engine import Engine
from .exceptions import (
    BrokerError,
    ContextConflictError,
    ContextError,
    ContextKeyExists,
    ContextKeyMissing,
    ContextSerializationError,
    ContextTooLargeError,
    ContextTypeError,
    DurablyError,
    ExecutionNotFound,
    ExecutionStateError,
    MigrationError,
    NonRetryable,
    ServiceError,
    StoreConnectionError,
    StoreError,
    TaskReturnError,
    TaskTimeoutError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowNotRegistered,
)
from .executor import TaskHandle
from .results import ExecutionResult, TaskResult
from .retry import RetryPolicy
from .triggers import TriggerRule, all_of, any_of, none_of, when
from .workflow import Task, Workflow

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "BrokerError",
    "Context",
    "ContextConflictError",
    "ContextError",
    "ContextKeyExists",
    "ContextKeyMissing",
    "ContextSerializationError",
    "ContextTooLargeError",
    "ContextTypeError",
    "DurablyError",
    "Engine",
    "ExecutionNotFound",
    "ExecutionResult",
    "ExecutionScope",
    "ExecutionStateError",
    "MigrationError",
    "NonRetryable",
    "RetryPolicy",
    "SagaContext",
    "ServiceError",
    "StoreConnectionError",
    "StoreError",
    "Task",
    "TaskHandle",
    "TaskResult",
    "TaskReturnError",
    "TaskTimeoutError",
    "TriggerRule",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowNotRegistered",
    "__version__",
    "all_of",
    "any_of",
    "none_of",
    "when",
]
