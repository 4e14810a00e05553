"""Execution ids abbreviated to a unique prefix of 8 or more characters (SPEC §6), for
workflow and saga executions, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from uuid import UUID

import pytest

from durably import Engine
from durably.context import SagaContext
from durably.lookup import IdPrefix, parse_id
from durably.repository import Repository, executions
from durably.saga import Saga
from durably.saga_execution import SagaExecution
from durably.saga_repository import SagaExecutionRepository

from . import cli_app
from .test_cli import ENV_NAMES, ROOT, as_json, assert_one_line_error, invoke, ok


def noop(ctx: SagaContext) -> None:
    pass


SAGA = Saga("cli_ids_saga").local_step(noop).commit()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli_app, "FAIL_FRAGILE", True)


@pytest.fixture
def start_as(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``start_as(id, wf=..., context=...)``: queue a workflow execution with a chosen id
    (the first id the repository draws for an execution is its own)."""
    engine = Engine(store_url)

    def start(execution_id: str, wf: object = cli_app.pipeline, **context: object) -> str:
        chosen = iter([execution_id])
        real = executions.random_id
        with monkeypatch.context() as patch:
            patch.setattr(executions, "random_id", lambda: next(chosen, None) or real())
            started = engine.start(wf, context)  # type: ignore[arg-type]
        assert str(started) == execution_id
        return execution_id

    yield start
    engine.close()


def save_saga(store_url: str, execution_id: str) -> str:
    repo = SagaExecutionRepository(store_url)
    try:
        repo.save(SagaExecution.from_definition(SAGA, {"order": 1}, UUID(execution_id)))
    finally:
        repo.close()
    return execution_id


# -- parsing -------------------------------------------------------------------------------------


def test_parse_id_accepts_whole_ids_and_prefixes_of_8_or_more_hex_characters() -> None:
    whole = uuid.uuid4()
    assert parse_id(str(whole)) == whole
    assert parse_id(f"  {str(whole).upper()} ") == whole
    assert parse_id(whole.hex) == whole
    assert parse_id("ABCDEF01") == IdPrefix("abcdef01")
    assert parse_id("abcdef01-") == IdPrefix("abcdef01")
    assert parse_id("abcdef01-23") == IdPrefix("abcdef0123")
    assert parse_id("abcdef0123") == IdPrefix("abcdef0123")
    prefix = parse_id("abcdef01-23")
    assert isinstance(prefix, IdPrefix)
    assert str(prefix) == "abcdef01-23"
    assert prefix.low == "abcdef01-2300-0000-0000-000000000000"
    assert prefix.high == "abcdef01-23ff-ffff-ffff-ffffffffffff"
    assert parse_id(str(whole)[:-1]) == IdPrefix(whole.hex[:-1])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abcdef0", "too short"),
        ("", "not a valid execution id"),
        ("abcdefgh", "not a valid execution id"),
        ("abcd-ef01", "not a valid execution id"),
        ("abcdef01-2-3", "not a valid execution id"),
        ("abcdef01--", "not a valid execution id"),
    ],
)
def test_parse_id_refuses(value: str, message: str) -> None:
    result = invoke("show", value, "--db", "sqlite:///:memory:")
    assert_one_line_error(result, message)


# -- one execution by prefix ---------------------------------------------------------------------


def test_a_unique_prefix_works_for_show_context_cancel(store_url: str) -> None:
    with Engine(store_url) as engine:
        execution_id = str(engine.start(cli_app.pipeline, {"x": 1}))
        engine.start(cli_app.pipeline, {"x": 2})  # another, with another prefix
    for prefix in (execution_id[:8], execution_id[:13].upper(), execution_id[:20]):
        assert as_json(invoke("show", prefix, "--db", store_url, "--json"))["id"] == execution_id
    assert execution_id in ok(invoke("show", execution_id[:8], "--db", store_url)).stdout
    assert as_json(invoke("context", execution_id[:8], "--db", store_url, "--json")) == {"x": 1}
    data = as_json(invoke("cancel", execution_id[:8], "--db", store_url, "--json"))
    assert data["id"] == execution_id
    assert data["status"] == "cancelled"


