"""The pure execution core (SPEC §3.1-§3.2): ``durably.plan`` and ``durably.triggers`` driven
on in-memory ``ExecutionState`` values. No database, no Engine, no threads, no wall clock."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from durably import codec
from durably.context import Context
from durably.exceptions import (
    ContextConflictError,
    ContextSerializationError,
    ContextTooLargeError,
    NonRetryable,
    TaskInterrupted,
    TaskReturnError,
    TaskTimeoutError,
)
from durably.outcomes import (
    MAX_ERROR_CHARS,
    compensation_order,
    downstream,
    execution_outcome,
    reusable,
    to_rerun,
)
from durably.plan import (
    Completed,
    Defer,
    ExecutionState,
    Failed,
    IncompleteState,
    RetryAt,
    Settle,
    Start,
    TaskState,
    advance,
    attempt_outcome,
    decide,
    final_context,
    input_for,
    next_retry,
    startable,
)
from durably.retry import RetryPolicy
from durably.statuses import (
    ABANDONED,
    COMPLETED,
    FAILED,
    FAILED_LIKE,
    NOT_STARTED,
    READY,
    RUNNING,
    SKIPPED,
    TASK_TERMINAL,
    UPSTREAM_FAILED,
)
from durably.triggers import all_of, any_of, none_of, verdict, when
from durably.workflow import Workflow

NOW = 1_000_000.0
DEP_STATUSES = (COMPLETED, FAILED, UPSTREAM_FAILED, SKIPPED, ABANDONED)
RUN = "run"  # an expected decision: Start


# -- helpers ----------------------------------------------------------------------------------


def new_workflow() -> Workflow:
    return Workflow(f"wf_{uuid.uuid4().hex[:10]}")


def add(wf: Workflow, name: str, deps: Iterable[str] = (), **options: Any) -> None:
    def fn(ctx: Any) -> None:
        return None

    wf.task(name=name, dependencies=list(deps), **options)(fn)


def make_state(
    wf: Workflow,
    statuses: Mapping[str, str] | None = None,
    outputs: Mapping[str, dict[str, Any]] | None = None,
    initial: dict[str, Any] | None = None,
    patches: Mapping[str, dict[str, Any]] | None = None,
    **per_task: dict[str, Any],
) -> ExecutionState:
    """Every task of ``wf`` (``not_started`` unless told), outputs and the initial context
    encoded as the store holds them; ``per_task[name]`` sets other TaskState fields."""
    statuses = statuses or {}
    tasks = [
        TaskState(
            id=str(uuid.uuid4()),
            name=name,
            status=statuses.get(name, NOT_STARTED),
            **per_task.get(name, {}),
        )
        for name in wf.tasks
    ]
    return ExecutionState(
        wf,
        "exec-id",
        tasks,
        outputs={name: codec.dumps(data) for name, data in (outputs or {}).items()},
        initial=codec.dumps(initial if initial is not None else {}),
        patches=patches,
    )


def fan_in(trigger: Any = None, n: int = 2, **options: Any) -> Workflow:
    """Roots ``d1 .. dn`` and a task ``t`` depending on all of them."""
    wf = new_workflow()
    for i in range(1, n + 1):
        add(wf, f"d{i}")
    add(wf, "t", [f"d{i}" for i in range(1, n + 1)], trigger=trigger, **options)
    return wf


def decide_with(
    wf: Workflow, dep_statuses: Iterable[str], context: dict[str, Any] | None = None
) -> Start | Settle | Defer:
    """Decide ``t`` of a :func:`fan_in` workflow; completed dependencies output ``context``."""
    statuses = {f"d{i}": s for i, s in enumerate(dep_statuses, 1)}
    outputs = {name: dict(context or {}) for name, s in statuses.items() if s == COMPLETED}
    return decide(make_state(wf, statuses, outputs, initial=context or {}), "t", NOW)


def shown(decision: Start | Settle | Defer) -> str:
    if isinstance(decision, Start):
        return RUN
    assert isinstance(decision, Settle), decision
    return decision.status


# -- trigger rules x dependency statuses (SPEC §3.2) -------------------------------------------


def _spec_oracle(rule: str, statuses: tuple[str, ...]) -> str:
    """The status rules as SPEC §3.2 (and Airflow) words them."""
    failed = any(s in FAILED_LIKE for s in statuses)
    done = any(s == COMPLETED for s in statuses)
    if rule == "all_success":
        if all(s == COMPLETED for s in statuses):
            return RUN
        return UPSTREAM_FAILED if failed else SKIPPED
    if rule == "all_done":
        return RUN
    if rule == "one_failed":
        return RUN if failed else SKIPPED
    if rule == "one_success":
        if done:
            return RUN
        return UPSTREAM_FAILED if failed else SKIPPED
    if rule == "none_failed":
        return UPSTREAM_FAILED if failed else RUN
    assert rule == "none_failed_min_one_success"
    if failed:
        return UPSTREAM_FAILED
    return RUN if done else SKIPPED


STATUS_RULES = (
    "all_success",
    "all_done",
    "one_failed",
    "one_success",
    "none_failed",
    "none_failed_min_one_success",
)


@pytest.mark.parametrize("rule", STATUS_RULES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_status_rule_over_every_dependency_status_combination(rule: str, n: int) -> None:
    wf = fan_in(rule, n)
    for combo in itertools.product(DEP_STATUSES, repeat=n):
        decision = decide_with(wf, combo, {"k": 1})
        assert shown(decision) == _spec_oracle(rule, combo), (rule, combo, decision)
        if isinstance(decision, Settle):
            assert decision.reason is not None
            assert decision.reason.startswith(f"trigger {rule}: "), decision.reason


@pytest.mark.parametrize(
    ("rule", "statuses", "expected"),
    [
        ("all_success", [COMPLETED, COMPLETED], RUN),
        ("all_success", [COMPLETED, SKIPPED], SKIPPED),
        ("all_success", [SKIPPED, FAILED], UPSTREAM_FAILED),  # a failure outranks a skip
        ("all_success", [ABANDONED, COMPLETED], UPSTREAM_FAILED),
        ("all_done", [FAILED, SKIPPED], RUN),
        ("one_failed", [COMPLETED, UPSTREAM_FAILED], RUN),
        ("one_failed", [COMPLETED, SKIPPED], SKIPPED),
        ("one_success", [FAILED, COMPLETED], RUN),
        ("one_success", [FAILED, SKIPPED], UPSTREAM_FAILED),
        ("one_success", [SKIPPED, SKIPPED], SKIPPED),
        ("none_failed", [SKIPPED, SKIPPED], RUN),
        ("none_failed", [SKIPPED, UPSTREAM_FAILED], UPSTREAM_FAILED),
        ("none_failed_min_one_success", [SKIPPED, COMPLETED], RUN),
        ("none_failed_min_one_success", [SKIPPED, SKIPPED], SKIPPED),
        ("none_failed_min_one_success", [COMPLETED, ABANDONED], UPSTREAM_FAILED),
    ],
)
def test_status_rule_examples(rule: str, statuses: list[str], expected: str) -> None:
    assert shown(decide_with(fan_in(rule), statuses)) == expected


def test_default_trigger_is_all_success() -> None:
    wf = fan_in()
    assert shown(decide_with(wf, [COMPLETED, COMPLETED])) == RUN
    assert shown(decide_with(wf, [COMPLETED, SKIPPED])) == SKIPPED
    assert shown(decide_with(wf, [COMPLETED, FAILED])) == UPSTREAM_FAILED


def test_status_rule_reasons_list_the_offending_dependencies() -> None:
    wf = fan_in("all_success", 3)
    decision = decide_with(wf, [COMPLETED, FAILED, ABANDONED])
    assert decision == Settle(
        "t", UPSTREAM_FAILED, "trigger all_success: 'd2' is failed, 'd3' is abandoned"
    )
    decision = decide_with(wf, [SKIPPED, COMPLETED, COMPLETED])
    assert decision == Settle("t", SKIPPED, "trigger all_success: 'd1' is skipped")
    assert decide_with(fan_in("one_failed"), [COMPLETED, COMPLETED]) == Settle(
        "t", SKIPPED, "trigger one_failed: no dependency failed"
    )
    assert decide_with(fan_in("none_failed"), [SKIPPED, UPSTREAM_FAILED]) == Settle(
        "t", UPSTREAM_FAILED, "trigger none_failed: 'd2' is upstream_failed"
    )
    decision = decide_with(fan_in("one_success"), [SKIPPED, SKIPPED])
    assert decision == Settle(
        "t",
        SKIPPED,
        "trigger one_success: no dependency completed ('d1' is skipped, 'd2' is skipped)",
    )


# -- when() with each operator -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "actual", "held"),
    [
        ("==", "gold", "gold", True),
        ("==", "gold", "silver", False),
        ("!=", "gold", "silver", True),
        ("!=", "gold", "gold", False),
        (">", 100, 101, True),
        (">", 100, 100, False),
        ("<", 100, 99, True),
        ("<", 100, 100, False),
        (">=", 100, 100, True),
        (">=", 100, 99, False),
        ("<=", 100, 100, True),
        ("<=", 100, 101, False),
        ("in", ["eu", "us"], "eu", True),
        ("in", ["eu", "us"], "asia", False),
        ("contains", "vip", ["vip", "new"], True),
        ("contains", "vip", ["new"], False),
        ("contains", "ip", "vip", True),
        ("exists", None, 0, True),
        ("not_exists", None, 0, False),
    ],
)
def test_when_operator(op: str, value: Any, actual: Any, held: bool) -> None:
    wf = fan_in(when("k", op, value), 1)
    decision = decide_with(wf, [COMPLETED], {"k": actual})
    if held:
        assert isinstance(decision, Start)
        assert decision.input == {"k": actual}
    else:
        assert isinstance(decision, Settle)
        assert decision.status == SKIPPED
        assert decision.reason is not None
        assert decision.reason.startswith(f'trigger when "k" {op}')
        assert decision.reason.endswith(f"it is {json.dumps(actual, ensure_ascii=False)}")


@pytest.mark.parametrize("op", ["==", "!=", ">", "<", ">=", "<=", "in", "contains", "exists"])
def test_when_on_an_absent_key_skips(op: str) -> None:
    value = None if op == "exists" else [1]
    decision = decide_with(fan_in(when("k", op, value), 1), [COMPLETED], {"other": 1})
    assert isinstance(decision, Settle)
    assert decision.status == SKIPPED
    assert decision.reason is not None
    assert decision.reason.endswith(": the key is absent")


def test_when_not_exists_runs_on_an_absent_key() -> None:
    decision = decide_with(fan_in(when("k", "not_exists"), 1), [COMPLETED], {"other": 1})
    assert isinstance(decision, Start)
    decision = decide_with(fan_in(when("k", "not_exists"), 1), [COMPLETED], {"k": None})
    assert decision == Settle("t", SKIPPED, 'trigger when "k" not_exists: it is null')


def test_when_on_a_root_reads_the_initial_context() -> None:
    wf = new_workflow()
    add(wf, "r", trigger=when("go", "==", True))
    assert isinstance(decide(make_state(wf, initial={"go": True}), "r", NOW), Start)
    assert decide(make_state(wf, initial={"go": False}), "r", NOW) == Settle(
        "r", SKIPPED, 'trigger when "go" == true: it is false'
    )


def test_an_uncomparable_when_fails_the_task_with_a_clear_error() -> None:
    decision = decide_with(fan_in(when("n", ">", 5), 1), [COMPLETED], {"n": "six"})
    assert isinstance(decision, Settle)
    assert decision.status == FAILED
    assert decision.reason is not None
    assert "cannot compare str with int" in decision.reason


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (COMPLETED, RUN),
        (FAILED, UPSTREAM_FAILED),
        (UPSTREAM_FAILED, UPSTREAM_FAILED),
        (ABANDONED, UPSTREAM_FAILED),
        (SKIPPED, SKIPPED),
    ],
)
@pytest.mark.parametrize(
    "rule",
    [
        when("k", "==", 1),
        all_of(when("k", "==", 1), when("k", "exists")),
        any_of(when("k", "==", 1), when("k", "==", 2)),
        none_of(when("k", "==", 2)),
    ],
    ids=["when", "all_of", "any_of", "none_of"],
)
def test_context_rules_need_all_success(rule: Any, status: str, expected: str) -> None:
    """A tree of context rules only also needs every dependency completed, even when the
    context alone would make it hold (a failed dependency passes on its input, k=1)."""
    decision = decide_with(fan_in(rule), [COMPLETED, status], {"k": 1})
    assert shown(decision) == expected
    if isinstance(decision, Settle):
        assert decision.reason == (
            f"trigger all_success: 'd2' is {status} (a context rule needs all_success)"
        )


# -- combinators -------------------------------------------------------------------------------


def test_all_of_names_the_first_part_that_failed() -> None:
    rule = all_of(when("total", ">", 100), when("tier", "==", "gold"))
    wf = fan_in(rule, 1)
    assert isinstance(decide_with(wf, [COMPLETED], {"total": 101, "tier": "gold"}), Start)
    assert decide_with(wf, [COMPLETED], {"total": 101, "tier": "silver"}) == Settle(
        "t", SKIPPED, 'trigger when "tier" == "gold": it is "silver"'
    )
    assert decide_with(wf, [COMPLETED], {"total": 5, "tier": "silver"}) == Settle(
        "t", SKIPPED, 'trigger when "total" > 100: it is 5'
    )


def test_any_of_lists_every_part_when_none_held() -> None:
    rule = any_of(when("total", ">", 100), when("vip", "==", True))
    wf = fan_in(rule, 1)
    assert isinstance(decide_with(wf, [COMPLETED], {"total": 1, "vip": True}), Start)
    assert isinstance(decide_with(wf, [COMPLETED], {"total": 101, "vip": False}), Start)
    assert decide_with(wf, [COMPLETED], {"total": 1, "vip": False}) == Settle(
        "t",
        SKIPPED,
        'trigger any_of: none held (when "total" > 100: it is 1; when "vip" == true: it is false)',
    )


def test_none_of_names_the_rule_that_held_as_json() -> None:
    rule = none_of(when("tier", "==", "gold"), when("blocked", "exists"))
    wf = fan_in(rule, 1)
    assert isinstance(decide_with(wf, [COMPLETED], {"tier": "silver"}), Start)
    assert decide_with(wf, [COMPLETED], {"tier": "gold"}) == Settle(
        "t", SKIPPED, 'trigger none_of: {"when": ["tier", "==", "gold"]} held'
    )
    assert decide_with(wf, [COMPLETED], {"blocked": 1}) == Settle(
        "t", SKIPPED, 'trigger none_of: {"when": ["blocked", "exists", null]} held'
    )


def test_a_status_rule_inside_all_of_chooses_the_statuses() -> None:
    """A failure handler that runs only when the context says so."""
    rule = all_of("one_failed", when("alert", "==", True))
    wf = fan_in(rule)
    decision = decide_with(wf, [COMPLETED, FAILED], {"alert": True})
    assert isinstance(decision, Start)
    assert decide_with(wf, [COMPLETED, FAILED], {"alert": False}) == Settle(
        "t", SKIPPED, 'trigger when "alert" == true: it is false'
    )
    assert decide_with(wf, [COMPLETED, COMPLETED], {"alert": True}) == Settle(
        "t", SKIPPED, "trigger one_failed: no dependency failed"
    )


def test_any_of_with_status_rules() -> None:
    wf = fan_in(any_of("one_failed", when("force", "==", True)))
    assert isinstance(decide_with(wf, [COMPLETED, FAILED], {"force": False}), Start)
    assert isinstance(decide_with(wf, [COMPLETED, COMPLETED], {"force": True}), Start)
    assert shown(decide_with(wf, [COMPLETED, SKIPPED], {"force": False})) == SKIPPED
    # Both parts false, one of them because of a failure: upstream_failed.
    wf = fan_in(any_of("none_failed", when("force", "==", True)))
    assert shown(decide_with(wf, [COMPLETED, FAILED], {"force": False})) == UPSTREAM_FAILED


def test_none_of_a_status_rule_that_held_because_of_a_failure() -> None:
    wf = fan_in(none_of("one_failed"))
    assert isinstance(decide_with(wf, [COMPLETED, SKIPPED]), Start)
    assert decide_with(wf, [COMPLETED, FAILED]) == Settle(
        "t", UPSTREAM_FAILED, 'trigger none_of: "one_failed" held'
    )
    assert shown(decide_with(fan_in(none_of("all_done")), [COMPLETED, COMPLETED])) == SKIPPED


def test_all_of_false_by_a_failure_is_upstream_failed_whatever_the_order() -> None:
    wf = new_workflow()
    add(wf, "charge")
    add(wf, "notify", ["charge"], trigger=all_of(when("x", "==", 1), "none_failed"))
    add(wf, "ship", ["notify"], trigger="none_failed")
    state = make_state(wf, {"charge": FAILED}, initial={"x": 2})
    decisions = advance(state, ["notify"], NOW)
    assert [shown(d) for d in decisions] == [UPSTREAM_FAILED, UPSTREAM_FAILED]
    assert not any(isinstance(d, Start) for d in decisions)


def test_none_of_a_when_on_a_range_skips() -> None:
    wf = fan_in(none_of(when("n", "in", range(5))), 1)
    assert isinstance(decide_with(wf, [COMPLETED], {"n": 7}), Start)
    decision = decide_with(wf, [COMPLETED], {"n": 3})
    assert isinstance(decision, Settle)
    assert decision.status == SKIPPED


def test_verdict_on_bare_statuses() -> None:
    check = verdict(all_of("none_failed"), [("a", SKIPPED)], {})
    assert check.held
    check = verdict(when("k", "exists"), [("a", FAILED)], {"k": 1})
    assert not check.held
    assert check.by_failure
    assert check.status == UPSTREAM_FAILED


# -- skip reasons show values as JSON ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "actual", "reason"),
    [
        (True, False, 'trigger when "k" == true: it is false'),
        (None, 0, 'trigger when "k" == null: it is 0'),
        ("gold", "silver", 'trigger when "k" == "gold": it is "silver"'),
        ("café", "thé", 'trigger when "k" == "café": it is "thé"'),
        ('say "hi"', "x", 'trigger when "k" == "say \\"hi\\"": it is "x"'),
        ([1, 2], [1], 'trigger when "k" == [1, 2]: it is [1]'),
        ({"a": 1}, {}, 'trigger when "k" == {"a": 1}: it is {}'),
        (1.5, 2, 'trigger when "k" == 1.5: it is 2'),
    ],
)
def test_skip_reasons_show_values_as_json(value: Any, actual: Any, reason: str) -> None:
    decision = decide_with(fan_in(when("k", "==", value), 1), [COMPLETED], {"k": actual})
    assert decision == Settle("t", SKIPPED, reason)


def test_a_key_with_quotes_shows_as_json() -> None:
    decision = decide_with(fan_in(when('a"b', "==", 1), 1), [COMPLETED], {'a"b': 2})
    assert decision == Settle("t", SKIPPED, 'trigger when "a\\"b" == 1: it is 2')


# -- the order workflow: upstream failures cascade (the regression that lost money) ------------


def order_workflow() -> Workflow:
    wf = new_workflow()
    add(wf, "validate")
    add(wf, "charge_card", ["validate"])
    add(wf, "reserve_stock", ["validate"])
    add(wf, "merge_results", ["charge_card", "reserve_stock"])
    add(wf, "gift_wrap", ["validate"], trigger=when("gift", "==", True))
    add(wf, "ship", ["merge_results", "gift_wrap"], trigger="none_failed")
    return wf


class Driver:
    """Plays the runner's part on a state: records decisions, starts, completes, fails."""

    def __init__(self, state: ExecutionState) -> None:
        self.state = state
        self.started: dict[str, dict[str, Any]] = {}
        self.settled: dict[str, Settle] = {}

    def record(self, decisions: list[Start | Settle | Defer]) -> None:
        for decision in decisions:
            if isinstance(decision, Start):
                assert decision.name not in self.started, f"{decision.name} started twice"
                for dep in self.state.shape.tasks[decision.name].dependencies:
                    assert self.state.tasks[dep].status in TASK_TERMINAL, (decision.name, dep)
                self.started[decision.name] = decision.input
                self.state.tasks[decision.name].status = RUNNING
            elif isinstance(decision, Settle):
                self.settled[decision.name] = decision

    def begin(self) -> None:
        self.record(advance(self.state, startable(self.state, NOW), NOW))

    def complete(self, name: str, **changes: Any) -> None:
        assert self.state.tasks[name].status == RUNNING, name
        output = {**self.started[name], **changes}
        self.state.outputs[name] = codec.dumps(output)
        self.record(advance(self.state, self.state.mark(name, COMPLETED), NOW))

    def fail(self, name: str, error: str = "ValueError: boom") -> None:
        assert self.state.tasks[name].status == RUNNING, name
        self.record(advance(self.state, self.state.mark(name, FAILED, error), NOW))

    def status(self, name: str) -> str:
        return self.state.tasks[name].status


