"""Context flow between tasks on the real store (SPEC §3, §3.1 rules 1-8)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from durably import (
    Context,
    Engine,
    ExecutionNotFound,
    ExecutionScope,
    RetryPolicy,
    SagaContext,
    TaskHandle,
    Workflow,
    codec,
)

from .conftest import unique, wait_until

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False)


def _recorder(into: dict[str, Any], name: str) -> Callable[[Context], None]:
    def record(ctx: Context) -> None:
        into[name] = copy.deepcopy(dict(ctx))

    return record


def _marker(name: str) -> Callable[[Context], None]:
    def mark(ctx: Context) -> None:
        ctx[f"set_by_{name}"] = True

    return mark


def completed(engine: Engine, ctx: Context, task: str) -> bool:
    """From inside a task: whether ``task`` of the same execution is stored as completed."""
    assert ctx.scope is not None
    return engine.get(ctx.scope.execution_id).tasks[task].status == "completed"


def saved_initial_context(engine: Engine, execution_id: uuid.UUID) -> dict[str, Any]:
    with engine.store.read() as tx:
        row = tx.fetch_one("get_execution", {"id": str(execution_id)})
        assert row is not None
        value = tx.fetch_one("get_context", {"id": str(row["context_id"])})
    assert value is not None
    return codec.loads(value["value"])


# -- rules 1-2: the initial context -----------------------------------------------------------


def test_roots_receive_a_copy_of_the_initial_context(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: dict[str, Any] = {}

    @wf.task()
    def mutate(ctx: Context) -> None:
        ctx["n"] = 2
        ctx["nested"]["x"] = 99
        ctx["items"].append(2)
        del ctx["gone"]

    @wf.task()
    def observe(ctx: Context) -> None:
        wait_until(lambda: completed(engine, ctx, "mutate"), "mutate")
        seen.update(copy.deepcopy(dict(ctx)))

    initial = Context(n=1, nested={"x": 1}, items=[1], gone="here")
    result = engine.run(wf, initial)

    assert result.status == "completed", result.error
    expected = {"n": 1, "nested": {"x": 1}, "items": [1], "gone": "here"}
    assert seen == expected  # the sibling root's changes never reached it
    assert initial == expected  # the caller's object is untouched
    assert result.tasks["mutate"].context == {"n": 2, "nested": {"x": 99}, "items": [1, 2]}
    assert result.tasks["observe"].context == expected


def test_the_initial_context_is_saved_and_every_root_gets_it(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: dict[str, dict[str, Any]] = {}
    for name in ("r1", "r2", "r3"):
        wf.task(name=name)(_recorder(seen, name))
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    initial = {"a": 1, "when": when, "amount": Decimal("9.99")}
    result = engine.run(wf, initial)
    assert result.status == "completed"
    assert seen == {"r1": initial, "r2": initial, "r3": initial}
    saved = saved_initial_context(engine, result.execution_id)
    assert saved == initial
    assert isinstance(saved["amount"], Decimal)

    cases = [(None, {}), ({}, {}), ({"k": "v"}, {"k": "v"}), (Context(k="v"), {"k": "v"})]
    for given, expected in cases:
        seen.clear()
        result = engine.run(wf, given)
        assert result.status == "completed"
        assert seen == {"r1": expected, "r2": expected, "r3": expected}
        assert result.context == expected
        assert saved_initial_context(engine, result.execution_id) == expected


# -- rule 3: one dependency -------------------------------------------------------------------


def test_a_single_dependency_passes_its_output(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: dict[str, dict[str, Any]] = {}

    @wf.task()
    def first(ctx: Context) -> None:
        ctx["a"] = 1
        del ctx["drop"]

    wf.task(name="second", dependencies=[first])(_recorder(seen, "second"))

    @wf.task()
    def replace(ctx: Context) -> dict[str, Any]:
        ctx["ignored"] = True
        return {"only": 1}

    wf.task(name="after_replace", dependencies=["replace"])(_recorder(seen, "after_replace"))

    result = engine.run(wf, {"drop": True, "keep": True})
    assert seen["second"] == {"keep": True, "a": 1}
    assert seen["after_replace"] == {"only": 1}  # a returned dict, exactly
    assert result.tasks["replace"].context == {"only": 1}


def test_siblings_get_independent_copies_of_a_dependency_output(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: list[Any] = []

    @wf.task()
    def source(ctx: Context) -> None:
        ctx["items"] = [1]

    @wf.task(dependencies=["source"])
    def appender(ctx: Context) -> None:
        ctx["items"].append(2)

    @wf.task(dependencies=["source"])
    def reader(ctx: Context) -> None:
        wait_until(lambda: completed(engine, ctx, "appender"), "appender")
        seen.append(list(ctx["items"]))

    result = engine.run(wf)
    assert seen == [[1]]
    assert result.tasks["appender"].context == {"items": [1, 2]}
    assert result.tasks["source"].context == {"items": [1]}


def test_rich_values_flow_between_tasks_with_their_types(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: dict[str, Any] = {}
    stamp = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    @wf.task()
    def produce(ctx: Context) -> None:
        ctx.update(at=stamp, price=Decimal("1.10"), tags={"a", "b"}, pair=(1, 2), raw=b"\x00")

    @wf.task(dependencies=["produce"])
    def consume(ctx: Context) -> None:
        seen.update(dict(ctx))

    engine.run(wf)
    assert seen == {
        "at": stamp,
        "price": Decimal("1.10"),
        "tags": {"a", "b"},
        "pair": (1, 2),
        "raw": b"\x00",
    }
    assert type(seen["pair"]) is tuple
    assert type(seen["tags"]) is set


# -- rule 4: several dependencies merged in declaration order ---------------------------------


def _fan_in(engine: Engine, wf: Workflow, *, make_async: bool) -> None:
    """Three roots that finish in the REVERSE of their declaration order: third, second,
    first. Each waits until the next-declared one is stored as completed."""
    order = ["first", "second", "third"]
    for i, name in enumerate(order):
        later = order[i + 1] if i + 1 < len(order) else None
        wf.task(name=name)(_finisher(engine, name, later, make_async))


def _finisher(
    engine: Engine, name: str, later: str | None, make_async: bool
) -> Callable[[Context], Any]:
    if make_async:

        async def async_fn(ctx: Context) -> None:
            if later is not None:
                deadline = time.monotonic() + 20
                while not await asyncio.to_thread(completed, engine, ctx, later):
                    assert time.monotonic() < deadline, f"{later} never completed"
                    await asyncio.sleep(0.005)
            ctx["winner"] = name
            ctx[f"from_{name}"] = True

        return async_fn

    def fn(ctx: Context) -> None:
        if later is not None:
            wait_until(lambda: completed(engine, ctx, later), later)
        ctx["winner"] = name
        ctx[f"from_{name}"] = True

    return fn


def _assert_finished_in_reverse(result: Any) -> None:
    done = {name: result.tasks[name].completed_at for name in ("first", "second", "third")}
    assert done["third"] <= done["second"] <= done["first"], done


@pytest.mark.parametrize("make_async", [False, True], ids=["sync", "async"])
def test_the_last_declared_dependency_wins_even_when_it_finishes_first(
    engine: Engine, make_async: bool
) -> None:
    wf = Workflow(unique())
    _fan_in(engine, wf, make_async=make_async)
    seen: dict[str, dict[str, Any]] = {}

    @wf.task(dependencies=["first", "second", "third"])
    def join(ctx: Context) -> None:
        seen["join"] = dict(ctx)

    result = engine.run(wf, {"base": 0})
    assert result.status == "completed", result.error
    _assert_finished_in_reverse(result)
    assert seen["join"] == {
        "base": 0,
        "winner": "third",
        "from_first": True,
        "from_second": True,
        "from_third": True,
    }


def test_declaration_order_is_per_task_not_global(engine: Engine) -> None:
    wf = Workflow(unique())
    _fan_in(engine, wf, make_async=False)
    seen: dict[str, Any] = {}
    wf.task(name="forward", dependencies=["first", "second", "third"])(
        lambda ctx: seen.__setitem__("forward", ctx["winner"])
    )
    wf.task(name="backward", dependencies=["third", "second", "first"])(
        lambda ctx: seen.__setitem__("backward", ctx["winner"])
    )
    wf.task(name="middle", dependencies=["first", "third", "second"])(
        lambda ctx: seen.__setitem__("middle", ctx["winner"])
    )
    result = engine.run(wf)
    _assert_finished_in_reverse(result)
    assert seen == {"forward": "third", "backward": "first", "middle": "second"}


def test_merge_is_per_top_level_key(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: dict[str, dict[str, Any]] = {}
    wf.task(name="a")(lambda ctx: {"user_id": 123, "status": "pending", "cfg": {"x": 1, "y": 1}})
    wf.task(name="b")(lambda ctx: {"status": "completed", "result": 42, "cfg": {"y": 2}})
    wf.task(name="join", dependencies=["a", "b"])(_recorder(seen, "join"))

    @wf.task()
    def keeps(ctx: Context) -> None:
        ctx["extra"] = 1

    @wf.task()
    def drops(ctx: Context) -> None:
        del ctx["shared"]

    wf.task(name="join2", dependencies=["keeps", "drops"])(_recorder(seen, "join2"))
    engine.run(wf, {"shared": "v"})
    # The seed's worked example, plus a nested dict that latest_wins replaces whole.
    assert seen["join"] == {"user_id": 123, "status": "completed", "cfg": {"y": 2}, "result": 42}
    assert list(seen["join"]) == ["user_id", "status", "cfg", "result"]
    # {**out(keeps), **out(drops)}: a key absent from the later output is kept from the earlier.
    assert seen["join2"] == {"shared": "v", "extra": 1}


# -- rule 5: transitive values ----------------------------------------------------------------


def test_values_flow_transitively(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: dict[str, dict[str, Any]] = {}
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        wf.task(name=name, dependencies=names[i - 1 : i])(_marker(name))
    wf.task(name="end", dependencies=["d"])(_recorder(seen, "end"))
    result = engine.run(wf, {"start": 1})
    expected = {"start": 1, **{f"set_by_{n}": True for n in names}}
    assert seen["end"] == expected
    assert result.context == expected

    diamond = Workflow(unique())
    diamond.task(name="root")(lambda ctx: ctx.update(root=1, overwritten="root"))
    diamond.task(name="left", dependencies=["root"])(lambda ctx: ctx.update(left=1))
    diamond.task(name="right", dependencies=["root"])(lambda ctx: ctx.update(overwritten="right"))
    diamond.task(name="tip", dependencies=["left"])(lambda ctx: ctx.update(tip=1))
    diamond.task(name="join", dependencies=["tip", "right"])(_recorder(seen, "join"))
    engine.run(diamond, {"initial": True})
    assert seen["join"] == {
        "initial": True,
        "root": 1,
        "overwritten": "right",
        "left": 1,
        "tip": 1,
    }


def test_an_earlier_dependency_carries_stale_values_that_a_later_one_overrides(
    engine: Engine,
) -> None:
    # left sees root's count=1 and passes it on; right changes it. join declares right LAST,
    # so right's value wins; with the order flipped, left's stale copy wins (rule 4 is per key).
    wf = Workflow(unique())
    seen: dict[str, Any] = {}
    wf.task(name="root")(lambda ctx: ctx.update(count=1))
    wf.task(name="left", dependencies=["root"])(lambda ctx: ctx.update(left=True))
    wf.task(name="right", dependencies=["root"])(lambda ctx: ctx.update(count=2))
    wf.task(name="j1", dependencies=["left", "right"])(
        lambda ctx: seen.__setitem__("j1", ctx["count"])
    )
    wf.task(name="j2", dependencies=["right", "left"])(
        lambda ctx: seen.__setitem__("j2", ctx["count"])
    )
    engine.run(wf)
    assert seen == {"j1": 2, "j2": 1}


# -- rule 6: merge= strategies ----------------------------------------------------------------


def _two_sources(wf: Workflow, one: dict[str, Any], two: dict[str, Any]) -> None:
    wf.task(name="one")(lambda ctx: ctx.update(copy.deepcopy(one)))
    wf.task(name="two")(lambda ctx: ctx.update(copy.deepcopy(two)))


def test_merge_deep_end_to_end(engine: Engine) -> None:
    wf = Workflow(unique())
    _two_sources(
        wf,
        {"cfg": {"x": 1, "y": 1, "sub": {"p": 1}}, "s": 1},
        {"cfg": {"y": 2, "z": 2, "sub": {"q": 2}}, "s": 2},
    )
    seen: dict[str, Any] = {}
    wf.task(name="deep", dependencies=["one", "two"], merge="deep")(
        lambda ctx: seen.__setitem__("deep", dict(ctx))
    )
    wf.task(name="flat", dependencies=["one", "two"])(
        lambda ctx: seen.__setitem__("flat", dict(ctx))
    )
    result = engine.run(wf, {"base": True})
    assert result.status == "completed", result.error
    assert seen["deep"] == {
        "base": True,
        "cfg": {"x": 1, "y": 2, "z": 2, "sub": {"p": 1, "q": 2}},
        "s": 2,
    }
    assert seen["flat"] == {"base": True, "cfg": {"y": 2, "z": 2, "sub": {"q": 2}}, "s": 2}


def test_merge_strict_agreement_and_inherited_keys(engine: Engine) -> None:
    wf = Workflow(unique())
    # Both receive the initial context unchanged, so the shared initial key agrees.
    _two_sources(wf, {"a": 1, "same": [1, 2]}, {"b": 2, "same": [1, 2]})
    seen: dict[str, dict[str, Any]] = {}
    wf.task(name="join", dependencies=["one", "two"], merge="strict")(_recorder(seen, "join"))
    # Each output carries what its task received: a branch that leaves an inherited key alone
    # still holds the old value, which disagrees with a branch that changed it.
    wf.task(name="changes")(lambda ctx: ctx.update(order="paid"))
    wf.task(name="keeps")(lambda ctx: ctx.update(other=1))
    wf.task(name="join2", dependencies=["changes", "keeps"], merge="strict")(lambda ctx: None)
    result = engine.run(wf, {"order": "new"})
    assert result.tasks["join"].status == "completed"
    assert seen["join"] == {"order": "new", "a": 1, "same": [1, 2], "b": 2}
    assert result.tasks["join2"].status == "failed"
    error = result.tasks["join2"].error or ""
    assert "'order'" in error
    assert "'changes'" in error
    assert "'keeps'" in error


def test_merge_strict_conflict_fails_the_task_without_retry(engine: Engine) -> None:
    wf = Workflow(unique())
    _two_sources(wf, {"total": 10}, {"total": 12})
    calls: list[int] = []
    wf.task(name="join", dependencies=["one", "two"], merge="strict", retry=FAST)(
        lambda ctx: calls.append(1)
    )
    wf.task(name="after", dependencies=["join"])(lambda ctx: calls.append(2))
    result = engine.run(wf)
    assert result.status == "failed"
    assert calls == []
    join = result.tasks["join"]
    assert join.status == "failed"
    assert join.attempts <= 1
    for text in (join.error, result.error):
        assert text is not None
        assert "ContextConflictError" in text
        assert "'total'" in text
        assert "'one'" in text
        assert "'two'" in text
    assert result.tasks["after"].status == "upstream_failed"
    assert result.tasks["one"].status == result.tasks["two"].status == "completed"


def test_merge_callable_end_to_end(engine: Engine) -> None:
    wf = Workflow(unique())
    _fan_in(engine, wf, make_async=False)
    received: list[list[tuple[str, Any]]] = []
    seen: list[dict[str, Any]] = []

    def tally(inputs: list[tuple[str, Context]]) -> Context:
        received.append([(name, ctx["winner"]) for name, ctx in inputs])
        assert all(isinstance(ctx, Context) for _, ctx in inputs)
        return Context(order=[name for name, _ in inputs], n=len(inputs))

    def as_dict(inputs: list[tuple[str, Context]]) -> dict[str, Any]:
        return {"names": "+".join(name for name, _ in inputs)}

    wf.task(name="join", dependencies=["third", "first", "second"], merge=tally)(
        lambda ctx: seen.append(dict(ctx))
    )
    wf.task(name="join2", dependencies=["first", "second"], merge=as_dict)(
        lambda ctx: seen.append(dict(ctx))
    )
    result = engine.run(wf)
    assert result.status == "completed", result.error
    _assert_finished_in_reverse(result)
    assert received == [[("third", "third"), ("first", "first"), ("second", "second")]]
    assert {"order": ["third", "first", "second"], "n": 3} in seen
    assert {"names": "first+second"} in seen


def test_merge_callable_returning_a_bad_value_or_raising_fails_the_task(engine: Engine) -> None:
    wf = Workflow(unique())
    _two_sources(wf, {"a": 1}, {"b": 2})
    calls: list[str] = []

    def broken(inputs: list[tuple[str, Context]]) -> Context:
        raise RuntimeError("merge exploded")

    wf.task(name="bad_value", dependencies=["one", "two"], merge=lambda inputs: 42, retry=FAST)(
        lambda ctx: calls.append("bad_value")
    )
    wf.task(name="raising", dependencies=["one", "two"], merge=broken, retry=FAST)(
        lambda ctx: calls.append("raising")
    )
    wf.task(name="after", dependencies=["raising"])(lambda ctx: calls.append("after"))
    result = engine.run(wf)
    assert result.status == "failed"
    assert calls == []
    assert result.tasks["bad_value"].status == "failed"
    assert "TaskReturnError" in (result.tasks["bad_value"].error or "")
    assert "merge" in (result.tasks["bad_value"].error or "")
    assert result.tasks["raising"].status == "failed"
    assert "merge exploded" in (result.tasks["raising"].error or "")
    assert "merge exploded" in (result.error or "")
    assert result.tasks["after"].status == "upstream_failed"


# -- rule 8: the final context ----------------------------------------------------------------


def test_final_context_merges_the_leaves_in_declaration_order(engine: Engine) -> None:
    wf = Workflow(unique())

    @wf.task()
    def root(ctx: Context) -> None:
        ctx["root"] = True

    @wf.task(dependencies=["root"])
    def leaf_declared_first(ctx: Context) -> None:
        wait_until(lambda: completed(engine, ctx, "leaf_declared_last"), "the other leaf")
        ctx["winner"] = "first"
        ctx["only_first"] = 1

    @wf.task(dependencies=["root"])
    def leaf_declared_last(ctx: Context) -> None:
        ctx["winner"] = "last"
        ctx["only_last"] = 1

    result = engine.run(wf, {"initial": 0})
    assert result.status == "completed", result.error
    tasks = result.tasks
    assert tasks["leaf_declared_last"].completed_at <= tasks["leaf_declared_first"].completed_at  # type: ignore[operator]
    assert result.context == {
        "initial": 0,
        "root": True,
        "winner": "last",
        "only_first": 1,
        "only_last": 1,
    }
    assert engine.get(result.execution_id).context == result.context


def test_final_context_ignores_non_leaf_outputs(engine: Engine) -> None:
    wf = Workflow(unique())

    @wf.task()
    def a(ctx: Context) -> None:
        ctx["from_a"] = True

    @wf.task(dependencies=["a"])
    def b(ctx: Context) -> dict[str, Any]:
        return {"from_b": True}  # drops a's keys

    result = engine.run(wf, {"initial": True})
    assert result.context == {"from_b": True}

    single = Workflow(unique())
    single.task(name="only")(lambda ctx: Context(answer=42))
    result = engine.run(single, {"question": "?"})
    assert result.context == {"answer": 42}
    assert isinstance(result.context, Context)


def test_task_context_returns_each_saved_output(engine: Engine) -> None:
    wf = Workflow(unique())
    wf.task(name="a")(lambda ctx: ctx.update(a=1))
    wf.task(name="b", dependencies=["a"])(lambda ctx: ctx.update(b=2))
    wf.task(name="c", dependencies=["a"])(lambda ctx: {"c": 3})

    @wf.task()
    def broken(ctx: Context) -> None:
        raise RuntimeError("no output")

    result = engine.run(wf, {"i": 0})
    expected = {"a": {"i": 0, "a": 1}, "b": {"i": 0, "a": 1, "b": 2}, "c": {"c": 3}}
    for name, output in expected.items():
        saved = engine.task_context(result.execution_id, name)
        assert isinstance(saved, Context)
        assert saved == output
        assert result.tasks[name].context == output
        assert engine.task_context(str(result.execution_id), name) == output
    assert result.context == {"i": 0, "a": 1, "b": 2, "c": 3}

    with pytest.raises(LookupError):
        engine.task_context(result.execution_id, "nope")
    with pytest.raises(LookupError):
        engine.task_context(result.execution_id, "broken")  # failed: nothing saved
    assert result.tasks["broken"].context is None
    with pytest.raises(ExecutionNotFound):
        engine.task_context(uuid.uuid4(), "a")


# -- return rules -----------------------------------------------------------------------------


def _returning(value: Any, make_async: bool) -> Callable[[Context], Any]:
    if make_async:

        async def async_fn(ctx: Context) -> Any:
            ctx["ignored"] = True
            return value() if callable(value) else value

        return async_fn

    def fn(ctx: Context) -> Any:
        ctx["ignored"] = True
        return value() if callable(value) else value

    return fn


def test_returning_none_a_context_or_a_dict(engine: Engine) -> None:
    wf = Workflow(unique())
    makers = {"context": lambda: Context(new=1), "saga": lambda: SagaContext(new=1)}
    makers["dict"] = lambda: {"new": 1}
    for kind, make in makers.items():
        for make_async in (False, True):
            name = f"{kind}_{'async' if make_async else 'sync'}"
            wf.task(name=name)(_returning(make, make_async))
            wf.task(name=f"after_{name}", dependencies=[name])(lambda ctx: None)

    @wf.task()
    def mutate(ctx: Context) -> None:
        ctx["added"] = 1
        ctx.pop("initial")
        ctx.attr_style = "yes"

    result = engine.run(wf, {"initial": 1, "kept": 2})
    assert result.status == "completed", result.error
    assert len(result.tasks) == 13
    # Returning None: the context as mutated is the output.
    assert result.tasks["mutate"].context == {"kept": 2, "added": 1, "attr_style": "yes"}
    for name, task in result.tasks.items():
        if name != "mutate":
            # The returned value, and what the dependent received.
            assert task.context == {"new": 1}, name


BAD_RETURNS: dict[str, Any] = {
    "int": 42,
    "str": "text",
    "list": [("k", 1)],
    "tuple": ("k", 1),
    "bool": True,
    "zero": 0,
    "mappingproxy": MappingProxyType({"k": 1}),
    "object": object(),
}


def test_any_other_return_value_fails_the_task_without_retry(engine: Engine) -> None:
    wf = Workflow(unique())
    calls: list[str] = []

    def counted(name: str, fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
        if asyncio.iscoroutinefunction(fn):

            async def async_wrapper(ctx: Context) -> Any:
                calls.append(name)
                return await fn(ctx)

            return async_wrapper

        def wrapper(ctx: Context) -> Any:
            calls.append(name)
            return fn(ctx)

        return wrapper

    names = []
    for kind, value in BAD_RETURNS.items():
        for make_async in (False, True):
            name = f"{kind}_{'async' if make_async else 'sync'}"
            names.append(name)
            bad = _returning(lambda _v=value: _v, make_async)
            wf.task(name=name, retry=FAST)(counted(name, bad))
            wf.task(name=f"after_{name}", dependencies=[name])(counted(f"after_{name}", bad))
    wf.task(name="fine")(lambda ctx: None)
    result = engine.run(wf)

    assert result.status == "failed"
    assert sorted(calls) == sorted(names)  # each once: never retried, nothing downstream ran
    assert result.tasks["fine"].status == "completed"
    for name in names:
        task = result.tasks[name]
        kind = name.rsplit("_", 1)[0]
        assert task.status == "failed", name
        assert task.attempts == 1
        assert task.context is None
        assert "TaskReturnError" in (task.error or "")
        assert type(BAD_RETURNS[kind]).__name__ in (task.error or "")
        assert result.tasks[f"after_{name}"].status == "upstream_failed"
    # The execution's error names the first three and counts the rest (it stays one line).
    assert (result.error or "").count("TaskReturnError") == 3
    assert f"and {len(names) - 3} more failed; {len(names)} tasks upstream_failed" in (
        result.error or ""
    )


# -- sync, async, handles, scope --------------------------------------------------------------


def test_sync_and_async_tasks_mix(engine: Engine) -> None:
    wf = Workflow(unique())

    @wf.task()
    async def fetch(ctx: Context) -> None:
        await asyncio.sleep(0)
        ctx["fetched"] = [1, 2, 3]

    @wf.task(dependencies=[fetch])
    def total(ctx: Context) -> None:
        ctx["total"] = sum(ctx["fetched"])

    @wf.task(dependencies=[total])
    async def report(ctx: Context) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"report": f"total={ctx['total']}"}

    @wf.task(dependencies=[fetch])
    def side(ctx: Context) -> None:
        ctx["side"] = threading.current_thread().name

    result = engine.run(wf)
    assert result.status == "completed", result.error
    assert result.tasks["total"].context["total"] == 6  # type: ignore[index]
    assert result.context == {
        "report": "total=6",
        "fetched": [1, 2, 3],
        "side": result.tasks["side"].context["side"],  # type: ignore[index]
    }


def test_the_handle_form_gets_the_attempt_number(engine: Engine) -> None:
    wf = Workflow(unique())
    attempts: dict[str, list[int]] = {"flaky_sync": [], "flaky_async": []}
    handles: list[TaskHandle] = []

    def body(ctx: Context, handle: TaskHandle) -> None:
        attempts[handle.task_name].append(handle.attempt)
        handles.append(handle)
        handle.heartbeat()
        ctx[f"attempt_{handle.task_name}"] = handle.attempt
        if handle.attempt < 3:
            raise ConnectionError(f"flaky {handle.attempt}")

    @wf.task(retry=FAST)
    async def flaky_async(ctx: Context, handle: TaskHandle) -> None:
        await asyncio.sleep(0)
        body(ctx, handle)

    @wf.task(retry=FAST)
    def flaky_sync(ctx: Context, handle: TaskHandle) -> None:
        body(ctx, handle)

    result = engine.run(wf)
    assert result.status == "completed", result.error
    assert attempts == {"flaky_sync": [1, 2, 3], "flaky_async": [1, 2, 3]}
    assert result.tasks["flaky_sync"].attempts == result.tasks["flaky_async"].attempts == 3
    assert result.context == {"attempt_flaky_sync": 3, "attempt_flaky_async": 3}
    assert all(h.execution_id == result.execution_id for h in handles)


def test_a_retried_attempt_gets_a_fresh_input(engine: Engine) -> None:
    wf = Workflow(unique())
    seen: list[dict[str, Any]] = []

    @wf.task(retry=FAST)
    def flaky(ctx: Context, handle: TaskHandle) -> None:
        seen.append(dict(ctx))
        ctx["dirty"] = handle.attempt
        ctx["count"] += 1
        if handle.attempt == 1:
            raise RuntimeError("first attempt fails after mutating")

    result = engine.run(wf, {"count": 0})
    assert seen == [{"count": 0}, {"count": 0}]
    assert result.context == {"count": 1, "dirty": 2}


def test_ctx_scope_is_set_inside_tasks_and_never_saved(engine: Engine) -> None:
    wf = Workflow(unique())
    scopes: dict[str, ExecutionScope | None] = {}

    def body(ctx: Context, name: str) -> None:
        scopes[name] = ctx.scope
        ctx[f"ran_{name}"] = True

    def make(name: str) -> Callable[[Context], Any]:
        if name == "b":  # a sync root, an async middle, a sync join

            async def async_fn(ctx: Context) -> None:
                body(ctx, name)

            return async_fn

        def fn(ctx: Context) -> None:
            body(ctx, name)

        return fn

    for name, deps in (("a", ()), ("b", ("a",)), ("c", ("a", "b"))):
        wf.task(name=name, dependencies=deps)(make(name))

    initial = Context(i=1)
    result = engine.run(wf, initial)
    assert initial.scope is None
    assert result.status == "completed", result.error
    assert set(scopes) == {"a", "b", "c"}
    task_ids = set()
    for name, scope in scopes.items():
        assert isinstance(scope, ExecutionScope)
        assert scope.execution_id == result.execution_id
        assert scope.task_name == name
        assert isinstance(scope.task_execution_id, uuid.UUID)
        task_ids.add(scope.task_execution_id)
        saved = engine.task_context(result.execution_id, name)
        assert saved.scope is None
        assert "scope" not in saved
    assert len(task_ids) == 3
    assert result.context.scope is None
    assert result.context == {"i": 1, "ran_a": True, "ran_b": True, "ran_c": True}
