"""durably: durable workflows and sagas whose tasks share a persisted context."""

from .broker import Broker, InMemoryBroker, Message
from .context import MISSING, Context, ExecutionScope, SagaContext
from .engine import Engine
from .exceptions import (
    AlreadyCommittedException,
    AlreadyOnSagaException,
    BrokerError,
    ContextConflictError,
    ContextError,
    ContextKeyExists,
    ContextKeyMissing,
    ContextSerializationError,
    ContextTooLargeError,
    ContextTypeError,
    DurablyError,
    EmptySagaException,
    EmptySagaStepException,
    ExecutionNotFound,
    ExecutionStateError,
    MigrationError,
    MultipleElseThenException,
    MultipleOnErrorException,
    MultipleOnExecuteException,
    MultipleOnFailureException,
    MultipleOnSuccessException,
    NonRetryable,
    SagaDefinitionNotFound,
    SagaException,
    SagaExecutionAlreadyExecutedException,
    SagaExecutionException,
    SagaExecutionNotFoundException,
    SagaFailedCommitCallbackException,
    SagaFailedExecutionException,
    SagaFailedExecutionStepException,
    SagaNotCommittedException,
    SagaNotDefinedException,
    SagaPausedExecutionStepException,
    SagaResponseException,
    SagaRollbackExecutionException,
    SagaRollbackExecutionStepException,
    SagaStepException,
    SagaStepExecutionException,
    SagaTimeoutException,
    ServiceError,
    StoreConflictError,
    StoreConnectionError,
    StoreError,
    TaskInterrupted,
    TaskReturnError,
    TaskTimeoutError,
    UndecodableMessageError,
    UndefinedOnExecuteException,
    WaitTimeout,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowNotRegistered,
)
from .executor import TaskHandle
from .flow import Concurrency, RateLimit
from .participants import RequestInfo, current_request
from .results import ExecutionResult, TaskResult
from .retry import RetryPolicy
from .saga import (
    ConditionalSagaStep,
    ElseThenAlternative,
    IfThenAlternative,
    LocalSagaStep,
    RemoteSagaStep,
    Saga,
    SagaOperation,
    SagaStep,
)
from .saga_execution import SagaExecution, SagaStatus, SagaStepStatus
from .saga_manager import SagaManager
from .saga_messages import SagaRequest, SagaResponse, SagaResponseStatus
from .saga_repository import SagaExecutionRepository
from .triggers import TriggerRule, all_of, any_of, none_of, when
from .waits import delay, event, until
from .worker import Worker
from .workflow import Task, Workflow

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "AlreadyCommittedException",
    "AlreadyOnSagaException",
    "Broker",
    "BrokerError",
    "Concurrency",
    "ConditionalSagaStep",
    "Context",
    "ContextConflictError",
    "ContextError",
    "ContextKeyExists",
    "ContextKeyMissing",
    "ContextSerializationError",
    "ContextTooLargeError",
    "ContextTypeError",
    "DurablyError",
    "ElseThenAlternative",
    "EmptySagaException",
    "EmptySagaStepException",
    "Engine",
    "ExecutionNotFound",
    "ExecutionResult",
    "ExecutionScope",
    "ExecutionStateError",
    "IfThenAlternative",
    "InMemoryBroker",
    "LocalSagaStep",
    "Message",
    "MigrationError",
    "MultipleElseThenException",
    "MultipleOnErrorException",
    "MultipleOnExecuteException",
    "MultipleOnFailureException",
    "MultipleOnSuccessException",
    "NatsBroker",
    "NonRetryable",
    "RabbitMQBroker",
    "RateLimit",
    "RemoteSagaStep",
    "RequestInfo",
    "RetryPolicy",
    "Saga",
    "SagaContext",
    "SagaDefinitionNotFound",
    "SagaException",
    "SagaExecution",
    "SagaExecutionAlreadyExecutedException",
    "SagaExecutionException",
    "SagaExecutionNotFoundException",
    "SagaExecutionRepository",
    "SagaFailedCommitCallbackException",
    "SagaFailedExecutionException",
    "SagaFailedExecutionStepException",
    "SagaManager",
    "SagaNotCommittedException",
    "SagaNotDefinedException",
    "SagaOperation",
    "SagaPausedExecutionStepException",
    "SagaRequest",
    "SagaResponse",
    "SagaResponseException",
    "SagaResponseStatus",
    "SagaRollbackExecutionException",
    "SagaRollbackExecutionStepException",
    "SagaStatus",
    "SagaStep",
    "SagaStepException",
    "SagaStepExecutionException",
    "SagaStepStatus",
    "SagaTimeoutException",
    "ServiceError",
    "StoreConflictError",
    "StoreConnectionError",
    "StoreError",
    "Task",
    "TaskHandle",
    "TaskInterrupted",
    "TaskResult",
    "TaskReturnError",
    "TaskTimeoutError",
    "TriggerRule",
    "UndecodableMessageError",
    "UndefinedOnExecuteException",
    "WaitTimeout",
    "Worker",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowNotRegistered",
    "__version__",
    "all_of",
    "any_of",
    "current_request",
    "delay",
    "event",
    "none_of",
    "until",
    "when",
]


def __getattr__(name: str) -> object:
    # The network brokers import their drivers (optional extras) only when asked for.
    if name == "RabbitMQBroker":
        from .rabbitmq_broker import RabbitMQBroker

        return RabbitMQBroker
    if name == "NatsBroker":
        from .nats_broker import NatsBroker

        return NatsBroker
    raise AttributeError(f"module 'durably' has no attribute {name!r}")