@pytest.mark.parametrize("gift", [True, False])
@pytest.mark.parametrize("charge_first", [True, False])
def test_ship_never_runs_after_a_failed_charge(gift: bool, charge_first: bool) -> None:
    run = Driver(make_state(order_workflow(), initial={"order": 7, "gift": gift}))
    run.begin()
    assert list(run.started) == ["validate"]
    run.complete("validate", valid=True)
    expected = ["validate", "charge_card", "reserve_stock"] + (["gift_wrap"] if gift else [])
    assert list(run.started) == expected
    if gift:
        run.complete("gift_wrap", wrapped=True)
    else:
        assert run.status("gift_wrap") == SKIPPED
    if charge_first:
        run.fail("charge_card", "CardDeclined: insufficient funds")
        assert run.status("merge_results") == NOT_STARTED
        run.complete("reserve_stock", reserved=True)
    else:
        run.complete("reserve_stock", reserved=True)
        run.fail("charge_card", "CardDeclined: insufficient funds")
    assert run.status("merge_results") == UPSTREAM_FAILED
    assert run.status("ship") == UPSTREAM_FAILED
    assert "ship" not in run.started
    assert run.settled["ship"] == Settle(
        "ship", UPSTREAM_FAILED, "trigger none_failed: 'merge_results' is upstream_failed"
    )
    assert run.state.all_done()
    status, error = execution_outcome(run.state)
    assert status == FAILED
    assert error == (
        "task 'charge_card' failed: CardDeclined: insufficient funds; 2 tasks upstream_failed"
    )


