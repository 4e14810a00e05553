"""Edge inputs rejected where they are given, not where they break later: delays and timeouts
out of range, a loop variable bound as a default (SPEC §3), a malformed SQLite URL (§5), and
strings UTF-8 cannot hold (§2)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

import durably
from durably import (
    Context,
    ContextSerializationError,
    Engine,
    RetryPolicy,
    StoreError,
    TaskHandle,
    Workflow,
    WorkflowDefinitionError,
    codec,
)
from durably.backends import open_store
from durably.declaration import wants_handle

from .conftest import unique

YEAR = 365 * 24 * 3600
OUT_OF_RANGE = [math.nan, math.inf, -math.inf, 1e300, 10**400, YEAR + 1, -1]
OUT_OF_RANGE_IDS = ["nan", "inf", "-inf", "1e300", "10**400", "year+1s", "negative"]


# -- delays and timeouts ---------------------------------------------------------------------


@pytest.mark.parametrize("value", OUT_OF_RANGE, ids=OUT_OF_RANGE_IDS)
@pytest.mark.parametrize("field", ["initial_delay", "max_delay"])
def test_a_retry_delay_must_be_finite_and_at_most_a_year(field: str, value: float) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        RetryPolicy(**{field: value})
    message = str(info.value)
    assert f"RetryPolicy.{field} must be a finite number of seconds >= 0" in message
    assert "at most 365 days (31536000 s)" in message


def test_retry_delays_at_the_bounds_are_accepted() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=0, max_delay=YEAR, jitter=False)
    assert policy.delay(2) == 0.0
    assert RetryPolicy(initial_delay=YEAR, max_delay=YEAR, jitter=False).delay(3) == YEAR


def test_an_exponential_delay_past_the_float_range_is_the_cap() -> None:
    # 2 ** 5000 does not fit a float: the delay is max_delay, not an OverflowError.
    policy = RetryPolicy(max_attempts=10_000, initial_delay=0.5, max_delay=30.0, jitter=False)
    assert policy.delay(5_000) == 30.0
    assert RetryPolicy(max_attempts=10_000, initial_delay=0, jitter=False).delay(5_000) == 0.0


@pytest.mark.parametrize("value", [*OUT_OF_RANGE, 0], ids=[*OUT_OF_RANGE_IDS, "zero"])
def test_a_task_timeout_must_be_finite_positive_and_at_most_a_year(value: float) -> None:
    wf = Workflow(unique())
    with pytest.raises(WorkflowDefinitionError) as info:
        wf.task(timeout=value)
    message = str(info.value)
    assert "timeout must be a finite number of seconds > 0" in message
    assert "at most 365 days (31536000 s)" in message
    assert wf.tasks == {}


def test_a_task_timeout_of_a_year_is_accepted() -> None:
    wf = Workflow(unique())
    wf.task(name="slow", timeout=YEAR)(lambda ctx: None)
    assert wf.tasks["slow"].timeout == float(YEAR)


# -- which tasks get the handle --------------------------------------------------------------


def _resolved(fn: Callable[..., Any], annotation: Any) -> Callable[..., Any]:
    fn.__annotations__["handle"] = annotation  # as if annotations were evaluated
    return fn


def _typed_default(ctx: Context, handle: TaskHandle | None = None) -> None: ...


def _optional_default(ctx: Context, handle: Optional[TaskHandle] = None) -> None:  # noqa: UP045
    ...


def _dotted_default(ctx: Context, handle: durably.TaskHandle | None = None) -> None: ...


def _int_default(ctx: Context, i: int = 0) -> None: ...


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda ctx: None, False),
        (lambda ctx, handle: None, True),
        (lambda ctx, handle, /: None, True),
        (lambda ctx, i=1: None, False),
        (_int_default, False),
        (_typed_default, True),
        (_optional_default, True),
        (_dotted_default, True),
        (_resolved(lambda ctx, handle=None: None, TaskHandle), True),
        (_resolved(lambda ctx, handle=None: None, TaskHandle | None), True),
        (_resolved(lambda ctx, handle=None: None, int), False),
        (lambda *args: None, True),
        (lambda ctx, *args: None, True),
        (lambda ctx, i=1, *args: None, False),
    ],
    ids=[
        "ctx",
        "ctx-handle",
        "positional-only",
        "default",
        "annotated-default",
        "TaskHandle-or-None-str",
        "Optional-str",
        "dotted-str",
        "TaskHandle-type",
        "TaskHandle-union-type",
        "int-type",
        "varargs",
        "ctx-varargs",
        "default-then-varargs",
    ],
)
def test_the_handle_goes_to_a_second_parameter_without_default_or_typed_task_handle(
    fn: Callable[..., Any], expected: bool
) -> None:
    assert wants_handle(fn, "task 't'") is expected


def test_tasks_built_in_a_loop_get_their_bound_value_not_the_handle(store_url: str) -> None:
    wf = Workflow(unique())
    previous: list[str] = []
    for i in range(3):

        @wf.task(name=f"step{i}", dependencies=previous)
        def step(ctx: Context, i: int = i) -> None:
            ctx[f"step{i}"] = i * 10

        previous = [f"step{i}"]

    with Engine(store_url) as engine:
        result = engine.run(wf, Context(start=True))
    assert result.status == "completed", result.error
    assert result.context == {"start": True, "step0": 0, "step1": 10, "step2": 20}


# -- SQLite URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["sqlite:/x.db", "sqlite:x.db", "sqlite://host/x.db", "sqlite://:memory:/x.db"]
)
def test_a_malformed_sqlite_url_is_an_error_and_creates_no_file(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert repr(url) in message
    for form in ("sqlite:///relative.db", "sqlite:////absolute/path.db", "sqlite://:memory:"):
        assert form in message
    assert os.listdir(tmp_path) == []


def test_the_accepted_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///relative.db").close()
    open_store(f"sqlite:///{tmp_path / 'absolute.db'}").close()  # the path starts with "/"
    with open_store("sqlite://:memory:") as store:
        assert store.schema_version() > 0
    assert {"relative.db", "absolute.db"} <= set(os.listdir(tmp_path))


# -- strings UTF-8 cannot hold ---------------------------------------------------------------


@dataclass
class Named:
    name: str


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"city": "caf\udce9"}, "city"),
        ({"order": {"lines": [1, ("x", "caf\udce9")]}}, "order.lines[1][1]"),
        ({"people": [Named("\ud800")]}, "people[0].name"),
        ({"tags": {"ok", "b\udc80d"}}, "tags[0]"),
        ({"by_name": {"caf\udce9": 1}}, "by_name"),
    ],
    ids=["value", "nested", "dataclass-field", "set", "key"],
)
def test_a_lone_surrogate_is_a_serialization_error_naming_its_path(
    data: dict[str, Any], path: str
) -> None:
    with pytest.raises(ContextSerializationError) as info:
        codec.dumps(data)
    assert str(info.value).startswith(f"cannot store the context: {path}: ")
    assert "lone surrogate" in str(info.value)
    assert info.value.path == path  # type: ignore[attr-defined]


def test_a_lone_surrogate_top_level_key_is_named() -> None:
    with pytest.raises(ContextSerializationError, match=r"a key with a lone surrogate.*'caf"):
        codec.dumps({"caf\udce9": 1})
    with pytest.raises(ContextSerializationError, match="lone surrogate"):
        codec.dumps_value(["fine", "caf\udce9"])


def test_nul_and_non_ascii_round_trip_through_the_codec() -> None:
    data = {"nul": "a\x00b", "k\x00": ["\x00"], "accents": "café ✓ 𝄞"}
    text = codec.dumps(data)
    assert "\x00" not in text  # escaped as \\u0000: PostgreSQL text cannot hold NUL
    assert codec.loads(text) == data


NUL_VALUES = {"nul": "a\x00b", "k\x00ey": 1, "nested": {"list": ["\x00", ("x\x00",)]}}


def test_nul_characters_round_trip_through_the_store(store_url: str) -> None:
    wf = Workflow(unique())
    seen: dict[str, Any] = {}

    @wf.task()
    def write(ctx: Context) -> None:
        ctx.update(NUL_VALUES)

    @wf.task(dependencies=[write])
    def read(ctx: Context) -> None:
        seen.update(ctx.to_dict())  # loaded from the dependency's saved output

    with Engine(store_url) as engine:
        result = engine.run(wf, {"start": "\x00"})
        assert result.status == "completed", result.error
        assert engine.task_context(result.execution_id, "write") == {"start": "\x00", **NUL_VALUES}
    assert seen == {"start": "\x00", **NUL_VALUES}
    with Engine(store_url) as fresh:
        assert fresh.get(result.execution_id).context == {"start": "\x00", **NUL_VALUES}


def test_a_lone_surrogate_fails_the_task_cleanly(store_url: str) -> None:
    wf = Workflow(unique())

    @wf.task(retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    def decode_name(ctx: Context) -> None:
        ctx["file"] = os.fsdecode(b"caf\xe9.txt")  # "caf\udce9.txt": not valid UTF-8

    @wf.task(dependencies=[decode_name])
    def after(ctx: Context) -> None:
        raise AssertionError("must not run")

    with Engine(store_url) as engine:
        result = engine.run(wf, {})
        assert result.status == "failed"
        task = result.tasks["decode_name"]
        assert task.status == "failed"
        assert task.attempts == 1  # a serialization error is never retried
        assert "ContextSerializationError" in (task.error or "")
        assert "file: a str with a lone surrogate" in (task.error or "")
        assert "lone surrogate" in (result.error or "")
        assert result.tasks["after"].status in ("upstream_failed", "skipped")
        assert engine.get(result.execution_id).status == "failed"  # stored, not left running


def test_a_lone_surrogate_in_the_initial_context_is_refused_at_run(store_url: str) -> None:
    wf = Workflow(unique())
    wf.task(name="t")(lambda ctx: None)
    with Engine(store_url) as engine:
        with pytest.raises(ContextSerializationError, match="name: a str with a lone surrogate"):
            engine.run(wf, {"name": "caf\udce9"})
        assert engine.list(workflow=wf.name) == []
