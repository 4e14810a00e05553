from __future__ import annotations

import copy
import dataclasses
import threading
import types
import uuid
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any

import pytest
from pydantic import BaseModel

from durably import Engine, Workflow
from durably.context import MISSING, Context, ExecutionScope, SagaContext
from durably.exceptions import (
    ContextError,
    ContextKeyExists,
    ContextKeyMissing,
    ContextSerializationError,
    ContextTypeError,
)


class Status(Enum):
    NEW = "new"
    PAID = "paid"


class Key(StrEnum):
    ORDER = "order_id"


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Cart:
    line: Line
    status: Status
    note: str = ""


class Payment(BaseModel):
    amount: float
    when: datetime


SCOPE = ExecutionScope(uuid.uuid4(), uuid.uuid4(), "charge")


# -- construction ----------------------------------------------------------------------------


def test_construction() -> None:
    assert dict(Context()) == {}
    assert dict(Context(a=1)) == {"a": 1}
    assert dict(Context({"a": 1}, b=2)) == {"a": 1, "b": 2}
    assert dict(Context([("a", 1)])) == {"a": 1}
    assert dict(Context(mapping=1, other=2)) == {"mapping": 1, "other": 2}
    src = Context(a=[1])
    ctx = Context(src)
    ctx["b"] = 2
    assert "b" not in src
    assert isinstance(ctx, MutableMapping)


@pytest.mark.parametrize("bad", [{1: "x"}, {None: "x"}, [((1, 2), "x")]])
def test_non_str_keys_are_refused(bad: Any) -> None:
    with pytest.raises(ContextSerializationError, match="keys must be str"):
        Context(bad)


def test_str_enum_keys_are_stored_as_plain_str() -> None:
    ctx = Context({Key.ORDER: 1})
    assert type(next(iter(ctx))) is str
    assert ctx["order_id"] == ctx[Key.ORDER] == 1
    assert Key.ORDER in ctx


# -- item access -----------------------------------------------------------------------------


def test_item_access() -> None:
    ctx = Context()
    ctx["a"] = 1
    assert ctx["a"] == 1
    assert "a" in ctx
    del ctx["a"]
    assert "a" not in ctx
    with pytest.raises(KeyError):
        ctx["a"]
    with pytest.raises(KeyError):
        del ctx["a"]


@pytest.mark.parametrize(
    "op",
    [
        lambda c: c[1],
        lambda c: c.__setitem__(1, "x"),
        lambda c: c.__delitem__(1),
        lambda c: c.insert(1, "x"),
        lambda c: c.replace(1, "x"),
        lambda c: c.update({1: "x"}),
        lambda c: c.setdefault(1, "x"),
        lambda c: c.pop(1),
        lambda c: c.get_as(1, int),
    ],
)
def test_non_str_key_operations_raise(op: Callable[[Context], Any]) -> None:
    ctx = Context(a=1)
    with pytest.raises(ContextSerializationError, match="1") as info:
        op(ctx)
    assert isinstance(info.value, TypeError)
    assert ctx == {"a": 1}


def test_lookups_with_non_str_keys_find_nothing() -> None:
    ctx = Context(a=1)
    assert 1 not in ctx
    assert [] not in ctx
    assert ctx.get(1, "d") == "d"


def test_update_is_all_or_nothing() -> None:
    ctx = Context(a=1)
    with pytest.raises(ContextSerializationError):
        ctx.update({"b": 2, 3: "x"})
    assert ctx == {"a": 1}


def test_mapping_methods() -> None:
    ctx = Context(b=1, a=2)
    ctx["c"] = 3
    assert list(ctx) == ["b", "a", "c"]
    assert list(ctx.keys()) == ["b", "a", "c"]
    assert list(ctx.values()) == [1, 2, 3]
    assert list(ctx.items()) == [("b", 1), ("a", 2), ("c", 3)]
    assert "a" in ctx.keys()  # noqa: SIM118 (the view, on purpose)
    assert 2 in ctx.values()
    assert ("a", 2) in ctx.items()
    assert ("a", 3) not in ctx.items()
    assert len(ctx) == 3
    assert dict(ctx) == {"b": 1, "a": 2, "c": 3}
    assert ctx.get("a") == 2
    assert ctx.get("zz") is None
    assert ctx.get("zz", 0) == 0
    assert ctx.setdefault("a", 9) == 2
    assert ctx.setdefault("d", 4) == 4
    assert ctx.pop("d") == 4
    assert ctx.pop("d", "gone") == "gone"
    with pytest.raises(KeyError):
        ctx.pop("d")
    assert ctx.popitem() == ("c", 3)
    ctx.update({"x": 1}, y=2, other=3)
    ctx.update([("z", 0)])
    ctx.update(Context(w=5))
    ctx.update(None)
    ctx.update(types.MappingProxyType({"v": 6}))
    assert ctx == {"b": 1, "a": 2, "x": 1, "y": 2, "other": 3, "z": 0, "w": 5, "v": 6}
    ctx.clear()
    assert len(ctx) == 0
    assert not ctx