def test_ship_runs_after_a_skipped_gift_wrap() -> None:
    run = Driver(make_state(order_workflow(), initial={"order": 7, "gift": False}))
    run.begin()
    run.complete("validate", valid=True)
    assert run.settled["gift_wrap"] == Settle(
        "gift_wrap", SKIPPED, 'trigger when "gift" == true: it is false'
    )
    run.complete("charge_card", charged=100)
    run.complete("reserve_stock", reserved=True)
    run.complete("merge_results")
    # gift_wrap was skipped: it passes on what it received (validate's output).
    assert run.started["ship"] == {
        "order": 7,
        "gift": False,
        "valid": True,
        "charged": 100,
        "reserved": True,
    }
    run.complete("ship", shipped=True)
    assert run.state.all_done()
    assert execution_outcome(run.state) == (COMPLETED, None)
    assert final_context(run.state)["shipped"] is True


def test_advance_cascades_through_settled_tasks_only() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b", ["a"])
    add(wf, "c", ["b"])
    add(wf, "cleanup", ["c"], trigger="all_done")
    add(wf, "d", ["cleanup"])
    state = make_state(wf, {"a": FAILED})
    decisions = advance(state, ["b"], NOW)
    assert [(d.name, shown(d)) for d in decisions] == [
        ("b", UPSTREAM_FAILED),
        ("c", UPSTREAM_FAILED),
        ("cleanup", RUN),
    ]
    assert state.tasks["cleanup"].status == NOT_STARTED  # a Start is the caller's to record
    assert state.tasks["d"].status == NOT_STARTED


