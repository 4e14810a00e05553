"""The pure rules of SPEC §3.1-§3.2, without a database: retry delays, trigger evaluation and
merge strategies."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from durably import (
    Context,
    ContextConflictError,
    NonRetryable,
    RetryPolicy,
    TaskReturnError,
    TriggerRule,
    WorkflowDefinitionError,
    WorkflowError,
    all_of,
    any_of,
    none_of,
    when,
)
from durably.merge import deep, latest_wins, merge, strict
from durably.triggers import as_rule, should_run

# -- RetryPolicy ------------------------------------------------------------------------------


class _EdgeRng:
    """A stand-in for ``random.Random`` that always draws one end of the interval."""

    def __init__(self, end: str) -> None:
        self.end = end
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a if self.end == "low" else b


def test_retry_policy_defaults_match_the_spec() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 1
    assert policy.backoff == "exponential"
    assert policy.initial_delay == 1.0
    assert policy.max_delay == 60.0
    assert policy.jitter is True
    assert policy.retry_on == (Exception,)
    assert policy.give_up_on == ()


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        # attempt n >= 2: fixed = initial; linear = initial*(n-1); exponential = initial*2^(n-2)
        ("fixed", [2.0, 2.0, 2.0, 2.0, 2.0]),
        ("linear", [2.0, 4.0, 6.0, 8.0, 10.0]),
        ("exponential", [2.0, 4.0, 8.0, 16.0, 32.0]),
    ],
)
def test_delay_per_attempt_without_jitter(backoff: str, expected: list[float]) -> None:
    policy = RetryPolicy(
        max_attempts=10, backoff=backoff, initial_delay=2.0, max_delay=1000.0, jitter=False
    )
    assert [policy.delay(n) for n in range(2, 7)] == expected


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("fixed", [7.0, 7.0, 7.0, 7.0]),  # initial above the cap: capped too
        ("linear", [7.0, 7.0, 7.0, 7.0]),
        ("exponential", [7.0, 7.0, 7.0, 7.0]),
    ],
)
def test_delay_is_capped_at_max_delay(backoff: str, expected: list[float]) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay=9.0, max_delay=7.0, jitter=False)
    assert [policy.delay(n) for n in range(2, 6)] == expected


def test_exponential_delay_reaches_the_cap_and_stays_there() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=10.0, jitter=False)
    assert [policy.delay(n) for n in range(2, 9)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_linear_delay_reaches_the_cap() -> None:
    policy = RetryPolicy(backoff="linear", initial_delay=3.0, max_delay=7.5, jitter=False)
    assert [policy.delay(n) for n in range(2, 6)] == [3.0, 6.0, 7.5, 7.5]


def test_delays_are_floats_and_integers_are_accepted() -> None:
    policy = RetryPolicy(backoff="linear", initial_delay=1, max_delay=100, jitter=False)
    assert policy.delay(3) == 2.0
    assert isinstance(policy.delay(3), float)


def test_zero_initial_delay_means_no_wait() -> None:
    policy = RetryPolicy(initial_delay=0, jitter=True)
    assert policy.delay(5) == 0.0


@pytest.mark.parametrize("backoff", ["fixed", "linear", "exponential"])
@pytest.mark.parametrize("end", ["low", "high"])
def test_jitter_factor_is_drawn_from_075_to_125(backoff: str, end: str) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay=2.0, max_delay=1000.0)
    plain = RetryPolicy(backoff=backoff, initial_delay=2.0, max_delay=1000.0, jitter=False)
    rng = _EdgeRng(end)
    for n in range(2, 6):
        factor = 0.75 if end == "low" else 1.25
        assert policy.delay(n, rng) == pytest.approx(plain.delay(n) * factor)
    assert set(rng.calls) == {(0.75, 1.25)}


def test_jitter_multiplies_the_capped_delay() -> None:
    # The spec's order: the base delay is capped at max_delay, then jitter multiplies it.
    policy = RetryPolicy(initial_delay=1.0, max_delay=10.0)
    assert policy.delay(10, _EdgeRng("low")) == pytest.approx(7.5)
    assert policy.delay(10, _EdgeRng("high")) == pytest.approx(12.5)


def test_jittered_delays_stay_within_bounds_and_vary() -> None:
    policy = RetryPolicy(backoff="exponential", initial_delay=0.5, max_delay=60.0)
    rng = random.Random(1234)
    for n in range(2, 9):
        base = min(0.5 * 2 ** (n - 2), 60.0)
        samples = [policy.delay(n, rng) for _ in range(200)]
        assert all(0.75 * base <= s <= 1.25 * base for s in samples)
        assert len(set(samples)) > 1


def test_jitter_uses_the_module_random_by_default() -> None:
    policy = RetryPolicy(initial_delay=4.0, max_delay=100.0)
    samples = {policy.delay(2) for _ in range(50)}
    assert all(3.0 <= s <= 5.0 for s in samples)
    assert len(samples) > 1


def test_should_retry_counts_every_attempt() -> None:
    policy = RetryPolicy(max_attempts=3)
    error = RuntimeError("boom")
    assert policy.should_retry(error, 1)
    assert policy.should_retry(error, 2)
    assert not policy.should_retry(error, 3)
    assert not policy.should_retry(error, 4)


def test_default_policy_never_retries() -> None:
    assert not RetryPolicy().should_retry(RuntimeError("boom"), 1)


def test_non_retryable_is_never_retried() -> None:
    policy = RetryPolicy(max_attempts=10, retry_on=(Exception, NonRetryable))
    assert not policy.should_retry(NonRetryable("no"), 1)

    class Special(NonRetryable):
        pass

    assert not policy.should_retry(Special("no"), 1)


def test_retry_on_limits_which_errors_retry() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError, TimeoutError))
    assert policy.should_retry(ConnectionError(), 1)
    assert policy.should_retry(ConnectionResetError(), 1)  # a subclass
    assert policy.should_retry(TimeoutError(), 4)
    assert not policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(KeyError("k"), 1)


def test_retry_on_accepts_a_single_class() -> None:
    policy = RetryPolicy(max_attempts=2, retry_on=ConnectionError, give_up_on=KeyError)  # type: ignore[arg-type]
    assert policy.retry_on == (ConnectionError,)
    assert policy.give_up_on == (KeyError,)
    assert policy.should_retry(ConnectionError(), 1)
    assert not policy.should_retry(ValueError(), 1)


def test_give_up_on_wins_over_retry_on() -> None:
    policy = RetryPolicy(max_attempts=5, give_up_on=(ValueError,))
    assert policy.should_retry(RuntimeError(), 1)
    assert not policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(UnicodeDecodeError("utf-8", b"", 0, 1, "x"), 1)
    policy = RetryPolicy(max_attempts=5, retry_on=(OSError,), give_up_on=(FileNotFoundError,))
    assert policy.should_retry(PermissionError(), 1)
    assert not policy.should_retry(FileNotFoundError(), 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"max_attempts": "3"},
        {"backoff": "quadratic"},
        {"backoff": None},
        {"initial_delay": -0.1},
        {"initial_delay": "1"},
        {"initial_delay": True},
        {"max_delay": -1},
        {"max_delay": None},
        {"retry_on": (int,)},
        {"retry_on": ("ValueError",)},
        {"give_up_on": (object,)},
    ],
)
def test_retry_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(WorkflowDefinitionError):
        RetryPolicy(**kwargs)


def test_retry_policy_is_immutable_and_comparable() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy == RetryPolicy(max_attempts=3)
    with pytest.raises(AttributeError):
        policy.max_attempts = 4  # type: ignore[misc]


# -- triggers: status rules -------------------------------------------------------------------

C, F, S, A = "completed", "failed", "skipped", "abandoned"

STATUS_TABLE: list[tuple[list[str], dict[str, bool]]] = [
    ([C], {"all_success": True, "all_done": True, "one_failed": False, "none_failed": True}),
    ([C, C], {"all_success": True, "all_done": True, "one_failed": False, "none_failed": True}),
    ([F], {"all_success": False, "all_done": True, "one_failed": True, "none_failed": False}),
    ([S], {"all_success": False, "all_done": True, "one_failed": False, "none_failed": True}),
    ([C, S], {"all_success": False, "all_done": True, "one_failed": False, "none_failed": True}),
    ([C, F], {"all_success": False, "all_done": True, "one_failed": True, "none_failed": False}),
    ([S, F], {"all_success": False, "all_done": True, "one_failed": True, "none_failed": False}),
    ([A], {"all_success": False, "all_done": True, "one_failed": True, "none_failed": False}),
    ([C, A], {"all_success": False, "all_done": True, "one_failed": True, "none_failed": False}),
    ([F, F], {"all_success": False, "all_done": True, "one_failed": True, "none_failed": False}),
]


@pytest.mark.parametrize(("statuses", "expected"), STATUS_TABLE)
@pytest.mark.parametrize("rule", ["all_success", "all_done", "one_failed", "none_failed"])
def test_status_rules(statuses: list[str], expected: dict[str, bool], rule: str) -> None:
    assert as_rule(rule).evaluate(statuses, {}) is expected[rule]
    assert should_run(as_rule(rule), statuses, {}) is expected[rule]


def test_default_trigger_is_all_success() -> None:
    assert as_rule(None) is as_rule("all_success")
    assert as_rule(None).to_json() == "all_success"


def test_a_root_runs_under_every_status_rule_but_one_failed() -> None:
    # No dependencies: nothing failed and nothing is pending.
    assert should_run(as_rule("all_success"), [], {})
    assert should_run(as_rule("all_done"), [], {})
    assert should_run(as_rule("none_failed"), [], {})
    assert not should_run(as_rule("one_failed"), [], {})


@pytest.mark.parametrize("bad", ["all_sucess", "ALL_SUCCESS", "", 3, object(), ["all_done"]])
def test_as_rule_rejects_unknown_rules(bad: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match="trigger"):
        as_rule(bad)


def test_as_rule_passes_rules_through() -> None:
    rule = when("x", "exists")
    assert as_rule(rule) is rule
    assert isinstance(rule, TriggerRule)


# -- triggers: when() -------------------------------------------------------------------------

WHEN_TABLE: list[tuple[str, Any, Any, bool]] = [
    # (op, context value, rule value, expected)
    ("==", 5, 5, True),
    ("==", 5, 6, False),
    ("==", "a", "a", True),
    ("==", None, None, True),
    ("!=", 5, 6, True),
    ("!=", 5, 5, False),
    (">", 101, 100, True),
    (">", 100, 100, False),
    (">", 99, 100, False),
    ("<", 99, 100, True),
    ("<", 100, 100, False),
    (">=", 100, 100, True),
    (">=", 101, 100, True),
    (">=", 99, 100, False),
    ("<=", 100, 100, True),
    ("<=", 99, 100, True),
    ("<=", 101, 100, False),
    ("in", "eu", ["eu", "us"], True),
    ("in", "apac", ["eu", "us"], False),
    ("in", "b", "abc", True),
    ("contains", ["eu", "us"], "us", True),
    ("contains", ["eu", "us"], "apac", False),
    ("contains", "hello world", "world", True),
    ("contains", {"k": 1}, "k", True),
    ("contains", {"k": 1}, "j", False),
]


@pytest.mark.parametrize(("op", "actual", "value", "expected"), WHEN_TABLE)
def test_when_operators(op: str, actual: Any, value: Any, expected: bool) -> None:
    rule = when("key", op, value)
    assert rule.evaluate([C], {"key": actual}) is expected
    assert should_run(rule, [C], {"key": actual}) is expected


def test_when_exists_and_not_exists() -> None:
    assert when("k", "exists").evaluate([], {"k": None})
    assert not when("k", "exists").evaluate([], {"other": 1})
    assert when("k", "not_exists").evaluate([], {"other": 1})
    assert not when("k", "not_exists").evaluate([], {"k": 0})


@pytest.mark.parametrize("op", ["==", "!=", ">", "<", ">=", "<=", "in", "contains"])
def test_when_on_a_missing_key_is_false(op: str) -> None:
    assert when("missing", op, 1).evaluate([C], {"other": 1}) is False


def test_when_reads_a_context_as_well_as_a_dict() -> None:
    ctx = Context(total=150)
    assert should_run(when("total", ">", 100), [C], ctx)
    assert not should_run(when("total", "<", 100), [C], ctx)


def test_when_comparing_incompatible_types_is_an_error_naming_the_rule() -> None:
    with pytest.raises(WorkflowError, match="total") as info:
        when("total", ">", 100).evaluate([C], {"total": "lots"})
    assert "str" in str(info.value)
    assert "int" in str(info.value)


@pytest.mark.parametrize("op", ["=", "===", "gt", "IN", "", "exist"])
def test_when_rejects_unknown_operators(op: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match="operator"):
        when("k", op, 1)


def test_when_rejects_a_non_str_key() -> None:
    with pytest.raises(WorkflowDefinitionError, match="key"):
        when(1, "==", 1)  # type: ignore[arg-type]


# -- triggers: combinators --------------------------------------------------------------------

T = when("t", "exists")  # true on CTX
F_ = when("f", "exists")  # false on CTX
CTX = {"t": 1}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (all_of(T), True),
        (all_of(T, T), True),
        (all_of(T, F_), False),
        (all_of(F_, F_), False),
        (any_of(T), True),
        (any_of(T, F_), True),
        (any_of(F_, T), True),
        (any_of(F_, F_), False),
        (none_of(T), False),
        (none_of(F_), True),
        (none_of(F_, F_), True),
        (none_of(T, F_), False),
        (all_of(any_of(F_, T), none_of(F_)), True),
        (any_of(all_of(T, F_), none_of(T)), False),
        (none_of(all_of(T, F_)), True),
    ],
)
def test_combinators(rule: TriggerRule, expected: bool) -> None:
    assert rule.evaluate([C], CTX) is expected
    assert should_run(rule, [C], CTX) is expected


@pytest.mark.parametrize("combinator", [all_of, any_of, none_of])
def test_combinators_need_a_rule(combinator: Any) -> None:
    with pytest.raises(WorkflowDefinitionError):
        combinator()


@pytest.mark.parametrize("combinator", [all_of, any_of, none_of])
def test_combinators_reject_unknown_rule_names(combinator: Any) -> None:
    with pytest.raises(WorkflowDefinitionError):
        combinator("sometimes")


@pytest.mark.parametrize(
    "rule",
    [
        when("ok", "==", True),
        when("ok", "not_exists"),
        all_of(when("ok", "exists")),
        any_of(when("ok", "exists"), when("nope", "exists")),
        none_of(when("nope", "exists")),
    ],
)
def test_a_context_only_rule_also_requires_all_success(rule: TriggerRule) -> None:
    ctx = {"ok": True}
    assert should_run(rule, [C, C], ctx) is rule.evaluate([C, C], ctx)
    assert not should_run(rule, [C, F], ctx)
    assert not should_run(rule, [C, S], ctx)
    assert not should_run(rule, [A], ctx)


def test_naming_a_status_rule_inside_all_of_overrides_the_implied_all_success() -> None:
    rule = all_of("all_done", when("ok", "==", True))
    assert rule.uses_status
    assert should_run(rule, [C, F], {"ok": True})
    assert should_run(rule, [S], {"ok": True})
    assert not should_run(rule, [C, F], {"ok": False})
    rule = any_of("one_failed", when("force", "exists"))
    assert should_run(rule, [F], {})
    assert should_run(rule, [S], {"force": 1})
    assert not should_run(rule, [C], {})
    rule = all_of("none_failed", when("x", ">", 1))
    assert should_run(rule, [S, C], {"x": 2})
    assert not should_run(rule, [F, C], {"x": 2})


def test_uses_status_flags() -> None:
    assert as_rule("all_done").uses_status
    assert not when("x", "exists").uses_status
    assert not all_of(when("x", "exists"), when("y", "exists")).uses_status
    assert any_of(when("x", "exists"), "one_failed").uses_status
    assert none_of(all_of("all_done")).uses_status


def test_rules_serialize_to_json() -> None:
    rule = all_of("all_done", any_of(when("total", ">", 100), when("vip", "exists")))
    encoded = json.loads(json.dumps(rule.to_json()))
    assert encoded["all_of"][0] == "all_done"
    assert encoded["all_of"][1]["any_of"][0]["when"][:2] == ["total", ">"]
    assert "all_of" in repr(rule)


def test_rules_are_immutable() -> None:
    rule = when("x", "==", 1)
    with pytest.raises(AttributeError):
        rule.key = "y"  # type: ignore[misc]


# -- merge strategies ------------------------------------------------------------------------


def test_latest_wins_follows_declaration_order() -> None:
    inputs = [
        ("task1", {"user_id": 123, "status": "pending"}),
        ("task2", {"status": "completed", "result": 42}),
    ]
    assert latest_wins(inputs) == {"user_id": 123, "status": "completed", "result": 42}
    assert merge("latest_wins", inputs) == latest_wins(inputs)
    reordered = list(reversed(inputs))
    assert latest_wins(reordered)["status"] == "pending"


def test_latest_wins_is_per_top_level_key() -> None:
    inputs = [
        ("a", {"cfg": {"x": 1, "y": 1}, "only_a": 1}),
        ("b", {"cfg": {"y": 2}}),
        ("c", {"k": 3}),
    ]
    merged = latest_wins(inputs)
    assert merged == {"cfg": {"y": 2}, "only_a": 1, "k": 3}
    assert list(merged) == ["cfg", "only_a", "k"]


def test_latest_wins_three_dependencies_last_declared_wins() -> None:
    inputs = [("t1", {"r": 1}), ("t2", {"r": 2}), ("t3", {"r": 3})]
    assert latest_wins(inputs) == {"r": 3}
    assert latest_wins(inputs[:2]) == {"r": 2}


def test_latest_wins_does_not_change_its_inputs() -> None:
    one, two = {"a": 1}, {"a": 2, "b": 2}
    latest_wins([("x", one), ("y", two)])
    assert one == {"a": 1}
    assert two == {"a": 2, "b": 2}


def test_latest_wins_of_nothing_is_empty() -> None:
    assert latest_wins([]) == {}


def test_deep_merges_nested_dicts_recursively() -> None:
    inputs = [
        ("a", {"cfg": {"x": 1, "y": 1, "n": {"p": 1, "q": 1}}, "s": 1}),
        ("b", {"cfg": {"y": 2, "z": 2, "n": {"q": 2}}, "s": 2}),
    ]
    assert deep(inputs) == {"cfg": {"x": 1, "y": 2, "z": 2, "n": {"p": 1, "q": 2}}, "s": 2}
    assert merge("deep", inputs) == deep(inputs)


def test_deep_later_scalar_replaces_a_dict_and_later_dict_replaces_a_scalar() -> None:
    assert deep([("a", {"k": {"x": 1}}), ("b", {"k": 5})]) == {"k": 5}
    assert deep([("a", {"k": 5}), ("b", {"k": {"x": 1}})]) == {"k": {"x": 1}}
    # Lists are values, not merged.
    assert deep([("a", {"k": [1, 2]}), ("b", {"k": [3]})]) == {"k": [3]}


def test_deep_does_not_change_its_inputs() -> None:
    a = {"cfg": {"x": 1, "n": {"p": 1}}}
    b = {"cfg": {"x": 2, "n": {"q": 2}}}
    c = {"cfg": {"n": {"r": 3}}}
    merged = deep([("a", a), ("b", b), ("c", c)])
    assert merged == {"cfg": {"x": 2, "n": {"p": 1, "q": 2, "r": 3}}}
    assert a == {"cfg": {"x": 1, "n": {"p": 1}}}
    assert b == {"cfg": {"x": 2, "n": {"q": 2}}}
    assert c == {"cfg": {"n": {"r": 3}}}


def test_strict_accepts_agreeing_dependencies() -> None:
    inputs = [("a", {"k": 1, "a": 1}), ("b", {"k": 1, "b": 2}), ("c", {"c": 3})]
    assert strict(inputs) == {"k": 1, "a": 1, "b": 2, "c": 3}
    assert merge("strict", inputs) == strict(inputs)


def test_strict_conflict_names_the_key_and_both_tasks() -> None:
    inputs = [("fetch_eu", {"total": 10, "x": 1}), ("fetch_us", {"total": 12})]
    with pytest.raises(ContextConflictError) as info:
        strict(inputs)
    message = str(info.value)
    assert "'total'" in message
    assert "'fetch_eu'" in message
    assert "'fetch_us'" in message


def test_strict_names_the_first_task_that_set_the_key() -> None:
    inputs = [("one", {"k": 1}), ("two", {"k": 1}), ("three", {"k": 2})]
    with pytest.raises(ContextConflictError) as info:
        strict(inputs)
    assert "'one'" in str(info.value)
    assert "'three'" in str(info.value)
    assert "'k'" in str(info.value)


def test_strict_compares_nested_values_by_equality() -> None:
    assert strict([("a", {"k": {"x": [1]}}), ("b", {"k": {"x": [1]}})]) == {"k": {"x": [1]}}
    with pytest.raises(ContextConflictError):
        strict([("a", {"k": {"x": [1]}}), ("b", {"k": {"x": [2]}})])


def test_callable_gets_contexts_in_declaration_order() -> None:
    seen: list[tuple[str, Context]] = []

    def combine(inputs: list[tuple[str, Context]]) -> Context:
        seen.extend(inputs)
        return Context(total=sum(ctx["n"] for _, ctx in inputs), order=[n for n, _ in inputs])

    merged = merge(combine, [("z", {"n": 1}), ("a", {"n": 2}), ("m", {"n": 3})])
    assert merged == {"total": 6, "order": ["z", "a", "m"]}
    assert [name for name, _ in seen] == ["z", "a", "m"]
    assert all(isinstance(ctx, Context) for _, ctx in seen)


def test_callable_may_return_a_dict() -> None:
    assert merge(lambda inputs: {"n": len(inputs)}, [("a", {}), ("b", {})]) == {"n": 2}


@pytest.mark.parametrize("bad", [None, 1, "text", [("k", 1)]])
def test_callable_returning_anything_else_is_a_task_return_error(bad: Any) -> None:
    with pytest.raises(TaskReturnError, match="merge"):
        merge(lambda inputs: bad, [("a", {"k": 1})])


def test_unknown_strategy_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown merge strategy"):
        merge("newest", [("a", {})])
