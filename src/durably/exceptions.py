"""Every error durably raises derives from one root, :class:`DurablyError`.

    DurablyError
    ├── ContextError
    │   ├── ContextKeyExists            (also KeyError)
    │   ├── ContextKeyMissing           (also KeyError)
    │   ├── ContextTypeError            (also TypeError)
    │   ├── ContextSerializationError   (also TypeError)
    │   ├── ContextTooLargeError        (also ValueError)
    │   └── ContextConflictError
    ├── WorkflowError
    │   ├── WorkflowDefinitionError     (also ValueError)
    │   ├── WorkflowNotRegistered
    │   ├── TaskReturnError             (also TypeError)
    │   ├── TaskTimeoutError            (also TimeoutError)
    │   ├── TaskInterrupted             (a task raised SystemExit or KeyboardInterrupt)
    │   ├── WaitTimeout                 (also TimeoutError: an event wait timed out)
    │   ├── ExecutionNotFound           (also LookupError)
    │   └── ExecutionStateError
    ├── NonRetryable                    (raised by a task: fail now, never retry)
    ├── StoreError
    │   ├── StoreConnectionError
    │   └── MigrationError
    ├── BrokerError                     (.uuid: the saga execution concerned, if any)
    │   └── UndecodableMessageError     (a message that can never be handled: not redelivered)
    ├── ServiceError                    (raised by a saga participant: reply ERROR)
    └── SagaException                   (minos-microservice-saga's hierarchy from here)
        ├── EmptySagaException, SagaNotCommittedException, AlreadyCommittedException
        ├── SagaStepException
        │   └── SagaNotDefinedException, EmptySagaStepException, AlreadyOnSagaException,
        │       UndefinedOnExecuteException, MultipleOnExecuteException,
        │       MultipleOnSuccessException, MultipleOnErrorException,
        │       MultipleOnFailureException, MultipleElseThenException
        ├── SagaExecutionException
        │   ├── SagaExecutionNotFoundException   (also LookupError)
        │   ├── SagaExecutionAlreadyExecutedException
        │   ├── SagaDefinitionNotFound           (also LookupError)
        │   ├── SagaRollbackExecutionException
        │   ├── SagaTimeoutException             (also TimeoutError)
        │   └── SagaFailedExecutionException
        │       ├── SagaFailedCommitCallbackException
        │       └── SagaFailedExecutionStepException  (also SagaStepExecutionException)
        ├── SagaStepExecutionException
        │   ├── SagaFailedExecutionStepException
        │   ├── SagaPausedExecutionStepException
        │   └── SagaRollbackExecutionStepException
        └── SagaResponseException

A class's docstring is its default message.
"""

from __future__ import annotations

from typing import Any


class DurablyError(Exception):
    """An error occurred in durably."""

    def __init__(self, message: str | None = None, *args: Any) -> None:
        super().__init__(message or (self.__doc__ or "").strip(), *args)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message: keep it readable for every subclass.
        return str(self.args[0]) if self.args else ""


# -- context -----------------------------------------------------------------------------------


class ContextError(DurablyError):
    """The context was used in a way it does not allow."""


class ContextKeyExists(ContextError, KeyError):
    """The key is already in the context."""


class ContextKeyMissing(ContextError, KeyError):
    """The key is not in the context."""


class ContextTypeError(ContextError, TypeError):
    """A context value does not have the expected type."""


class ContextSerializationError(ContextError, TypeError):
    """A context value cannot be stored."""


class ContextTooLargeError(ContextError, ValueError):
    """The context is larger than the configured limit: store the data elsewhere and keep a
    reference to it in the context."""


class ContextConflictError(ContextError):
    """Two dependencies hold different values for one key."""


# -- workflows ---------------------------------------------------------------------------------


class WorkflowError(DurablyError):
    """A workflow could not be defined or run."""


class WorkflowDefinitionError(WorkflowError, ValueError):
    """The workflow definition is invalid."""


class WorkflowNotRegistered(WorkflowError, LookupError):
    """No workflow of that name and version is registered in this process."""


class TaskReturnError(WorkflowError, TypeError):
    """A task must return None, a Context or a dict."""


class TaskTimeoutError(WorkflowError, TimeoutError):
    """The task attempt ran longer than its timeout."""


class TaskInterrupted(WorkflowError):
    """The task raised SystemExit or KeyboardInterrupt: that attempt fails (without retry)
    instead of stopping the engine's threads."""


class WaitTimeout(WorkflowError, TimeoutError):
    """The event the task waited for did not arrive within its timeout."""