# -- attribute access ------------------------------------------------------------------------


def test_attribute_access() -> None:
    ctx = Context(order_id=1)
    assert ctx.order_id == 1
    ctx.customer = "ada"
    assert ctx["customer"] == "ada"
    del ctx.customer
    assert "customer" not in ctx
    with pytest.raises(AttributeError, match="missing"):
        ctx.missing  # noqa: B018
    with pytest.raises(AttributeError):
        del ctx.missing
    assert not hasattr(ctx, "missing")
    assert getattr(ctx, "missing", "d") == "d"


@pytest.mark.parametrize(
    "name", ["items", "keys", "values", "get", "update", "pop", "insert", "replace", "get_as",
             "to_dict", "to_json", "from_json", "copy", "clear", "setdefault"]
)  # fmt: skip
def test_method_names_stay_methods_and_attribute_writes_store_the_key(name: str) -> None:
    ctx = Context({name: "data"})
    assert ctx[name] == "data"
    assert getattr(ctx, name) is not "data"  # noqa: F632
    setattr(ctx, name, "other")  # as minos: ctx.items = "bar" stores the key
    assert ctx[name] == "other"
    assert callable(getattr(ctx, name))  # reading still finds the method
    delattr(ctx, name)
    assert name not in ctx
    with pytest.raises(AttributeError):
        delattr(ctx, name)  # no key left to delete


def test_scope_is_read_only() -> None:
    ctx = Context({"scope": "data"})
    with pytest.raises(AttributeError, match=r"ctx\['scope'\] = "):
        ctx.scope = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match=r"del ctx\['scope'\]"):
        del ctx.scope  # type: ignore[misc]
    assert ctx["scope"] == "data"


def test_saga_context_stores_method_names_written_as_attributes() -> None:
    ctx = SagaContext(items=[1])
    assert callable(ctx.items)
    ctx.items = "bar"  # type: ignore[assignment,method-assign]
    assert ctx["items"] == "bar"
    assert dict(ctx) == {"items": "bar"}


def test_underscore_names_are_never_data() -> None:
    ctx = Context({"_hidden": 1})
    assert ctx["_hidden"] == 1
    with pytest.raises(AttributeError):
        ctx._hidden  # noqa: B018
    ctx._note = "not data"
    assert ctx._note == "not data"
    assert "_note" not in ctx
    del ctx._note
    assert ctx._data == {"_hidden": 1}


def test_metaclass_attribute_names_are_free_for_data() -> None:
    ctx = Context()
    ctx.register = True  # ABCMeta.register is not an instance attribute
    ctx.mro = 1
    assert ctx.register is True
    assert ctx.mro == 1
    assert ctx == {"register": True, "mro": 1}


# -- Cloacina verbs --------------------------------------------------------------------------


def test_insert() -> None:
    ctx = Context()
    ctx.insert("a", 1)
    with pytest.raises(ContextKeyExists, match="'a'") as info:
        ctx.insert("a", 2)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ContextError)
    assert ctx["a"] == 1


def test_replace() -> None:
    ctx = Context(a=1)
    ctx.replace("a", 2)
    assert ctx["a"] == 2
    with pytest.raises(ContextKeyMissing, match="'b'") as info:
        ctx.replace("b", 1)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ContextError)
    assert "b" not in ctx


# -- get_as ----------------------------------------------------------------------------------


def test_get_as_returns_instances_as_they_are() -> None:
    line = Line("a", 1)
    ctx = Context(n=1, line=line, s=Status.NEW)
    assert ctx.get_as("n", int) == 1
    assert ctx.get_as("line", Line) is line
    assert ctx.get_as("s", Status) is Status.NEW