def test_advance_ignores_tasks_already_started_or_finished() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b")
    state = make_state(wf, {"a": RUNNING, "b": COMPLETED})
    assert advance(state, ["a", "b"], NOW) == []


def test_mark_reports_dependents_once_their_last_dependency_is_done() -> None:
    wf = fan_in(None, 3)
    state = make_state(wf)
    assert state.remaining["t"] == 3
    assert state.mark("d1", COMPLETED) == []
    assert state.mark("d2", SKIPPED) == []
    assert state.mark("d2", FAILED) == []  # already terminal: not counted twice
    assert state.mark("d3", RUNNING) == []  # not terminal
    assert state.mark("d3", FAILED, "boom") == ["t"]
    assert state.tasks["d3"].error == "boom"
    assert state.remaining["t"] == 0


# -- merge rules through input_for (SPEC §3.1) -------------------------------------------------


def two_deps(order: tuple[str, str], merge: Any = None) -> Workflow:
    """Roots ``a`` then ``b`` (declared in that order) and ``t`` depending on them in
    ``order``."""
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b")
    add(wf, "t", list(order), merge=merge)
    return wf


@pytest.mark.parametrize("completed_first", ["a", "b"])
def test_latest_wins_follows_the_dependency_declaration_order(completed_first: str) -> None:
    outs = {"a": {"k": "a", "only_a": 1}, "b": {"k": "b", "only_b": 2}}
    # The outputs mapping is built in completion order: it must not matter.
    ordered = {n: outs[n] for n in sorted(outs, key=lambda n: n != completed_first)}
    done = {"a": COMPLETED, "b": COMPLETED}
    state = make_state(two_deps(("b", "a")), done, ordered)
    assert input_for(state, "t") == {"k": "a", "only_a": 1, "only_b": 2}
    state = make_state(two_deps(("a", "b")), done, ordered)
    assert input_for(state, "t") == {"k": "b", "only_a": 1, "only_b": 2}
    assert list(input_for(state, "t")) == ["k", "only_a", "only_b"]


def test_a_single_dependency_passes_its_output_as_is() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b", ["a"])
    state = make_state(wf, {"a": COMPLETED}, {"a": {"x": [1, {"y": 2}]}}, initial={"z": 0})
    assert input_for(state, "b") == {"x": [1, {"y": 2}]}