def test_a_unique_prefix_works_for_retry_and_fork(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Engine(store_url) as engine:
        failed = str(engine.run(cli_app.flaky, {"amount": 3}).execution_id)
    assert as_json(
        invoke("context", failed[:9], "--task", "prepare", "--db", store_url, "--json")
    ) == {"amount": 3, "prepared": 3}
    monkeypatch.setattr(cli_app, "FAIL_FRAGILE", False)
    forked = as_json(invoke("fork", failed[:8], "--from", "fragile", "--db", store_url, "--json"))
    assert forked["id"] != failed
    assert forked["status"] == "completed"
    retried = as_json(invoke("retry", failed[:8], "--db", store_url, "--json"))
    assert retried["id"] == failed
    assert retried["status"] == "completed"


def test_a_saga_execution_by_prefix(store_url: str) -> None:
    saga_id = save_saga(store_url, str(uuid.uuid4()))
    assert as_json(invoke("show", saga_id[:8], "--db", store_url, "--json"))["id"] == saga_id
    assert "cli_ids_saga" in ok(invoke("show", saga_id[:8], "--db", store_url)).stdout
    assert as_json(invoke("context", saga_id[:10], "--db", store_url, "--json")) == {"order": 1}
    # Found by its prefix, then rolled back as a saga is (it ends errored).
    assert "errored" in ok(invoke("cancel", saga_id[:8], "--db", store_url)).stdout


def test_no_execution_with_that_prefix(store_url: str) -> None:
    with Engine(store_url) as engine:
        execution_id = str(engine.start(cli_app.pipeline, {}))
    other = "0" * 8 if not execution_id.startswith("0") else "f" * 8
    for command in ("show", "context", "cancel", "retry", "resume"):
        assert_one_line_error(
            invoke(command, other, "--db", store_url), f"no execution id starts with {other}"
        )
    assert_one_line_error(
        invoke("fork", other, "--from", "start", "--db", store_url), "no execution id starts"
    )


# -- ambiguous prefixes --------------------------------------------------------------------------


def test_an_ambiguous_prefix_lists_the_candidates(
    store_url: str, start_as: Callable[..., str]
) -> None:
    first = start_as("abcdef01-1111-4000-8000-000000000001", x=1)
    second = start_as("abcdef01-2222-4000-8000-000000000002", x=2)
    start_as("abcdef02-1111-4000-8000-000000000003")  # shares 7 characters only
    for command in ("show", "context", "cancel", "retry", "resume"):
        assert_one_line_error(
            invoke(command, "abcdef01", "--db", store_url),
            "execution id prefix abcdef01 is ambiguous: it matches 2 executions",
            f"{first} (workflow)",
            f"{second} (workflow)",
            "give more characters",
        )
    # One more character decides; the execution with the next prefix is not a candidate.
    assert as_json(invoke("context", "abcdef01-1", "--db", store_url, "--json")) == {"x": 1}
    assert as_json(invoke("context", "abcdef012", "--db", store_url, "--json")) == {"x": 2}
    assert as_json(invoke("show", "ABCDEF02", "--db", store_url, "--json"))["id"].startswith(
        "abcdef02"
    )


def test_a_prefix_shared_by_a_workflow_and_a_saga_execution(
    store_url: str, start_as: Callable[..., str]
) -> None:
    workflow_id = start_as("0badc0de-0000-4000-8000-000000000001")
    saga_id = save_saga(store_url, "0badc0de-ffff-4000-8000-000000000002")
    assert_one_line_error(
        invoke("show", "0badc0de", "--db", store_url),
        f"{workflow_id} (workflow)",
        f"{saga_id} (saga)",
    )
    assert as_json(invoke("show", "0badc0de-f", "--db", store_url, "--json"))["kind"] == "saga"
    assert as_json(invoke("show", "0badc0de-0", "--db", store_url, "--json"))["kind"] == (
        "workflow"
    )


def test_many_candidates_show_five(store_url: str, start_as: Callable[..., str]) -> None:
    ids = [start_as(f"feedface-{n:04x}-4000-8000-000000000000") for n in range(7)]
    result = invoke("show", "feedface", "--db", store_url)
    assert_one_line_error(result, "matches more than 5 executions", *ids[:5])
    assert ids[5] not in result.stderr
    assert "more than 5" in result.stderr


def test_a_whole_id_needs_no_prefix_query(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Engine(store_url) as engine:
        execution_id = str(engine.start(cli_app.pipeline, {}))

    def refuse(*args: object, **kwargs: object) -> list[tuple[str, str]]:
        raise AssertionError("a whole id was looked up as a prefix")

    monkeypatch.setattr(Repository, "executions_by_prefix", refuse)
    assert as_json(invoke("show", execution_id, "--db", store_url, "--json"))["id"] == execution_id
    assert as_json(invoke("cancel", execution_id, "--db", store_url, "--json"))["id"] == (
        execution_id
    )


def test_prefix_candidates_come_in_id_order(store_url: str, start_as: Callable[..., str]) -> None:
    made = [
        start_as(f"c0ffee00-{n:04x}-4000-8000-{n:012x}") for n in (3, 1, 2)
    ]  # inserted out of order
    result = invoke("show", "c0ffee00", "--db", store_url)
    positions = [result.stderr.index(i) for i in sorted(made)]
    assert positions == sorted(positions)
