"""durably: durable workflows and sagas whose tasks share a persisted context.

Every public name is imported on first use (PEP 562): ``import durably`` costs next to
nothing, and ``from durably import Workflow`` loads the workflow modules, not the engine, the
sagas or the brokers (``tests/test_exported_members.py`` checks which modules it loads). Type
checkers read the imports below as ordinary ones.
"""

_TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (about 9 ms)
if _TYPE_CHECKING:
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
    from .nats_broker import NatsBroker
    from .participants import RequestInfo, current_request
    from .rabbitmq_broker import RabbitMQBroker
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

# Where each public name lives: the module imported the first time the name is asked for.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "broker": (
        "Broker",
        "InMemoryBroker",
        "Message",
    ),
    "context": (
        "MISSING",
        "Context",
        "ExecutionScope",
        "SagaContext",
    ),
    "engine": ("Engine",),
    "exceptions": (
        "AlreadyCommittedException",
        "AlreadyOnSagaException",
        "BrokerError",
        "ContextConflictError",
        "ContextError",
        "ContextKeyExists",
        "ContextKeyMissing",
        "ContextSerializationError",
        "ContextTooLargeError",
        "ContextTypeError",
        "DurablyError",
        "EmptySagaException",
        "EmptySagaStepException",
        "ExecutionNotFound",
        "ExecutionStateError",
        "MigrationError",
        "MultipleElseThenException",
        "MultipleOnErrorException",
        "MultipleOnExecuteException",
        "MultipleOnFailureException",
        "MultipleOnSuccessException",
        "NonRetryable",
        "SagaDefinitionNotFound",
        "SagaException",
        "SagaExecutionAlreadyExecutedException",
        "SagaExecutionException",
        "SagaExecutionNotFoundException",
        "SagaFailedCommitCallbackException",
        "SagaFailedExecutionException",
        "SagaFailedExecutionStepException",
        "SagaNotCommittedException",
        "SagaNotDefinedException",
        "SagaPausedExecutionStepException",
        "SagaResponseException",
        "SagaRollbackExecutionException",
        "SagaRollbackExecutionStepException",
        "SagaStepException",
        "SagaStepExecutionException",
        "SagaTimeoutException",
        "ServiceError",
        "StoreConflictError",
        "StoreConnectionError",
        "StoreError",
        "TaskInterrupted",
        "TaskReturnError",
        "TaskTimeoutError",
        "UndecodableMessageError",
        "UndefinedOnExecuteException",
        "WaitTimeout",
        "WorkflowDefinitionError",
        "WorkflowError",
        "WorkflowNotRegistered",
    ),
    "executor": ("TaskHandle",),
    "flow": (
        "Concurrency",
        "RateLimit",
    ),
    "participants": (
        "RequestInfo",
        "current_request",
    ),
    "results": (
        "ExecutionResult",
        "TaskResult",
    ),
    "retry": ("RetryPolicy",),
    "saga": (
        "ConditionalSagaStep",
        "ElseThenAlternative",
        "IfThenAlternative",
        "LocalSagaStep",
        "RemoteSagaStep",
        "Saga",
        "SagaOperation",
        "SagaStep",
    ),
    "saga_execution": (
        "SagaExecution",
        "SagaStatus",
        "SagaStepStatus",
    ),
    "saga_manager": ("SagaManager",),
    "saga_messages": (
        "SagaRequest",
        "SagaResponse",
        "SagaResponseStatus",
    ),
    "saga_repository": ("SagaExecutionRepository",),
    "triggers": (
        "TriggerRule",
        "all_of",
        "any_of",
        "none_of",
        "when",
    ),
    "waits": (
        "delay",
        "event",
        "until",
    ),
    "worker": ("Worker",),
    "workflow": (
        "Task",
        "Workflow",
    ),
    "rabbitmq_broker": ("RabbitMQBroker",),  # these two import their drivers, optional extras
    "nats_broker": ("NatsBroker",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

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
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'durably' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
