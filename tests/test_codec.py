from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import types
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, Flag, IntEnum, StrEnum, auto
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from durably import codec, codec_encode, codec_types
from durably.exceptions import ContextSerializationError, ContextTooLargeError


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Mode(StrEnum):
    FAST = "fast"
    SAFE = "safe"


class Perm(Flag):
    R = auto()
    W = auto()
    X = auto()


class Pair(Enum):
    ORIGIN = (0, 0)  # a tuple value must come back as a tuple for the lookup to work
    UNIT = (1, 1)


@dataclasses.dataclass
class Box:
    value: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: float


@dataclasses.dataclass
class Order:
    id: UUID
    when: datetime
    lines: list[Point]
    tags: frozenset[str] = frozenset()
    status: Color = Color.RED
    total: Decimal = dataclasses.field(default=Decimal("0"), init=False)


class Address(BaseModel):
    street: str
    zone: Mode = Mode.FAST


class Customer(BaseModel):
    name: str
    since: date
    address: Address
    point: Point | None = None
    extra: Any = None


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")
    a: int = 0


def assert_same(a: Any, b: Any) -> None:
    """Equal and of the same type all the way down (1 == 1.0 == True hides type changes)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    elif isinstance(a, Decimal):
        assert str(a) == str(b)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, Enum):
        assert a is b
    elif isinstance(a, BaseModel):
        assert_same(dict(a), dict(b))
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, datetime | time):
        assert a == b
        assert a.utcoffset() == b.utcoffset()
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None)
    else:
        assert a == b


def roundtrip(value: Any) -> Any:
    return codec.loads(codec.dumps({"k": value}))["k"]


# -- strategies ------------------------------------------------------------------------------

keys = st.text(max_size=8) | st.sampled_from(["$durably", "v", "c", "tz", "$$durably"])
plain_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
fixed_offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
tzinfos = st.none() | fixed_offsets | st.timezones()
hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.uuids()
    | st.dates()
    | st.sampled_from(Color)
    | st.sampled_from(Level)
    | st.sampled_from(Mode)
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
scalars = (
    hashable_scalars
    | st.floats()
    | st.datetimes(timezones=tzinfos)
    | st.times(timezones=st.none() | fixed_offsets)
    | st.timedeltas()
    | st.decimals()
    | st.sampled_from(Perm)
    | st.builds(lambda a, b: a | b, st.sampled_from(Perm), st.sampled_from(Perm))
    | st.sampled_from(Pair)
    | st.builds(Point, st.integers(), st.floats(allow_nan=False))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
        | st.builds(Box, inner)
        | st.builds(Loose, a=st.integers())
    ),
    max_leaves=15,
)


# -- round trips -----------------------------------------------------------------------------


@settings(deadline=None)  # the first zoneinfo loads are slow on a busy machine
@given(st.dictionaries(keys, plain_json, max_size=6))
def test_plain_json_round_trips_and_stays_plain(data: dict[str, Any]) -> None:
    text = codec.dumps(data)
    assert_same(codec.loads(text), data)
    if "$durably" not in text:
        # Readable as ordinary JSON: exactly what json.dumps writes.
        assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        assert json.loads(text) == data


@settings(deadline=None)  # the first zoneinfo loads are slow on a busy machine
@given(st.dictionaries(keys, values, max_size=5))
def test_every_supported_value_round_trips_with_its_type(data: dict[str, Any]) -> None:
    assert_same(codec.loads(codec.dumps(data)), data)


@settings(deadline=None)  # the first zoneinfo loads are slow on a busy machine
@given(values)
def test_single_value_round_trips(value: Any) -> None:
    assert_same(codec.loads_value(codec.dumps_value(value)), value)


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        1,
        1.0,
        -0.0,
        float("inf"),
        float("-inf"),
        Level.LOW,
        Mode.FAST,
        Color.GREEN,
        Perm.R | Perm.X,
        Pair.UNIT,
        (1, (2, [3])),
        (),
        {1, 2},
        frozenset({frozenset({"a"})}),
        set(),
        b"\x00\xff",
        b"",
        Decimal("1.10"),
        Decimal("-NaN"),
        Decimal("sNaN"),
        UUID("12345678-1234-5678-1234-567812345678"),
        date(2024, 2, 29),
        time(23, 59, 59, 999999),
        time(1, 2, tzinfo=timezone(timedelta(hours=-3))),
        timedelta(days=-1, microseconds=1),
        datetime(2024, 1, 1, 12, 30),
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 3, 31, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),  # in the DST gap
        datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),  # in the fold
        {"$durably": "datetime", "v": "not a tag, user data"},
        {"$durably": {"$durably": 1}},
        Order(
            id=UUID(int=7),
            when=datetime(2024, 5, 1, tzinfo=UTC),
            lines=[Point(1, 2.5), Point(3, 4.0)],
            tags=frozenset({"gift"}),
        ),
        Customer(
            name="Ada",
            since=date(2020, 1, 1),
            address=Address(street="1 Main St", zone=Mode.SAFE),
            point=Point(1, 1.0),
            extra={"seen": datetime(2021, 1, 1)},
        ),
        Loose(a=1, **{"$durably": "x", "more": (1, 2)}),
        [Box(Box(Color.RED)), {"nested": [Level.HIGH, (Mode.SAFE,)]}],
    ],
)
def test_examples_round_trip(value: Any) -> None:
    assert_same(roundtrip(value), value)
    assert_same(codec.loads_value(codec.dumps_value(value)), value)


def test_datetime_keeps_its_zone() -> None:
    when = datetime(2024, 7, 1, 9, tzinfo=ZoneInfo("America/New_York"))
    back = roundtrip(when)
    assert back.tzinfo == ZoneInfo("America/New_York")
    assert back + timedelta(days=180) == when + timedelta(days=180)  # still follows DST rules


def test_dataclass_init_false_field_is_restored() -> None:
    order = Order(id=UUID(int=1), when=datetime(2024, 1, 1), lines=[])
    order.total = Decimal("9.99")
    assert roundtrip(order).total == Decimal("9.99")


def test_tagged_values_are_readable_json() -> None:
    text = codec.dumps({"when": date(2024, 1, 2), "tags": ("a", "b"), "n": 1})
    assert json.loads(text) == {
        "when": {"$durably": "date", "v": "2024-01-02"},
        "tags": {"$durably": "tuple", "v": ["a", "b"]},
        "n": 1,
    }


def test_output_is_compact_and_not_ascii_escaped() -> None:
    assert codec.dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'


def test_sets_are_written_in_a_stable_order() -> None:
    assert codec.dumps({"s": {"b", "c", "a"}}) == '{"s":{"$durably":"set","v":["a","b","c"]}}'


def test_plain_data_is_not_copied() -> None:
    data = {"a": [1, {"b": "c"}], "d": 1.5}
    assert codec_encode.encode(data) is data


def test_dumps_accepts_any_mapping() -> None:
    proxy = types.MappingProxyType({"a": Level.LOW})
    assert codec.loads(codec.dumps(proxy)) == {"a": Level.LOW}


def test_the_codec_works_without_pydantic() -> None:
    code = (
        "import sys; sys.modules['pydantic'] = None  # any import of it now fails\n"
        "import datetime; from durably import codec\n"
        "value = {'when': datetime.date(2024, 1, 1)}\n"
        "assert codec.loads(codec.dumps(value)) == value\n"
        "from durably.exceptions import ContextSerializationError as E\n"
        "try: codec.dumps({'x': object()})\n"
        "except E: pass\n"
        "else: raise AssertionError\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- errors when storing ---------------------------------------------------------------------


class Opaque:
    pass


class MyDatetime(datetime):
    pass


class Weird(Enum):
    THING = Opaque()


def _bad_values() -> list[tuple[Any, str, str]]:
    cyclic: dict[str, Any] = {"a": {}}
    cyclic["a"]["self"] = cyclic
    loop: list[Any] = [1]
    loop.append(Box(loop))
    return [
        ({"order": {"items": [1, 2, {"when": Opaque()}]}}, "order.items[2].when", "Opaque"),
        ({"f": lambda: 1}, "f: ", "function"),
        ({"a": {1: "x"}}, "a: ", "int"),
        ({"t": (1, Opaque())}, "t[1]", "Opaque"),
        ({"s": frozenset({Opaque()})}, "s[0]", "Opaque"),
        ({"p": Box(Opaque())}, "p.value", "Opaque"),
        ({"my key": [object()]}, "['my key'][0]", "object"),
        ({"e": Weird.THING}, "e: ", "Opaque"),
        ({"d": MyDatetime(2024, 1, 1)}, "d: ", "MyDatetime"),
        ({"b": bytearray(b"x")}, "b: ", "bytearray"),
        ({"c": Customer(name="x", since=date(2020, 1, 1), address=Address(street="s"),
                        extra=[Opaque()])}, "c.extra[0]", "Opaque"),
        (cyclic, "a.self", "cycle"),
        ({"loop": loop}, "loop[1].value", "cycle"),
    ]  # fmt: skip


@pytest.mark.parametrize(("data", "path", "type_name"), _bad_values())
def test_unsupported_values_name_the_path_and_type(data: Any, path: str, type_name: str) -> None:
    with pytest.raises(ContextSerializationError) as info:
        codec.dumps(data)
    assert path in str(info.value)
    assert type_name in str(info.value)
    assert isinstance(info.value, TypeError)


def test_a_socket_cannot_be_stored() -> None:
    with (
        socket.socket() as sock,
        pytest.raises(ContextSerializationError, match=r"conn: unsupported type socket.socket"),
    ):
        codec.dumps({"conn": sock})


def test_top_level_non_str_key() -> None:
    with pytest.raises(ContextSerializationError, match="dict key 1 of type int"):
        codec.dumps({1: "x"})  # type: ignore[dict-item]


def test_str_subclass_keys_are_refused_inside_values() -> None:
    with pytest.raises(ContextSerializationError, match="Mode"):
        codec.dumps({"a": {Mode.FAST: 1}})


def test_dumps_value_names_the_path() -> None:
    with pytest.raises(ContextSerializationError, match=r"value: \[1\]\.x: "):
        codec.dumps_value([1, {"x": Opaque()}])


def test_too_deep_nesting() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ContextSerializationError, match="nested too deeply"):
        codec.dumps({"deep": deep})


def test_int_too_long_to_print() -> None:
    with pytest.raises(ContextSerializationError):
        codec.dumps({"n": 10**5000})


def test_time_without_fixed_offset() -> None:
    with pytest.raises(ContextSerializationError, match="context: t: "):
        codec.dumps({"t": time(1, tzinfo=ZoneInfo("Europe/Paris"))})


# -- size limit ------------------------------------------------------------------------------


def test_size_limit() -> None:
    data = {"blob": "x" * 100}
    size = len(codec.dumps(data))
    assert codec.dumps(data, max_bytes=size) == codec.dumps(data)
    with pytest.raises(ContextTooLargeError) as info:
        codec.dumps(data, max_bytes=size - 1)
    message = str(info.value)
    assert str(size) in message
    assert str(size - 1) in message
    assert "elsewhere" in message
    assert "reference" in message
    assert isinstance(info.value, ValueError)


def test_size_limit_counts_utf8_bytes() -> None:
    data = {"s": "é" * 50}
    size = len(codec.dumps(data).encode("utf-8"))
    assert size > len(codec.dumps(data))
    codec.dumps(data, max_bytes=size)
    with pytest.raises(ContextTooLargeError, match=f"{size} bytes"):
        codec.dumps(data, max_bytes=size - 1)


# -- loading: classes ------------------------------------------------------------------------


def test_class_found_in_imported_module_without_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    text = codec.dumps({"c": Color.RED, "p": Point(1, 2.0)})
    monkeypatch.setattr(codec_types, "_registry", {})
    assert codec.loads(text) == {"c": Color.RED, "p": Point(1, 2.0)}


def test_local_class_needs_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclasses.dataclass
    class Local:
        n: int

    text = codec.dumps({"l": Local(1)})
    assert codec.loads(text) == {"l": Local(1)}  # this process has encoded it
    monkeypatch.setattr(codec_types, "_registry", {})  # as in a fresh process
    with pytest.raises(ContextSerializationError, match="Local"):
        codec.loads(text)
    assert codec.register_type(Local) is Local
    assert codec.loads(text) == {"l": Local(1)}


def test_register_type_refuses_other_classes() -> None:
    with pytest.raises(ContextSerializationError, match="Opaque"):
        codec.register_type(Opaque)


def _tagged(kind: str, cls: str, value: Any) -> str:
    return json.dumps({"x": {"$durably": kind, "c": cls, "v": value}})


@pytest.mark.parametrize(
    ("kind", "cls", "value"),
    [
        ("enum", "no_such_module_xyz:Thing", 1),
        ("enum", "antigravity:Thing", 1),  # exists, but is never imported by loading
        ("enum", "builtins:dict", 1),
        ("enum", "os:path", 1),
        ("enum", f"{__name__}:Opaque", 1),
        ("dataclass", f"{__name__}:Color", {}),
        ("dataclass", "collections:OrderedDict", {}),
        ("pydantic", f"{__name__}:Point", {}),
        ("enum", 42, 1),
    ],
)
def test_unresolvable_classes_are_named(kind: str, cls: Any, value: Any) -> None:
    with pytest.raises(ContextSerializationError, match=str(cls)):
        codec.loads(_tagged(kind, cls, value))
    assert "antigravity" not in sys.modules


def test_dataclass_fields_missing_or_unknown() -> None:
    name = f"{__name__}:Order"
    base = {"id": {"$durably": "uuid", "v": str(UUID(int=1))}, "when": None, "lines": []}
    restored = codec.loads(_tagged("dataclass", name, base))["x"]
    assert restored.status is Color.RED  # a field added later gets its default
    assert restored.tags == frozenset()
    with pytest.raises(ContextSerializationError, match="'lines'"):
        codec.loads(_tagged("dataclass", name, {k: v for k, v in base.items() if k != "lines"}))
    with pytest.raises(ContextSerializationError, match="'bogus'"):
        codec.loads(_tagged("dataclass", name, {**base, "bogus": 1}))


# -- loading: malformed input ----------------------------------------------------------------


def test_malformed_json() -> None:
    with pytest.raises(ContextSerializationError) as info:
        codec.loads("{")
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("text", ["[1]", "1", '"x"', "null"])
def test_context_must_be_an_object(text: str) -> None:
    with pytest.raises(ContextSerializationError, match="JSON object"):
        codec.loads(text)
    codec.loads_value(text)  # a single value may be anything


@pytest.mark.parametrize(
    "tagged",
    [
        {"$durably": "nope", "v": 1},
        {"$durably": 1, "v": 1},
        {"$durably": "date", "v": "garbage"},
        {"$durably": "date"},
        {"$durably": "float", "v": "1.5"},
        {"$durably": "bytes", "v": "not base64!"},
        {"$durably": "set", "v": [[1]]},
        {"$durably": "timedelta", "v": "x"},
        {"$durably": "enum", "c": f"{__name__}:Color", "v": "purple"},
    ],
)
def test_malformed_tags(tagged: dict[str, Any]) -> None:
    with pytest.raises(ContextSerializationError):
        codec.loads(json.dumps({"a": [tagged]}))