def test_get_as_decodes_plain_data() -> None:
    ctx = Context(
        cart={"line": {"sku": "a", "qty": 2}, "status": "paid"},
        payment={"amount": 9.5, "when": "2024-01-01T00:00:00+00:00"},
        status="paid",
        status_by_name="PAID",
        count=3,
    )
    assert ctx.get_as("cart", Cart) == Cart(Line("a", 2), Status.PAID)
    assert ctx.get_as("payment", Payment) == Payment(
        amount=9.5, when=datetime(2024, 1, 1, tzinfo=UTC)
    )
    assert ctx.get_as("status", Status) is Status.PAID
    assert ctx.get_as("status_by_name", Status) is Status.PAID
    assert ctx.get_as("count", float) == 3.0
    assert type(ctx.get_as("count", float)) is float


def test_get_as_missing_key() -> None:
    ctx = Context()
    with pytest.raises(ContextKeyMissing, match="'nope'"):
        ctx.get_as("nope", int)
    assert ctx.get_as("nope", int, None) is None
    assert ctx.get_as("nope", int, default=5) == 5
    assert repr(MISSING) == "MISSING"


@pytest.mark.parametrize(
    ("value", "tp", "actual"),
    [
        ("x", int, "str"),
        (1.5, int, "float"),
        ({"sku": "a"}, Line, "dict"),  # a field is missing
        ({"sku": "a", "qty": 1, "bogus": 1}, Line, "dict"),
        ({"amount": "lots", "when": "never"}, Payment, "dict"),
        ("purple", Status, "str"),
        ([1], Line, "list"),
        ({"line": {"sku": "a"}, "status": "paid"}, Cart, "dict"),  # nested field is bad
        (1, list[int], "int"),  # not a class isinstance() accepts
    ],
)
def test_get_as_type_errors(value: Any, tp: Any, actual: str) -> None:
    ctx = Context(k=value)
    with pytest.raises(ContextTypeError) as info:
        ctx.get_as("k", tp)
    message = str(info.value)
    assert "'k'" in message
    assert getattr(tp, "__qualname__", str(tp)) in message
    assert actual in message
    assert isinstance(info.value, TypeError)


# -- copies, equality, repr, serialization ---------------------------------------------------


def test_to_dict_is_a_deep_copy() -> None:
    ctx = Context(a={"b": [1]})
    data = ctx.to_dict()
    data["a"]["b"].append(2)
    assert ctx["a"] == {"b": [1]}
    assert type(data) is dict


def test_copy_is_shallow_and_keeps_the_scope() -> None:
    ctx = Context._from_data({"a": [1]}, SCOPE)
    for dup in (ctx.copy(), copy.copy(ctx)):
        assert type(dup) is Context
        assert dup == ctx
        assert dup.scope == SCOPE
        dup["b"] = 2
        assert "b" not in ctx
        assert dup["a"] is ctx["a"]
    deep = copy.deepcopy(ctx)
    assert deep == ctx
    assert deep["a"] is not ctx["a"]
    assert type(SagaContext(a=1).copy()) is SagaContext


def test_equality() -> None:
    ctx = Context(a=1)
    assert ctx == {"a": 1}
    assert {"a": 1} == ctx  # noqa: SIM300 (dict on the left, on purpose)
    assert ctx == Context(a=1)
    assert ctx == SagaContext(a=1)
    assert SagaContext(a=1) == ctx
    assert ctx == types.MappingProxyType({"a": 1})
    assert ctx != {"a": 2}
    assert ctx != Context()
    assert ctx != [("a", 1)]
    assert ctx != "a"
    with pytest.raises(TypeError):
        hash(ctx)


def test_repr() -> None:
    assert repr(Context(a=1, b="x")) == "Context({'a': 1, 'b': 'x'})"
    assert repr(SagaContext()) == "SagaContext({})"


def test_json_round_trip() -> None:
    ctx = Context(
        order_id=1, status=Status.PAID, line=Line("a", 1), at=datetime(2024, 1, 1), ids={1, 2}
    )
    text = ctx.to_json()
    back = Context.from_json(text)
    assert type(back) is Context
    assert back == ctx
    assert back["status"] is Status.PAID
    assert type(SagaContext.from_json(text)) is SagaContext


def test_to_json_names_the_bad_key_path() -> None:
    ctx = Context(order={"items": [1, 2, {"when": object()}]})
    with pytest.raises(ContextSerializationError, match=r"order\.items\[2\]\.when.*object"):
        ctx.to_json()


def test_from_json_errors() -> None:
    with pytest.raises(ContextSerializationError):
        Context.from_json("not json")
    with pytest.raises(ContextSerializationError):
        Context.from_json("[1, 2]")