class SubworkflowFailed(WorkflowError):
    """A sub-workflow task's child execution failed or was cancelled (its policy may retry
    it: a retry runs a new child)."""


class ExecutionNotFound(WorkflowError, LookupError):
    """No execution has that id."""


class ExecutionStateError(WorkflowError):
    """The execution is not in a state that allows this operation."""


class NonRetryable(DurablyError):
    """The task failed and must not be retried."""


# -- storage and brokers -----------------------------------------------------------------------


class StoreError(DurablyError):
    """The database reported an error."""


class StoreConnectionError(StoreError):
    """The database cannot be reached."""


class StoreConflictError(StoreError):
    """The database aborted the transaction to break a lock cycle with another one (a
    deadlock): nothing of it was written, and running it again may succeed."""


class MigrationError(StoreError):
    """The database schema could not be migrated."""


class BrokerError(DurablyError):
    """The message broker reported an error."""

    def __init__(self, message: str | None = None, *args: Any, uuid: Any = None) -> None:
        super().__init__(message, *args)
        self.uuid = uuid  # the saga execution the error concerns, when there is one


class UndecodableMessageError(BrokerError):
    """The message cannot be decoded: it is rejected, never redelivered."""


class ServiceError(DurablyError):
    """A saga participant rejected the request; its content is sent back as an ERROR reply."""

    def __init__(self, content: Any = None) -> None:
        super().__init__(f"service error: {content!r}")
        self.content = content


# -- sagas (names as in minos-microservice-saga) -----------------------------------------------


class SagaException(DurablyError):
    """A saga could not be defined or run."""


class SagaStepException(SagaException):
    """A saga step is defined in a way that does not allow it to run."""


class SagaNotDefinedException(SagaStepException):
    """The saga step does not belong to a saga."""


class SagaExecutionException(SagaException):
    """A saga execution could not run."""


class EmptySagaException(SagaException):
    """A saga must have at least one step."""


class SagaNotCommittedException(SagaException):
    """The saga must be committed before it runs."""


class AlreadyCommittedException(SagaException):
    """A committed saga cannot be changed."""


class AlreadyOnSagaException(SagaStepException):
    """The step already belongs to a saga."""


class EmptySagaStepException(SagaStepException):
    """The saga step has no callbacks."""


class UndefinedOnExecuteException(SagaStepException):
    """The saga step has no on_execute callback."""


class MultipleOnExecuteException(SagaStepException):
    """The saga step already has an on_execute callback."""


class MultipleOnSuccessException(SagaStepException):
    """The saga step already has an on_success callback."""


class MultipleOnErrorException(SagaStepException):
    """The saga step already has an on_error callback."""


class MultipleOnFailureException(SagaStepException):
    """The saga step already has an on_failure callback."""


class MultipleElseThenException(SagaStepException):
    """The conditional step already has an else_then saga."""


class SagaExecutionNotFoundException(SagaExecutionException, LookupError):
    """No saga execution has that uuid."""


class SagaExecutionAlreadyExecutedException(SagaExecutionException):
    """The saga execution has already finished."""


class SagaDefinitionNotFound(SagaExecutionException, LookupError):
    """No saga definition with the execution's fingerprint is registered in this process."""


class SagaFailedExecutionException(SagaExecutionException):
    """The saga execution failed and was rolled back."""

    def __init__(
        self,
        message: str | None = None,
        *,
        rollback_errors: list[BaseException] | None = None,
        exception: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.rollback_errors: list[BaseException] = list(rollback_errors or [])
        # minos' name for what failed the step (also the exception's __cause__).
        self.exception = exception


class SagaRollbackExecutionException(SagaExecutionException):
    """One or more compensations failed while rolling the saga back."""

    def __init__(
        self, message: str | None = None, *, errors: list[BaseException] | None = None
    ) -> None:
        super().__init__(message)
        self.errors: list[BaseException] = list(errors or [])


class SagaTimeoutException(SagaExecutionException, TimeoutError):
    """The saga did not finish within its timeout."""


class SagaFailedCommitCallbackException(SagaFailedExecutionException):
    """A commit callback of the saga failed."""


class SagaStepExecutionException(SagaException):
    """A step of a saga execution could not run."""


class SagaFailedExecutionStepException(SagaStepExecutionException, SagaFailedExecutionException):
    """A step of the saga execution failed."""


class SagaPausedExecutionStepException(SagaStepExecutionException):
    """A step of the saga execution paused, waiting for a reply."""


class SagaRollbackExecutionStepException(SagaStepExecutionException):
    """A step of the saga execution failed while it was compensated."""


class SagaResponseException(SagaException):
    """A participant's reply is not a SUCCESS."""
