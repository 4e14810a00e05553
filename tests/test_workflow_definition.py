"""Declaring workflows (SPEC §3): decoration errors, validation, introspection, version."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest

from durably import (
    Context,
    Engine,
    RetryPolicy,
    Task,
    TaskHandle,
    Workflow,
    WorkflowDefinitionError,
    all_of,
    when,
)
from durably.workflow import registered

from .conftest import unique


def noop(ctx: Context) -> None:
    return None


# -- declaring tasks --------------------------------------------------------------------------


def test_task_returns_the_function_unchanged_and_records_its_options() -> None:
    wf = Workflow(unique())
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False)

    def undo(ctx: Context) -> None:
        return None

    def combine(inputs: list[tuple[str, Context]]) -> Context:
        return Context()

    @wf.task()
    def first(ctx: Context) -> None:
        ctx["x"] = 1

    @wf.task(
        name="second",
        dependencies=["first"],
        retry=policy,
        timeout=2,
        trigger="all_done",
        merge=combine,
        compensate=undo,
    )
    async def second_fn(ctx: Context, handle: TaskHandle) -> None:
        return None

    ctx = Context()
    assert first(ctx) is None
    assert ctx["x"] == 1
    assert list(wf.tasks) == ["first", "second"]
    task = wf.tasks["second"]
    assert isinstance(task, Task)
    assert task.name == "second"
    assert task.fn is second_fn
    assert task.dependencies == ("first",)
    assert task.retry == policy
    assert task.timeout == 2.0
    assert task.trigger.to_json() == "all_done"
    assert task.merge is combine
    assert task.compensate is undo
    assert task.is_async
    assert task.wants_handle
    plain = wf.tasks["first"]
    assert plain.dependencies == ()
    assert plain.retry.max_attempts == 1
    assert plain.timeout is None
    assert plain.trigger.to_json() == "all_success"
    assert plain.merge == "latest_wins"
    assert plain.compensate is None
    assert not plain.is_async
    assert not plain.wants_handle


def test_the_task_name_defaults_to_the_function_name() -> None:
    wf = Workflow(unique())
    wf.task()(noop)
    assert list(wf.tasks) == ["noop"]


def test_duplicate_task_name_is_rejected_at_decoration() -> None:
    wf = Workflow(unique())

    @wf.task()
    def step(ctx: Context) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="'step'"):

        @wf.task()
        def step(ctx: Context) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="already has a task named 'step'"):
        wf.task(name="step")(noop)
    assert list(wf.tasks) == ["step"]


BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": 5}, "name"),
    ({"dependencies": "other"}, "dependencies"),
    ({"dependencies": 5}, "dependencies"),
    ({"dependencies": {"other"}}, "dependencies"),
    ({"dependencies": [5]}, "dependency"),
    ({"dependencies": [None]}, "dependency"),
    ({"dependencies": ["a", "a"]}, "twice"),
    ({"retry": 3}, "retry"),
    ({"retry": {"max_attempts": 3}}, "retry"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": "10"}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"trigger": "sometimes"}, "trigger"),
    ({"trigger": 5}, "trigger"),
    ({"merge": "newest"}, "merge"),
    ({"merge": 5}, "merge"),
    ({"compensate": "undo"}, "compensate"),
    ({"compensate": 5}, "compensate"),
]


@pytest.mark.parametrize(("kwargs", "word"), BAD_ARGUMENTS)
def test_bad_argument_values_are_rejected_at_decoration(kwargs: dict[str, Any], word: str) -> None:
    wf = Workflow(unique())
    with pytest.raises(WorkflowDefinitionError, match=word):
        wf.task(**kwargs)(noop)
    assert wf.tasks == {}


@pytest.mark.parametrize(
    "fn",
    [
        lambda: None,
        lambda ctx, handle, extra: None,
        lambda ctx, *, key: None,
    ],
    ids=["no-argument", "three-arguments", "keyword-only"],
)
def test_a_task_must_take_ctx_or_ctx_and_handle(fn: Callable[..., Any]) -> None:
    wf = Workflow(unique())
    with pytest.raises(WorkflowDefinitionError, match=r"\(ctx\) or \(ctx, handle\)"):
        wf.task(name="t")(fn)


def test_the_handle_form_is_detected() -> None:
    wf = Workflow(unique())
    wf.task(name="one")(lambda ctx: None)
    wf.task(name="two")(lambda ctx, handle: None)
    wf.task(name="defaulted")(lambda ctx, handle=None: None)
    wf.task(name="star")(lambda *args: None)
    assert not wf.tasks["one"].wants_handle
    assert wf.tasks["two"].wants_handle
    # SPEC §3: a defaulted second parameter is a bound value (def step(ctx, i=i)), not the
    # handle, unless annotated TaskHandle (tests/test_edge_inputs.py covers the annotations).
    assert not wf.tasks["defaulted"].wants_handle
    assert wf.tasks["star"].wants_handle


def test_decorating_a_non_callable_is_rejected() -> None:
    wf = Workflow(unique())
    with pytest.raises(WorkflowDefinitionError):
        wf.task()(42)  # type: ignore[arg-type]


def test_workflow_needs_a_name() -> None:
    with pytest.raises(WorkflowDefinitionError):
        Workflow("")
    with pytest.raises(WorkflowDefinitionError):
        Workflow(3)  # type: ignore[arg-type]


# -- dependencies -----------------------------------------------------------------------------


def test_dependencies_may_be_names_or_the_task_functions() -> None:
    wf = Workflow(unique())

    @wf.task()
    def validate(ctx: Context) -> None: ...

    @wf.task(name="charge_card", dependencies=[validate])
    def charge(ctx: Context) -> None: ...

    @wf.task(dependencies=[validate, charge])
    def ship(ctx: Context) -> None: ...

    @wf.task(dependencies=("charge_card", validate))
    def notify(ctx: Context) -> None: ...

    assert wf.tasks["charge_card"].dependencies == ("validate",)
    assert wf.tasks["ship"].dependencies == ("validate", "charge_card")  # declaration order kept
    assert wf.tasks["notify"].dependencies == ("charge_card", "validate")
    wf.validate()


def test_a_function_and_its_name_together_are_a_duplicate_dependency() -> None:
    wf = Workflow(unique())

    @wf.task()
    def a(ctx: Context) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="twice"):
        wf.task(name="b", dependencies=[a, "a"])(noop)


def test_a_function_that_is_not_a_task_of_this_workflow_is_rejected() -> None:
    other = Workflow(unique())

    @other.task()
    def elsewhere(ctx: Context) -> None: ...

    wf = Workflow(unique())
    with pytest.raises(WorkflowDefinitionError, match="elsewhere"):
        wf.task(name="b", dependencies=[elsewhere])(noop)

    def undecorated(ctx: Context) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="undecorated"):
        wf.task(name="c", dependencies=[undecorated])(noop)


def test_dependencies_may_name_tasks_declared_later() -> None:
    wf = Workflow(unique())
    wf.task(name="report", dependencies=["load", "clean"])(noop)
    wf.task(name="clean", dependencies=["load"])(noop)
    wf.task(name="load")(noop)
    wf.validate()
    assert wf.topological_order() == ["load", "clean", "report"]
    assert wf.roots() == ["load"]
    assert wf.leaves() == ["report"]


def test_unknown_dependency_is_reported_by_validate_with_the_closest_name() -> None:
    wf = Workflow(unique())
    wf.task(name="charge")(noop)
    wf.task(name="ship", dependencies=["chrage"])(noop)  # no error yet: it may come later
    with pytest.raises(WorkflowDefinitionError) as info:
        wf.validate()
    message = str(info.value)
    assert "'ship'" in message
    assert "'chrage'" in message
    assert "did you mean 'charge'?" in message


def test_unknown_dependency_without_a_close_name_gives_no_suggestion() -> None:
    wf = Workflow(unique())
    wf.task(name="charge")(noop)
    wf.task(name="ship", dependencies=["zzzzqqq"])(noop)
    with pytest.raises(WorkflowDefinitionError, match="unknown task 'zzzzqqq'") as info:
        wf.validate()
    assert "did you mean" not in str(info.value)


def test_unknown_dependency_is_raised_at_run(tmp_path: Any) -> None:
    wf = Workflow(unique())
    wf.task(name="charge")(noop)
    wf.task(name="ship", dependencies=["chargee"])(noop)
    with Engine(f"sqlite:///{tmp_path}/d.db") as engine:
        with pytest.raises(WorkflowDefinitionError, match="did you mean 'charge'"):
            engine.run(wf)
        assert engine.list() == []  # nothing was written


def _assert_cycle_path(message: str, wf: Workflow, members: set[str]) -> None:
    match = re.search(r"(\w+(?: -> \w+)+)", message)
    assert match, message
    path = match.group(1).split(" -> ")
    assert path[0] == path[-1]
    assert set(path) == members
    # Shown in the direction work flows: each task is a dependency of the next.
    for upstream, downstream in itertools.pairwise(path):
        assert upstream in wf.tasks[downstream].dependencies


def test_a_cycle_is_reported_with_its_path() -> None:
    wf = Workflow(unique())
    wf.task(name="a", dependencies=["c"])(noop)
    wf.task(name="b", dependencies=["a"])(noop)
    wf.task(name="c", dependencies=["b"])(noop)
    with pytest.raises(WorkflowDefinitionError, match="cycle") as info:
        wf.validate()
    _assert_cycle_path(str(info.value), wf, {"a", "b", "c"})
    assert "a -> b -> c -> a" in str(info.value)


def test_a_cycle_beside_an_acyclic_part_shows_only_the_cycle() -> None:
    wf = Workflow(unique())
    wf.task(name="start")(noop)
    wf.task(name="left", dependencies=["start", "right"])(noop)
    wf.task(name="right", dependencies=["left"])(noop)
    wf.task(name="end", dependencies=["right"])(noop)
    with pytest.raises(WorkflowDefinitionError, match="cycle") as info:
        wf.topological_order()
    _assert_cycle_path(str(info.value), wf, {"left", "right"})
    for method in (wf.levels, wf.validate):
        with pytest.raises(WorkflowDefinitionError, match="cycle"):
            method()


def test_a_cycle_is_raised_at_run(tmp_path: Any) -> None:
    wf = Workflow(unique())
    wf.task(name="a", dependencies=["b"])(noop)
    wf.task(name="b", dependencies=["a"])(noop)
    with (
        Engine(f"sqlite:///{tmp_path}/d.db") as engine,
        pytest.raises(WorkflowDefinitionError, match="cycle"),
    ):
        engine.run(wf)


def test_a_self_dependency_is_a_cycle() -> None:
    wf = Workflow(unique())

    def declare_and_validate() -> None:
        # Raised at decoration or by validate(): either way before anything runs.
        wf.task(name="loop", dependencies=["loop"])(noop)
        wf.validate()

    with pytest.raises(WorkflowDefinitionError, match=r"itself|cycle") as info:
        declare_and_validate()
    assert "loop -> loop" in str(info.value)


def test_an_empty_workflow_does_not_validate() -> None:
    wf = Workflow(unique())
    with pytest.raises(WorkflowDefinitionError, match="no tasks"):
        wf.validate()


def test_adding_a_task_after_validation_is_checked_again() -> None:
    wf = Workflow(unique())
    wf.task(name="a")(noop)
    assert wf.topological_order() == ["a"]
    wf.task(name="b", dependencies=["missing"])(noop)
    with pytest.raises(WorkflowDefinitionError, match="missing"):
        wf.validate()
    wf.task(name="missing")(noop)
    assert wf.topological_order() == ["a", "missing", "b"]


# -- introspection ----------------------------------------------------------------------------


def _diamond_plus() -> Workflow:
    r"""
    extract   config
       |   \    |
     clean  enrich
        \    /
        report     audit (independent)
    """
    wf = Workflow(unique())
    wf.task(name="extract")(noop)
    wf.task(name="report", dependencies=["clean", "enrich"])(noop)
    wf.task(name="clean", dependencies=["extract"])(noop)
    wf.task(name="config")(noop)
    wf.task(name="enrich", dependencies=["extract", "config"])(noop)
    wf.task(name="audit")(noop)
    return wf


def test_introspection() -> None:
    wf = _diamond_plus()
    assert list(wf.tasks) == ["extract", "report", "clean", "config", "enrich", "audit"]
    assert all(isinstance(task, Task) for task in wf.tasks.values())
    assert wf.roots() == ["extract", "config", "audit"]
    assert wf.leaves() == ["report", "audit"]
    assert wf.levels() == [["extract", "config", "audit"], ["clean", "enrich"], ["report"]]
    assert wf.topological_order() == ["extract", "config", "audit", "clean", "enrich", "report"]


def test_topological_order_puts_every_dependency_first() -> None:
    wf = _diamond_plus()
    order = wf.topological_order()
    assert sorted(order) == sorted(wf.tasks)
    for name, task in wf.tasks.items():
        assert all(order.index(dep) < order.index(name) for dep in task.dependencies)
    # Every task's dependencies sit in earlier levels.
    level_of = {name: i for i, level in enumerate(wf.levels()) for name in level}
    for name, task in wf.tasks.items():
        assert all(level_of[dep] < level_of[name] for dep in task.dependencies)


def test_ties_in_the_topological_order_keep_declaration_order() -> None:
    wf = Workflow(unique())
    for name in ["z", "m", "a"]:
        wf.task(name=name)(noop)
    wf.task(name="y", dependencies=["a"])(noop)
    wf.task(name="b", dependencies=["z"])(noop)
    assert wf.topological_order() == ["z", "m", "a", "y", "b"]
    assert wf.levels() == [["z", "m", "a"], ["y", "b"]]


def test_introspection_returns_fresh_lists() -> None:
    wf = _diamond_plus()
    wf.topological_order().clear()
    wf.roots().clear()
    wf.levels().clear()
    assert wf.topological_order()[0] == "extract"
    assert wf.roots() == ["extract", "config", "audit"]
    assert len(wf.levels()) == 3


def test_a_single_task_is_root_and_leaf() -> None:
    wf = Workflow(unique())
    wf.task(name="only")(noop)
    assert wf.roots() == wf.leaves() == wf.topological_order() == ["only"]
    assert wf.levels() == [["only"]]


def test_a_long_chain() -> None:
    wf = Workflow(unique())
    names = [f"t{i}" for i in range(20)]
    for i, name in enumerate(names):
        wf.task(name=name, dependencies=[names[i - 1]] if i else [])(noop)
    assert wf.topological_order() == names
    assert wf.levels() == [[n] for n in names]
    assert wf.roots() == ["t0"]
    assert wf.leaves() == ["t19"]


# -- version ----------------------------------------------------------------------------------


def _build(
    name: str, *, body: str = "a", deps: tuple[str, ...] = ("first",), task_name: str = "second"
) -> Workflow:
    wf = Workflow(name)

    @wf.task()
    def first(ctx: Context) -> None:
        ctx["x"] = 1

    if body == "a":

        @wf.task(name=task_name, dependencies=deps)
        def second(ctx: Context) -> None:
            ctx["y"] = ctx["x"] + 1

    else:

        @wf.task(name=task_name, dependencies=deps)
        def second(ctx: Context) -> None:
            ctx["y"] = ctx["x"] + 2

    wf.task(name="extra")(noop)
    return wf


def test_version_is_a_hex_string_stable_across_identical_definitions() -> None:
    name = unique()
    one = _build(name)
    two = _build(name)
    assert re.fullmatch(r"[0-9a-f]+", one.version)
    assert one.version == two.version
    assert one.version == one.version


def test_version_changes_when_code_changes() -> None:
    name = unique()
    assert _build(name).version != _build(name, body="b").version


def test_version_changes_when_dependencies_change() -> None:
    name = unique()
    assert _build(name).version != _build(name, deps=()).version
    assert _build(name, deps=("first", "extra")).version != _build(name).version


def test_version_changes_when_a_task_is_renamed_or_added() -> None:
    name = unique()
    base = _build(name).version
    assert _build(name, task_name="renamed").version != base
    bigger = _build(name)
    bigger.task(name="more")(noop)
    assert bigger.version != base


def test_version_changes_when_a_task_is_added_after_it_was_read() -> None:
    wf = _build(unique())
    before = wf.version
    wf.task(name="late", dependencies=["extra"])(noop)
    assert wf.version != before
    assert wf.version == wf.version


def test_version_changes_when_a_constant_in_the_code_changes() -> None:
    def make(threshold: int) -> Workflow:
        wf = Workflow("constant_" + name)
        if threshold == 1:
            wf.task(name="t")(lambda ctx: ctx.update(limit=1))
        else:
            wf.task(name="t")(lambda ctx: ctx.update(limit=2))
        return wf

    name = unique()
    assert make(1).version != make(2).version
    assert make(1).version == make(1).version


def test_version_does_not_change_by_validating_or_introspecting() -> None:
    name = unique()
    before = _build(name).version
    rebuilt = _build(name)
    rebuilt.validate()
    rebuilt.levels()
    assert rebuilt.version == before


# -- the process-wide registry ----------------------------------------------------------------


def test_redefining_a_workflow_name_replaces_it() -> None:
    name = unique()
    old = Workflow(name)
    old.task(name="a")(noop)
    assert registered(name) is old
    new = Workflow(name)
    new.task(name="b")(noop)
    assert registered(name) is new
    assert list(new.tasks) == ["b"]
    assert registered(unique("never_defined")) is None


def test_a_replaced_workflow_runs_its_new_definition(tmp_path: Any) -> None:
    name = unique()
    old = Workflow(name)
    old.task(name="step")(lambda ctx: ctx.update(which="old"))
    with Engine(f"sqlite:///{tmp_path}/d.db") as engine:
        assert engine.run(old).context["which"] == "old"
        new = Workflow(name)
        new.task(name="step")(lambda ctx: ctx.update(which="new"))
        result = engine.run(new)
        assert result.status == "completed"
        assert result.context["which"] == "new"
        assert result.version == new.version != old.version


def test_triggers_and_conditions_are_accepted_as_trigger() -> None:
    wf = Workflow(unique())
    wf.task(name="a")(noop)
    wf.task(name="b", dependencies=["a"], trigger=when("x", ">", 1))(noop)
    wf.task(name="c", dependencies=["a"], trigger=all_of("all_done", when("y", "exists")))(noop)
    for rule in ("all_success", "all_done", "one_failed", "none_failed"):
        wf.task(name=f"d_{rule}", dependencies=["a"], trigger=rule)(noop)
    assert wf.tasks["b"].trigger == when("x", ">", 1)
    assert wf.tasks["d_one_failed"].trigger.to_json() == "one_failed"
    wf.validate()


@pytest.mark.parametrize("strategy", ["latest_wins", "deep", "strict"])
def test_merge_strategies_by_name_are_accepted(strategy: str) -> None:
    wf = Workflow(unique())
    wf.task(name="t", merge=strategy)(noop)
    assert wf.tasks["t"].merge == strategy