# -- scope -----------------------------------------------------------------------------------


def test_scope() -> None:
    assert Context(a=1).scope is None
    ctx = Context._from_data({"a": 1}, SCOPE)
    assert ctx.scope is SCOPE
    assert "scope" not in ctx
    assert ctx.to_dict() == {"a": 1}
    assert "charge" not in ctx.to_json()
    assert Context.from_json(ctx.to_json()).scope is None
    with pytest.raises(AttributeError):
        ctx.scope = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SCOPE.task_name = "other"  # type: ignore[misc]
    assert ExecutionScope(SCOPE.execution_id, None, "x").task_execution_id is None


def test_from_data_wraps_without_copying() -> None:
    data: dict[str, Any] = {"a": 1}
    ctx = Context._from_data(data)
    ctx["b"] = 2
    assert data == {"a": 1, "b": 2}
    assert ctx._data is data
    assert ctx.scope is None
    assert isinstance(ctx._lock, type(threading.RLock()))


def test_saga_context_is_a_context() -> None:
    ctx = SagaContext(order_id=1)
    assert isinstance(ctx, Context)
    assert ctx.order_id == 1


# -- threads ---------------------------------------------------------------------------------


def _run_threads(workers: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # collected and reported by the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_writers_and_readers() -> None:
    ctx = Context({f"k{i}": i for i in range(50)})
    rounds = 2000

    def writer(n: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(rounds):
                ctx[f"w{n}_{i % 40}"] = i
                ctx.pop(f"w{n}_{(i + 20) % 40}", None)
                setattr(ctx, f"a{n}", i)
                ctx.update({f"u{n}": i})

        return run

    def reader() -> None:
        for _ in range(rounds // 10):
            for key in ctx:
                ctx.get(key)
            list(ctx.items())
            list(ctx.values())
            ctx.to_json()
            ctx.to_dict()
            _ = ctx == ctx.copy()
            repr(ctx)

    errors = _run_threads([writer(n) for n in range(4)] + [reader for _ in range(4)])
    assert errors == []
    for n in range(4):
        assert ctx[f"a{n}"] == rounds - 1
        assert ctx[f"u{n}"] == rounds - 1


def test_concurrent_insert_has_one_winner() -> None:
    ctx = Context()
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            try:
                ctx.insert("owner", n)
                winners.append(n)
            except ContextKeyExists:
                pass

        return run

    assert _run_threads([contender(n) for n in range(8)]) == []
    assert len(winners) == 1
    assert ctx["owner"] == winners[0]


def test_a_saved_context_is_decoded_only_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result's task contexts come from their saved text and are decoded on first read,
    once, and then behave like any Context."""
    from durably import codec

    calls: list[str] = []
    real = codec.loads

    def counting(text: str) -> Any:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(codec, "loads", counting)
    ctx = Context._from_text(codec.dumps({"a": [1, 2], "when": Decimal("1.5")}))
    assert calls == []
    assert isinstance(ctx, Context)
    assert repr(ctx) == "Context({'a': [1, 2], 'when': Decimal('1.5')})"
    assert ctx.a == [1, 2]
    assert ctx["when"] == Decimal("1.5")
    ctx["b"] = 3
    del ctx["a"]
    assert dict(ctx) == {"when": Decimal("1.5"), "b": 3}
    assert len(calls) == 1
    assert ctx.copy() == ctx
    assert copy.deepcopy(ctx) == ctx
    assert len(calls) == 1
    with pytest.raises(AttributeError, match="Context has no key or attribute 'nope'"):
        _ = ctx.nope


def test_a_result_decodes_no_task_output_until_one_is_read(tmp_path: Any) -> None:
    wf = Workflow("lazy-results")

    @wf.task()
    def first(ctx: Context) -> None:
        ctx["x"] = {"deep": [1]}

    @wf.task(dependencies=["first"])
    def second(ctx: Context) -> None:
        ctx["y"] = 2

    with Engine(f"sqlite:///{tmp_path / 'lazy.db'}") as engine:
        result = engine.run(wf, Context(n=1))
        assert result.context == {"n": 1, "x": {"deep": [1]}, "y": 2}
        first_ctx = result.tasks["first"].context
        assert first_ctx == {"n": 1, "x": {"deep": [1]}}
        assert result.tasks["second"].context == result.context
        assert engine.task_context(result.execution_id, "first") == first_ctx