def test_deep_merge_recurses_into_dicts() -> None:
    outs: dict[str, dict[str, Any]] = {
        "a": {"cfg": {"a": 1, "shared": "a", "nested": {"x": 1}}, "top": "a", "n": {"v": 1}},
        "b": {"cfg": {"b": 2, "shared": "b", "nested": {"y": 2}}, "top": "b", "n": 5},
    }
    state = make_state(two_deps(("a", "b"), "deep"), {"a": COMPLETED, "b": COMPLETED}, outs)
    assert input_for(state, "t") == {
        "cfg": {"a": 1, "b": 2, "shared": "b", "nested": {"x": 1, "y": 2}},
        "top": "b",
        "n": 5,  # a scalar replaces a dict: later wins
    }
    state = make_state(two_deps(("b", "a"), "deep"), {"a": COMPLETED, "b": COMPLETED}, outs)
    assert input_for(state, "t")["cfg"]["shared"] == "a"
    assert input_for(state, "t")["n"] == {"v": 1}


def test_strict_merge_accepts_equal_values() -> None:
    outs: dict[str, dict[str, Any]] = {"a": {"k": 1, "x": [1]}, "b": {"k": 1, "y": 2}}
    state = make_state(two_deps(("a", "b"), "strict"), {"a": COMPLETED, "b": COMPLETED}, outs)
    assert input_for(state, "t") == {"k": 1, "x": [1], "y": 2}
    assert isinstance(decide(state, "t", NOW), Start)


def test_strict_conflict_fails_the_task_naming_key_and_both_tasks() -> None:
    outs = {"a": {"k": 1}, "b": {"k": 2}}
    state = make_state(two_deps(("a", "b"), "strict"), {"a": COMPLETED, "b": COMPLETED}, outs)
    with pytest.raises(ContextConflictError):
        input_for(state, "t")
    decision = decide(state, "t", NOW)
    assert isinstance(decision, Settle)
    assert decision.status == FAILED
    assert decision.reason is not None
    assert decision.reason.startswith("ContextConflictError: ")
    for part in ("'a'", "'b'", "'k'", "1", "2"):
        assert part in decision.reason


def test_a_merge_callable_gets_contexts_in_declaration_order() -> None:
    seen: list[list[tuple[str, dict[str, Any]]]] = []

    def pick(inputs: list[tuple[str, Context]]) -> dict[str, Any]:
        seen.append([(name, ctx.to_dict()) for name, ctx in inputs])
        assert all(isinstance(ctx, Context) for _, ctx in inputs)
        return {"total": sum(ctx["n"] for _, ctx in inputs), "names": [n for n, _ in inputs]}

    outs = {"b": {"n": 2}, "a": {"n": 1}}
    state = make_state(two_deps(("b", "a"), pick), {"a": COMPLETED, "b": COMPLETED}, outs)
    assert input_for(state, "t") == {"total": 3, "names": ["b", "a"]}
    assert seen == [[("b", {"n": 2}), ("a", {"n": 1})]]


def test_a_merge_callable_may_return_a_context() -> None:
    def first(inputs: list[tuple[str, Context]]) -> Context:
        return inputs[0][1]

    outs = {"a": {"n": 1}, "b": {"n": 2}}
    state = make_state(two_deps(("a", "b"), first), {"a": COMPLETED, "b": COMPLETED}, outs)
    assert input_for(state, "t") == {"n": 1}


@pytest.mark.parametrize(
    ("returned", "error"),
    [(42, "TaskReturnError: "), (None, "TaskReturnError: ")],
)
def test_a_merge_callable_returning_something_else_fails_the_task(
    returned: Any, error: str
) -> None:
    state = make_state(
        two_deps(("a", "b"), lambda inputs: returned),
        {"a": COMPLETED, "b": COMPLETED},
        {"a": {}, "b": {}},
    )
    with pytest.raises(TaskReturnError):
        input_for(state, "t")
    decision = decide(state, "t", NOW)
    assert isinstance(decision, Settle)
    assert decision.status == FAILED
    assert decision.reason is not None
    assert decision.reason.startswith(error)


def test_a_merge_callable_that_raises_fails_the_task() -> None:
    def boom(inputs: list[tuple[str, Context]]) -> dict[str, Any]:
        raise RuntimeError("no merging today")

    state = make_state(
        two_deps(("a", "b"), boom), {"a": COMPLETED, "b": COMPLETED}, {"a": {}, "b": {}}
    )
    assert decide(state, "t", NOW) == Settle("t", FAILED, "RuntimeError: no merging today")


def test_a_root_gets_the_initial_context() -> None:
    wf = new_workflow()
    add(wf, "r")
    state = make_state(wf, initial={"order_id": 1, "items": [1, 2]})
    assert input_for(state, "r") == {"order_id": 1, "items": [1, 2]}
    assert decide(state, "r", NOW) == Start("r", {"order_id": 1, "items": [1, 2]})


def test_a_dependency_that_did_not_complete_passes_on_its_input() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b", ["a"])
    add(wf, "c", ["b"])
    add(wf, "handler", ["c", "a"], trigger="one_failed")
    state = make_state(
        wf,
        {"a": COMPLETED, "b": FAILED, "c": UPSTREAM_FAILED},
        {"a": {"from_a": 1, "k": "a"}},
        initial={"seed": 0},
    )
    # c passes on b's input, which is a's output.
    assert input_for(state, "c") == {"from_a": 1, "k": "a"}
    assert decide(state, "handler", NOW) == Start("handler", {"from_a": 1, "k": "a"})
    # A root that failed passes on the initial context.
    state = make_state(wf, {"a": FAILED, "b": UPSTREAM_FAILED, "c": UPSTREAM_FAILED})
    assert input_for(state, "handler") == {}


def test_a_fork_patch_goes_on_top() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b")
    add(wf, "t", ["a", "b"])
    state = make_state(
        wf,
        {"a": COMPLETED, "b": COMPLETED},
        {"a": {"k": "a", "x": 1}, "b": {"k": "b"}},
        initial={"k": "initial"},
        patches={"t": {"k": "patched", "new": True}, "a": {"k": "root patch"}},
    )
    assert input_for(state, "t") == {"k": "patched", "x": 1, "new": True}
    assert input_for(state, "a") == {"k": "root patch"}  # a root's patch on the initial context
    assert input_for(state, "b") == {"k": "initial"}
    assert decide(state, "t", NOW) == Start("t", {"k": "patched", "x": 1, "new": True})


