"""``durably.__all__`` is exactly the public API (as httpx checks its own)."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

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
# Every public name is provided on first access (durably/__init__.py's __getattr__).
LAZY = set(durably._MODULE_OF)


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
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert set(durably.__all__) == public | LAZY | {"__version__"}
    assert set(dir(durably)) >= set(durably.__all__)


def test_type_checkers_see_each_name_where_it_is_loaded_from() -> None:
    # The imports under _TYPE_CHECKING (what mypy and editors read) and _EXPORTS (what
    # __getattr__ imports) are two lists of the same names: they must agree.
    tree = ast.parse(inspect.getsource(durably))
    (block,) = [node for node in tree.body if isinstance(node, ast.If)]
    typed = {
        alias.name: str(node.module)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == durably._MODULE_OF


def test_a_lazy_name_is_the_object_its_module_defines() -> None:
    from durably import engine, workflow

    assert durably.Engine is engine.Engine
    assert durably.Workflow is workflow.Workflow
    assert "Engine" in vars(durably)  # cached: the next access is a plain attribute


def test_every_error_derives_from_the_root() -> None:
    for name in durably.__all__:
        value = getattr(durably, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, durably.DurablyError), name
