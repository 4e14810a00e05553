"""``durably.__all__`` is exactly the public API (as httpx checks its own)."""

from __future__ import annotations

import durably

# Every public name SPEC.md spells, importable from ``durably`` itself.
SPEC_NAMES = {
    "Context", "SagaContext", "ExecutionScope", "MISSING",
    "ContextKeyExists", "ContextKeyMissing", "ContextTypeError", "ContextSerializationError",
    "ContextTooLargeError", "ContextConflictError", "ContextError",
    "Workflow", "RetryPolicy", "Engine", "TaskReturnError", "WorkflowDefinitionError",
    "NonRetryable", "when", "all_of", "any_of", "none_of",
    "Saga", "SagaRequest", "SagaResponse", "SagaResponseStatus", "SagaExecution", "SagaStatus",
    "SagaStepStatus", "SagaManager", "SagaExecutionRepository", "InMemoryBroker", "ServiceError",
    "SagaException", "EmptySagaException", "SagaNotCommittedException",
    "AlreadyCommittedException", "AlreadyOnSagaException", "EmptySagaStepException",
    "UndefinedOnExecuteException", "MultipleOnExecuteException", "MultipleOnSuccessException",
    "MultipleOnErrorException", "MultipleOnFailureException", "MultipleElseThenException",
    "SagaExecutionNotFoundException", "SagaExecutionAlreadyExecutedException",
    "SagaFailedExecutionException", "SagaRollbackExecutionException", "SagaDefinitionNotFound",
    "DurablyError", "Worker", "TaskHandle", "Concurrency", "RateLimit",
    "SagaStepException", "SagaNotDefinedException", "SagaExecutionException",
    "SagaStepExecutionException", "SagaFailedExecutionStepException",
    "SagaPausedExecutionStepException", "SagaRollbackExecutionStepException",
    "SagaFailedCommitCallbackException", "SagaResponseException", "BrokerError",
    "SagaOperation", "IfThenAlternative", "ElseThenAlternative",
}  # fmt: skip
# Provided on first access (their drivers are optional extras).
LAZY = {"RabbitMQBroker", "NatsBroker"}


def test_all_names_the_spec_api() -> None:
    assert set(durably.__all__) >= SPEC_NAMES


def test_every_exported_name_resolves() -> None:
    for name in durably.__all__:
        assert getattr(durably, name) is not None, name


def test_exports_are_sorted_and_unique() -> None:
    assert len(set(durably.__all__)) == len(durably.__all__)


def test_all_is_exactly_the_public_api() -> None:
    # As httpx checks its own: every public attribute is exported, and nothing else is.
    public = {
        name
        for name, value in vars(durably).items()
        if not name.startswith("_") and not isinstance(value, type(durably))
    }
    assert set(durably.__all__) == public | LAZY | {"__version__"}


def test_every_error_derives_from_the_root() -> None:
    for name in durably.__all__:
        value = getattr(durably, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, durably.DurablyError), name