@pytest.mark.parametrize("merge", ["latest_wins", "deep", "strict"])
def test_input_for_returns_a_fresh_copy_every_call(merge: str) -> None:
    wf = new_workflow()
    add(wf, "r")
    add(wf, "one", ["r"], merge=merge)
    add(wf, "two", ["r", "one"], merge=merge)
    nested = {"cfg": {"n": 1}, "items": [1, 2]}
    state = make_state(
        wf,
        {"r": COMPLETED, "one": COMPLETED},
        {"r": nested, "one": {**nested, "extra": 1}},
        initial=nested,
    )
    for name in ("r", "one", "two"):
        first = input_for(state, name)
        expected = codec.loads(codec.dumps(first))
        first["cfg"]["n"] = 99
        first["items"].append(3)
        first["added"] = True
        assert input_for(state, name) == expected, name
        assert input_for(state, name) is not input_for(state, name)


def test_a_fork_patch_is_copied_too() -> None:
    wf = new_workflow()
    add(wf, "r")
    state = make_state(wf, initial={}, patches={"r": {"cfg": {"n": 1}}})
    first = input_for(state, "r")
    first["cfg"]["n"] = 99
    assert input_for(state, "r") == {"cfg": {"n": 1}}
    assert state.patches == {"r": {"cfg": {"n": 1}}}


def test_a_context_rule_after_a_failure_is_upstream_failed_before_merging() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b")
    add(wf, "t", ["a", "b"], merge="strict", trigger=when("k", "==", 2))
    state = make_state(wf, {"a": COMPLETED, "b": FAILED}, {"a": {"k": 2}}, initial={"k": 1})
    assert decide(state, "t", NOW) == Settle(
        "t",
        UPSTREAM_FAILED,
        "trigger all_success: 'b' is failed (a context rule needs all_success)",
    )


def test_a_missing_initial_context_is_the_callers_bug() -> None:
    wf = new_workflow()
    add(wf, "r")
    state = ExecutionState(wf, "exec-id", [TaskState(id="1", name="r", status=NOT_STARTED)])
    with pytest.raises(IncompleteState):
        input_for(state, "r")
    with pytest.raises(IncompleteState):
        decide(state, "r", NOW)  # never turned into a failed task


# -- final_context -----------------------------------------------------------------------------


def test_final_context_merges_the_leaves_in_declaration_order() -> None:
    wf = new_workflow()
    add(wf, "root")
    add(wf, "z_leaf", ["root"])
    add(wf, "a_leaf", ["root"])
    outs: dict[str, dict[str, Any]] = {
        "root": {"k": "root"},
        "a_leaf": {"k": "a", "a": 1},
        "z_leaf": {"k": "z", "z": 1},
    }
    done = dict.fromkeys(wf.tasks, COMPLETED)
    # z_leaf is declared first, a_leaf last: a_leaf wins, whatever the completion order.
    assert final_context(make_state(wf, done, outs)) == {"k": "a", "a": 1, "z": 1}


def test_final_context_stands_in_the_nearest_completed_outputs() -> None:
    wf = new_workflow()
    add(wf, "root")
    add(wf, "mid", ["root"])
    add(wf, "leaf", ["mid"])
    add(wf, "other", ["root"])
    outs = {"root": {"r": 1}, "mid": {"r": 1, "m": 1}, "other": {"r": 1, "o": 1}}
    state = make_state(wf, {"root": COMPLETED, "mid": COMPLETED, "leaf": FAILED}, outs)
    assert final_context(state) == {"r": 1, "m": 1, "o": 1}


def test_final_context_without_outputs_is_the_initial_context() -> None:
    wf = new_workflow()
    add(wf, "root")
    assert final_context(make_state(wf, {"root": FAILED}, initial={"seed": 1})) == {"seed": 1}


# -- attempt_outcome (SPEC §3.2 retries) -------------------------------------------------------


def test_a_completed_attempt_encodes_its_output() -> None:
    policy = RetryPolicy()
    outcome = attempt_outcome(policy, 1, {"a": 1, "b": [1, 2]}, None, NOW, None)
    assert isinstance(outcome, Completed)
    assert codec.loads(outcome.value) == {"a": 1, "b": [1, 2]}
    assert attempt_outcome(policy, 1, None, None, NOW, None) == Completed("{}")


def test_a_failed_attempt_retries_while_attempts_remain() -> None:
    policy = RetryPolicy(max_attempts=3, backoff="fixed", initial_delay=5.0, jitter=False)
    error = ValueError("boom")
    assert attempt_outcome(policy, 1, None, error, NOW, None) == RetryAt(
        NOW + 5.0, "ValueError: boom"
    )
    assert attempt_outcome(policy, 2, None, error, NOW, None) == RetryAt(
        NOW + 5.0, "ValueError: boom"
    )
    assert attempt_outcome(policy, 3, None, error, NOW, None) == Failed("ValueError: boom")


def test_the_retry_time_is_now_plus_the_next_attempts_delay() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay=2.0, max_delay=100.0, jitter=False)
    times = [attempt_outcome(policy, n, None, OSError("x"), NOW, None) for n in (1, 2, 3, 4)]
    assert times[:3] == [RetryAt(NOW + policy.delay(n + 1), "OSError: x") for n in (1, 2, 3)]
    assert [t.at - NOW for t in times[:3] if isinstance(t, RetryAt)] == [2.0, 4.0, 8.0]
    assert isinstance(times[3], RetryAt)
    assert times[3].at == NOW + 16.0


def test_a_retry_time_with_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy(max_attempts=2, backoff="fixed", initial_delay=10.0)
    for _ in range(50):
        outcome = attempt_outcome(policy, 1, None, ValueError(), NOW, None)
        assert isinstance(outcome, RetryAt)
        assert NOW + 7.5 <= outcome.at <= NOW + 12.5


def test_a_timeout_is_retried() -> None:
    policy = RetryPolicy(max_attempts=2, jitter=False)
    outcome = attempt_outcome(policy, 1, None, TaskTimeoutError("slow"), NOW, None)
    assert outcome == RetryAt(NOW + 1.0, "TaskTimeoutError: slow")


class CardDeclined(NonRetryable):
    pass


@pytest.mark.parametrize(
    "error",
    [
        NonRetryable("no"),
        CardDeclined("declined"),
        ContextSerializationError("bad value"),
        ContextTooLargeError("too big"),
        ContextConflictError("conflict"),
        TaskReturnError("returned 42"),
        TaskInterrupted("SystemExit"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors_are_never_retried(error: Exception) -> None:
    policy = RetryPolicy(max_attempts=10, retry_on=(Exception,), jitter=False)
    outcome = attempt_outcome(policy, 1, None, error, NOW, None)
    assert outcome == Failed(f"{type(error).__name__}: {error}")


def test_retry_on_and_give_up_on_choose_the_errors() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(OSError,), give_up_on=(FileNotFoundError,))
    assert isinstance(attempt_outcome(policy, 1, None, OSError("io"), NOW, None), RetryAt)
    assert isinstance(attempt_outcome(policy, 1, None, ConnectionError(), NOW, None), RetryAt)
    assert attempt_outcome(policy, 1, None, ValueError("v"), NOW, None) == Failed("ValueError: v")
    assert attempt_outcome(policy, 1, None, FileNotFoundError("f"), NOW, None) == Failed(
        "FileNotFoundError: f"
    )


@pytest.mark.parametrize(
    ("output", "max_bytes", "error"),
    [
        ({"fn": lambda: 1}, None, "ContextSerializationError"),
        ({"name": "caf\udce9"}, None, "ContextSerializationError"),
        ({"caf\udce9": 1}, None, "ContextSerializationError"),
        ({"nested": {"deep": [object()]}}, None, "ContextSerializationError"),
        ({"blob": "x" * 200}, 100, "ContextTooLargeError"),
        ({"blob": "é" * 60}, 100, "ContextTooLargeError"),  # 120 UTF-8 bytes, 60 characters
    ],
    ids=["lambda", "lone-surrogate", "surrogate-key", "object", "too-large", "too-large-utf8"],
)
def test_an_unencodable_output_fails_without_retry(
    output: dict[str, Any], max_bytes: int | None, error: str
) -> None:
    policy = RetryPolicy(max_attempts=5, jitter=False)
    outcome = attempt_outcome(policy, 1, output, None, NOW, max_bytes)
    assert isinstance(outcome, Failed)
    assert outcome.error.startswith(f"{error}: "), outcome.error


def test_an_output_at_the_size_limit_is_stored() -> None:
    text = codec.dumps({"blob": "x" * 50})
    outcome = attempt_outcome(RetryPolicy(), 1, {"blob": "x" * 50}, None, NOW, len(text))
    assert outcome == Completed(text)


# -- execution_outcome ---------------------------------------------------------------------------


def chain_workflow(names: Iterable[str]) -> Workflow:
    wf = new_workflow()
    for name in names:
        add(wf, name)
    return wf


def test_an_execution_without_failures_completed() -> None:
    wf = chain_workflow(["a", "b", "c"])
    state = make_state(wf, {"a": COMPLETED, "b": SKIPPED, "c": COMPLETED})
    assert execution_outcome(state) == (COMPLETED, None)


def test_the_error_names_the_root_causes_before_the_upstream_failures() -> None:
    wf = chain_workflow(["down1", "cause", "down2", "lost"])
    state = make_state(
        wf,
        {"down1": UPSTREAM_FAILED, "cause": FAILED, "down2": UPSTREAM_FAILED, "lost": ABANDONED},
        cause={"error": "ValueError: boom"},
        lost={"error": "abandoned after 3 recoveries"},
        down1={"error": "trigger all_success: 'x' is failed"},
    )
    assert execution_outcome(state) == (
        FAILED,
        "task 'cause' failed: ValueError: boom; task 'lost' abandoned: abandoned after 3 "
        "recoveries; 2 tasks upstream_failed",
    )


def test_the_error_lists_three_causes_in_declaration_order_and_counts_the_rest() -> None:
    names = [f"t{i}" for i in range(7)]
    wf = chain_workflow(names)
    statuses = dict.fromkeys(names[:5], FAILED) | {"t5": UPSTREAM_FAILED, "t6": COMPLETED}
    tasks = [
        TaskState(id=str(i), name=n, status=statuses[n], error=f"E{n}")
        for i, n in enumerate(reversed(names))  # loaded in another order
    ]
    state = ExecutionState(wf, "exec-id", tasks, initial="{}")
    status, error = execution_outcome(state)
    assert status == FAILED
    assert error == (
        "task 't0' failed: Et0; task 't1' failed: Et1; task 't2' failed: Et2; and 2 more failed; "
        "1 task upstream_failed"
    )


def test_each_listed_message_is_capped() -> None:
    wf = chain_workflow(["a", "b"])
    long = "x" * (MAX_ERROR_CHARS + 700)
    state = make_state(wf, {"a": FAILED, "b": FAILED}, a={"error": long}, b={"error": "short"})
    status, error = execution_outcome(state)
    assert status == FAILED
    assert error is not None
    assert MAX_ERROR_CHARS == 500
    assert error.startswith("task 'a' failed: " + "x" * 500 + "… (700 more characters); ")
    assert "x" * 501 not in error
    assert error.endswith("task 'b' failed: short")
    # Sixty long failures still make one short line.
    wf = chain_workflow([f"t{i}" for i in range(60)])
    tasks = [TaskState(id=n, name=n, status=FAILED, error=long) for n in wf.tasks]
    state = ExecutionState(wf, "exec-id", tasks, initial="{}")
    _, error = execution_outcome(state)
    assert error is not None
    assert len(error) < 4 * 600
    assert error.endswith("and 57 more failed")


def test_an_error_of_only_upstream_failures_lists_them() -> None:
    wf = chain_workflow(["a", "b"])
    state = make_state(wf, {"a": UPSTREAM_FAILED, "b": COMPLETED}, a={"error": "dep failed"})
    assert execution_outcome(state) == (FAILED, "task 'a' upstream_failed: dep failed")


def test_a_failure_without_a_message() -> None:
    wf = chain_workflow(["a"])
    assert execution_outcome(make_state(wf, {"a": FAILED})) == (FAILED, "task 'a' failed: ")


# -- compensation_order ----------------------------------------------------------------------------


def undo(ctx: Any) -> None:
    return None


def saga_workflow() -> Workflow:
    wf = new_workflow()
    add(wf, "reserve", compensate=undo)
    add(wf, "charge", ["reserve"], compensate=undo)
    add(wf, "email", ["reserve"])  # nothing to undo
    add(wf, "label", ["charge"], compensate=undo)
    add(wf, "insure", [], compensate=undo)
    add(wf, "ship", ["label", "email", "insure"], compensate=undo)
    return wf


def test_compensations_run_in_reverse_topological_order() -> None:
    wf = saga_workflow()
    done = dict.fromkeys(["reserve", "charge", "email", "label", "insure"], COMPLETED)
    state = make_state(wf, {**done, "ship": FAILED})
    order = compensation_order(state)
    expected = [
        n
        for n in reversed(wf.topological_order())
        if n in done and wf.tasks[n].compensate is not None
    ]
    assert order == expected
    assert set(order) == {"reserve", "charge", "label", "insure"}
    assert order.index("label") < order.index("charge") < order.index("reserve")


def test_nothing_is_compensated_unless_the_execution_failed() -> None:
    wf = saga_workflow()
    state = make_state(wf, dict.fromkeys(wf.tasks, COMPLETED))
    assert compensation_order(state) == []
    state = make_state(wf, {**dict.fromkeys(wf.tasks, COMPLETED), "ship": SKIPPED})
    assert compensation_order(state) == []


@pytest.mark.parametrize("failure", [FAILED, UPSTREAM_FAILED, ABANDONED])
def test_every_failed_like_status_starts_compensation(failure: str) -> None:
    wf = saga_workflow()
    state = make_state(wf, {"reserve": COMPLETED, "charge": COMPLETED, "label": failure})
    assert compensation_order(state) == ["charge", "reserve"]


def test_only_completed_tasks_not_yet_compensated() -> None:
    wf = saga_workflow()
    state = make_state(
        wf,
        {
            "reserve": COMPLETED,
            "charge": COMPLETED,
            "email": COMPLETED,
            "label": COMPLETED,
            "insure": SKIPPED,
            "ship": FAILED,
        },
        reserve={"compensation": RUNNING},  # interrupted: resumed
        charge={"compensation": COMPLETED},
        label={"compensation": FAILED},
    )
    assert compensation_order(state) == ["reserve"]


# -- downstream, to_rerun (retry), reusable (fork) -----------------------------------------------


def test_downstream_is_the_task_and_everything_after_it() -> None:
    wf = order_workflow()
    assert downstream(wf, "charge_card") == {"charge_card", "merge_results", "ship"}
    assert downstream(wf, "validate") == set(wf.tasks)
    assert downstream(wf, "ship") == {"ship"}


def tasks_of(
    wf: Workflow, statuses: Mapping[str, str], **per_task: dict[str, Any]
) -> dict[str, TaskState]:
    return make_state(wf, statuses, **per_task).tasks


@pytest.mark.parametrize("status", [FAILED, SKIPPED, UPSTREAM_FAILED, ABANDONED])
def test_retry_reruns_unfinished_work_and_everything_after_it(status: str) -> None:
    wf = order_workflow()
    statuses = dict.fromkeys(wf.tasks, COMPLETED) | {"charge_card": status}
    assert to_rerun(wf, tasks_of(wf, statuses)) == {"charge_card", "merge_results", "ship"}


def test_retry_keeps_completed_work() -> None:
    wf = order_workflow()
    assert to_rerun(wf, tasks_of(wf, dict.fromkeys(wf.tasks, COMPLETED))) == set()
    statuses = dict.fromkeys(wf.tasks, COMPLETED) | {
        "gift_wrap": SKIPPED,
        "merge_results": FAILED,
        "ship": UPSTREAM_FAILED,
    }
    assert to_rerun(wf, tasks_of(wf, statuses)) == {"gift_wrap", "merge_results", "ship"}


def test_retry_reruns_compensated_tasks_and_what_follows_them() -> None:
    wf = order_workflow()
    statuses = dict.fromkeys(wf.tasks, COMPLETED) | {
        "merge_results": FAILED,
        "ship": UPSTREAM_FAILED,
    }
    tasks = tasks_of(wf, statuses, reserve_stock={"compensation": COMPLETED})
    assert to_rerun(wf, tasks) == {"reserve_stock", "merge_results", "ship"}
    tasks = tasks_of(wf, statuses, reserve_stock={"compensation": FAILED})
    assert to_rerun(wf, tasks) == {"merge_results", "ship"}


def test_fork_reuses_completed_tasks_before_from_task() -> None:
    wf = order_workflow()
    tasks = tasks_of(wf, dict.fromkeys(wf.tasks, COMPLETED) | {"gift_wrap": SKIPPED})
    assert reusable(wf, tasks, "merge_results") == {"validate", "charge_card", "reserve_stock"}
    assert reusable(wf, tasks, "charge_card") == {"validate", "reserve_stock"}
    assert reusable(wf, tasks, "validate") == set()
    assert reusable(wf, tasks, "ship") == {
        "validate",
        "charge_card",
        "reserve_stock",
        "merge_results",
    }


def test_a_fork_after_a_refund_must_charge_again() -> None:
    wf = order_workflow()
    statuses = dict.fromkeys(wf.tasks, COMPLETED) | {"ship": FAILED}
    tasks = tasks_of(wf, statuses, charge_card={"compensation": COMPLETED})
    assert reusable(wf, tasks, "ship") == {"validate", "reserve_stock", "gift_wrap"}
    tasks = tasks_of(wf, statuses, validate={"compensation": COMPLETED})
    assert reusable(wf, tasks, "ship") == set()


# -- Defer: retry times ahead ----------------------------------------------------------------------


def test_a_task_waiting_for_its_retry_time_is_deferred() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b", ["a"])
    state = make_state(
        wf, {"a": COMPLETED, "b": READY}, {"a": {"x": 1}}, b={"retry_at": NOW + 30, "attempt": 1}
    )
    assert decide(state, "b", NOW) == Defer("b", NOW + 30)
    assert decide(state, "b", NOW + 29.999) == Defer("b", NOW + 30)
    assert decide(state, "b", NOW + 30) == Start("b", {"x": 1})
    assert advance(state, ["b"], NOW) == [Defer("b", NOW + 30)]
    assert state.tasks["b"].status == READY  # a deferred task is not settled


def test_startable_and_next_retry_respect_retry_times() -> None:
    wf = new_workflow()
    for name in ("later", "soon", "now", "done", "blocked_dep"):
        add(wf, name)
    add(wf, "blocked", ["blocked_dep"])
    state = make_state(
        wf,
        {"done": COMPLETED, "blocked_dep": RUNNING},
        later={"retry_at": NOW + 60},
        soon={"retry_at": NOW + 5},
        now={"retry_at": NOW},
        done={"retry_at": NOW + 1},  # finished: its old retry time does not count
    )
    assert startable(state, NOW) == ["now"]
    assert startable(state, NOW + 5) == ["soon", "now"]
    assert startable(state, NOW + 60) == ["later", "soon", "now"]
    assert next_retry(state) == NOW
    state.tasks["now"].status = RUNNING
    assert next_retry(state) == NOW + 5
    state.tasks["soon"].status = RUNNING
    state.tasks["later"].status = RUNNING
    assert next_retry(state) is None


def test_a_deferred_task_whose_rule_fails_settles_at_once() -> None:
    wf = new_workflow()
    add(wf, "a")
    add(wf, "b", ["a"])
    state = make_state(wf, {"a": FAILED}, b={"retry_at": NOW + 30})
    assert decide(state, "b", NOW) == Settle(
        "b", UPSTREAM_FAILED, "trigger all_success: 'a' is failed"
    )


def test_startable_lists_declaration_order() -> None:
    wf = new_workflow()
    for name in ("c", "a", "b"):
        add(wf, name)
    assert startable(make_state(wf), NOW) == ["c", "a", "b"]
