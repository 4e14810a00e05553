"""JSON codec for context data: plain JSON stays plain, everything else is tagged.

A person reading the database sees ordinary JSON. A value JSON cannot hold is written as an
object whose ``"$durably"`` key names its kind and whose ``"v"`` key holds its content::

    {"$durably": "datetime", "v": "2024-05-01T12:00:00+00:00"}        (+ "tz": "Europe/Paris")
    {"$durably": "date" | "time" | "uuid" | "decimal", "v": "<its str form>"}
    {"$durably": "timedelta", "v": [days, seconds, microseconds]}
    {"$durably": "bytes", "v": "<base64>"}
    {"$durably": "float", "v": "nan" | "inf" | "-inf"}
    {"$durably": "tuple" | "set" | "frozenset", "v": [items...]}
    {"$durably": "enum", "c": "module:Qualname", "v": <member value>}
    {"$durably": "dataclass" | "pydantic", "c": "module:Qualname", "v": {field: value, ...}}
    {"$durably": "dict", "v": [[key, value], ...]}     a user dict that has a "$durably" key

Classes are looked up by ``module:qualname`` among the classes this process has encoded or
registered with :func:`register_type`, then in modules already imported: loading never imports
anything named by stored data.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import reprlib
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo

from .exceptions import ContextSerializationError, ContextTooLargeError

__all__ = ["TAG", "dumps", "dumps_value", "loads", "loads_value", "register_type"]

TAG = "$durably"
_T = TypeVar("_T", bound=type)

# Exact types only: bool, IntEnum and str-Enum members are int/str subclasses and must not be
# written as plain JSON, or they would come back as another type.
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})
_isfinite = math.isfinite
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
)
_registry: dict[str, type] = {}


class _Unencodable(Exception):
    """Raised deep in the walk; each enclosing container adds its key on the way out."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.path: list[str | int] = []


_SUPPORTED = (
    "a context holds JSON types, datetime, date, time, timedelta, UUID, Decimal, bytes, "
    "tuple, set, frozenset, Enum members, dataclasses and pydantic models"
)


# -- encoding -------------------------------------------------------------------------------
#
# The walk returns each value itself when nothing in it needs a tag, so plain data is never
# copied; a container is copied only once one of its values changes. It keeps no record of the
# containers it is in (that costs as much as the walk itself): a reference cycle ends in a
# RecursionError, and only then does _find_cycle look for where it is.


def _encode(value: Any) -> Any:
    t = type(value)
    if t in _PLAIN_SCALARS or (t is float and _isfinite(value)):
        return value
    return _CONTAINERS.get(t, _encode_other)(value)


def _encode_dict(d: dict[Any, Any]) -> Any:
    out: dict[str, Any] | None = None
    for k, v in d.items():
        if type(k) is not str:
            raise _Unencodable(f"dict key {k!r} of type {_type_name(k)} (keys must be str)")
        t = type(v)
        if t in _PLAIN_SCALARS or (t is float and _isfinite(v)):
            continue
        try:
            e = _CONTAINERS.get(t, _encode_other)(v)
        except _Unencodable as exc:
            exc.path.append(k)
            raise
        if e is not v:
            if out is None:
                out = dict(d)
            out[k] = e
    result = d if out is None else out
    if TAG in result:
        return {TAG: "dict", "v": list(result.items())}
    return result


def _encode_items(seq: list[Any] | tuple[Any, ...]) -> Any:
    for v in seq:
        t = type(v)
        if t in _PLAIN_SCALARS or (t is float and _isfinite(v)):
            continue
        try:
            e = _CONTAINERS.get(t, _encode_other)(v)
        except _Unencodable as exc:
            exc.path.append(_index_of(seq, v))
            raise
        if e is not v:
            return _encode_rest(seq, _index_of(seq, v), e)
    return seq  # the JSON encoder writes a tuple as an array


def _encode_rest(seq: list[Any] | tuple[Any, ...], start: int, first: Any) -> list[Any]:
    # From the first value that changed on, the sequence is copied and indexes are counted.
    out = list(seq)
    out[start] = first
    for i in range(start + 1, len(out)):
        try:
            out[i] = _encode(out[i])
        except _Unencodable as exc:
            exc.path.append(i)
            raise
    return out


def _index_of(seq: Iterable[Any], value: Any) -> int:
    return next(i for i, item in enumerate(seq) if item is value)


_CONTAINERS: dict[type, Callable[[Any], Any]] = {dict: _encode_dict, list: _encode_items}


def _set_items(value: set[Any] | frozenset[Any]) -> list[Any]:
    try:  # sorted when possible: the same set must give the same JSON in every process
        return sorted(value)
    except TypeError:
        return list(value)


def _encode_set(value: set[Any] | frozenset[Any]) -> Any:
    return {TAG: type(value).__name__, "v": _encode_items(_set_items(value))}


def _split_offset(kind: str, value: datetime | time) -> dict[str, Any] | None:
    # Python 3.11's fromisoformat drops an offset's microseconds: keep such offsets apart.
    offset = value.utcoffset()
    if offset is None or not offset.microseconds:
        return None
    naive = value.replace(tzinfo=None).isoformat()
    return {TAG: kind, "v": naive, "off": [offset.days, offset.seconds, offset.microseconds]}


_Moment = TypeVar("_Moment", datetime, time)


def _with_offset(value: _Moment, obj: dict[str, Any]) -> _Moment:
    if "off" not in obj:
        return value
    return value.replace(tzinfo=timezone(timedelta(*obj["off"])))


def _encode_datetime(value: datetime) -> dict[str, Any]:
    if not isinstance(value.tzinfo, ZoneInfo) and (split := _split_offset("datetime", value)):
        return split
    out = {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value.tzinfo, ZoneInfo) and value.tzinfo.key:
        out["tz"] = value.tzinfo.key  # the offset alone would lose the zone's DST rules
    return out


def _encode_time(value: time) -> dict[str, Any]:
    if value.tzinfo is not None and value.utcoffset() is None:
        raise _Unencodable(f"a time with tzinfo {value.tzinfo!r} has no fixed UTC offset")
    return _split_offset("time", value) or {TAG: "time", "v": value.isoformat()}


_SCALAR_ENCODERS: dict[type, Callable[[Any], Any]] = {
    datetime: _encode_datetime,
    date: lambda v: {TAG: "date", "v": v.isoformat()},
    time: _encode_time,
    timedelta: lambda v: {TAG: "timedelta", "v": [v.days, v.seconds, v.microseconds]},
    UUID: lambda v: {TAG: "uuid", "v": str(v)},
    Decimal: lambda v: {TAG: "decimal", "v": str(v)},
    bytes: lambda v: {TAG: "bytes", "v": base64.b64encode(v).decode("ascii")},
    float: lambda v: {TAG: "float", "v": repr(v)},  # only non-finite floats get here
}


def _encode_other(value: Any) -> Any:
    t = type(value)
    scalar = _SCALAR_ENCODERS.get(t)
    if scalar is not None:
        return scalar(value)
    if t is tuple:
        return {TAG: "tuple", "v": _encode_items(value)}
    if t is set or t is frozenset:
        return _encode_set(value)
    if isinstance(value, Enum):
        return {TAG: "enum", "c": _class_ref(t), "v": _encode(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "c": _class_ref(t), "v": _encode_dict(fields)}
    model = _pydantic_base()
    if model is not None and isinstance(value, model):  # dict(model): its fields and extras
        return {TAG: "pydantic", "c": _class_ref(t), "v": _encode_dict(dict(value))}
    raise _Unencodable(f"unsupported type {_type_name(value)}", _SUPPORTED)


def _children(value: Any) -> Iterable[tuple[str | int, Any]]:
    t = type(value)
    if t is dict:
        return value.items()  # type: ignore[no-any-return]
    if t in (list, tuple, set, frozenset):
        return enumerate(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    model = _pydantic_base()
    return dict(value).items() if model is not None and isinstance(value, model) else ()


def _find_cycle(value: Any, enclosing: set[int]) -> _Unencodable | None:
    """Where ``value`` encloses itself; slow, only called after a RecursionError."""
    if id(value) in enclosing:
        return _Unencodable(f"a reference cycle (this {_type_name(value)} encloses itself)")
    enclosing.add(id(value))
    for key, child in _children(value):
        found = _find_cycle(child, enclosing)
        if found is not None:
            found.path.append(key)
            return found
    enclosing.discard(id(value))
    return None


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_REASON = "a str with a lone surrogate, which UTF-8 cannot encode"


def _find_surrogate(value: Any) -> _Unencodable | None:
    """Where a lone surrogate is, in a key or a value; only called once the text has one."""
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return None
        return _Unencodable(f"{_SURROGATE_REASON}: {reprlib.repr(value)}")
    if isinstance(value, Enum):
        return _find_surrogate(value.value)
    if type(value) is set or type(value) is frozenset:  # indexes as stored: sorted
        value = _set_items(value)
    for key, child in _children(value):
        if isinstance(key, str) and _SURROGATE.search(key):
            return _Unencodable(
                f"a key with a lone surrogate, which UTF-8 cannot encode: {reprlib.repr(key)}"
            )
        found = _find_surrogate(child)
        if found is not None:
            found.path.append(key)
            return found
    return None


def _class_ref(cls: type) -> str:
    name = f"{cls.__module__}:{cls.__qualname__}"
    _registry[name] = cls  # so that this process can load what it wrote, even local classes
    return name


def _pydantic_base() -> Any:
    # pydantic is optional: if it was never imported, no value can be a pydantic model.
    module = sys.modules.get("pydantic")
    return getattr(module, "BaseModel", None) if module is not None else None


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _format_path(path: list[str | int]) -> str:
    out = ""
    for part in reversed(path):  # collected innermost first
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _to_json(value: Any, what: str) -> str:
    try:
        try:
            text: str = _ENCODER.encode(_encode(value))
        except RecursionError:
            raise _find_cycle(value, set()) or _Unencodable("it is nested too deeply") from None
        # A lone surrogate (os.fsdecode of a non-UTF-8 name, or "\\udce9" parsed from JSON) is
        # valid in a str but not in UTF-8: the store's driver would fail on it with a bare
        # UnicodeEncodeError, after the task had already completed.
        if not text.isascii() and _SURROGATE.search(text):
            raise _find_surrogate(value) or _Unencodable(_SURROGATE_REASON)
        return text
    except _Unencodable as exc:
        path = _format_path(exc.path)
        message = f"cannot store {what}: " + (f"{path}: " if path else "") + exc.reason
        err = ContextSerializationError(message + (f" ({exc.hint})" if exc.hint else ""))
        err.path = path  # type: ignore[attr-defined]
        raise err from None
    except RecursionError:
        raise ContextSerializationError(f"cannot store {what}: it is nested too deeply") from None
    except ValueError as exc:  # e.g. an int with more digits than Python will print
        raise ContextSerializationError(f"cannot store {what}: {exc}") from exc


def dumps(data: Mapping[str, Any], *, max_bytes: int | None = None) -> str:
    """Encode a context's data as compact JSON.

    Raises :class:`ContextSerializationError` naming the key path and type of a value that
    cannot be stored, and :class:`ContextTooLargeError` when the UTF-8 size exceeds
    ``max_bytes``.
    """
    text = _to_json(data if type(data) is dict else dict(data.items()), "the context")
    # Four bytes per code point at most, so most contexts skip the UTF-8 encoding below.
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > max_bytes:
            raise ContextTooLargeError(
                f"the context is {size} bytes, over the limit of {max_bytes} bytes: contexts "
                "are for small coordination data; store the data elsewhere (a file, an object "
                "store, a table) and keep a reference to it in the context"
            )
    return text


def dumps_value(value: Any) -> str:
    """Encode one value (e.g. a saga message) with the same rules as :func:`dumps`."""
    return _to_json(value, "the value")


# -- decoding -------------------------------------------------------------------------------


def _resolve(name: Any, kind: str, check: Callable[[type], bool]) -> Any:
    cls = _registry.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str):
        module, _, qualname = name.partition(":")
        obj: Any = sys.modules.get(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        cls = obj
    if not (isinstance(cls, type) and check(cls)):
        raise ContextSerializationError(
            f"cannot load {kind} class {name!r}: it is not a registered or already imported "
            f"{kind} class (import its module first, or call durably.codec.register_type())"
        )
    return cls


def _is_enum(cls: type) -> bool:
    return issubclass(cls, Enum)


def _is_model(cls: type) -> bool:
    model = _pydantic_base()
    return model is not None and issubclass(cls, model)


def _decode_dataclass(obj: dict[str, Any]) -> Any:
    cls = _resolve(obj["c"], "dataclass", dataclasses.is_dataclass)
    values: dict[str, Any] = obj["v"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := values.keys() - fields.keys():
        raise ContextSerializationError(f"{obj['c']} has no field {sorted(unknown)[0]!r}")
    # Restore the saved state without calling __init__ (as copy and pickle do): __post_init__
    # already ran when the value was created, and InitVars are not stored.
    instance = cls.__new__(cls)
    for name, field in fields.items():
        if name in values:
            value = values[name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise ContextSerializationError(f"stored {obj['c']} has no value for {name!r}")
        object.__setattr__(instance, name, value)
    return instance


def _decode_datetime(obj: dict[str, Any]) -> datetime:
    value = _with_offset(datetime.fromisoformat(obj["v"]), obj)
    if "tz" not in obj:
        return value
    # Keep the wall time (it may fall in a DST gap); the offset tells which of two equal wall
    # times in a DST fold was meant.
    local = value.replace(tzinfo=ZoneInfo(obj["tz"]))
    return local if local.utcoffset() == value.utcoffset() else local.replace(fold=1)


def _decode_float(obj: dict[str, Any]) -> float:
    if obj["v"] not in ("nan", "inf", "-inf"):
        raise ValueError(obj["v"])
    return float(obj["v"])


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "datetime": _decode_datetime,
    "date": lambda o: date.fromisoformat(o["v"]),
    "time": lambda o: _with_offset(time.fromisoformat(o["v"]), o),
    "timedelta": lambda o: timedelta(*o["v"]),
    "uuid": lambda o: UUID(o["v"]),
    "decimal": lambda o: Decimal(o["v"]),
    "bytes": lambda o: base64.b64decode(o["v"], validate=True),
    "float": _decode_float,
    "tuple": lambda o: tuple(o["v"]),
    "set": lambda o: set(o["v"]),
    "frozenset": lambda o: frozenset(o["v"]),
    "dict": lambda o: dict(o["v"]),
    "enum": lambda o: _resolve(o["c"], "Enum", _is_enum)(o["v"]),
    "dataclass": _decode_dataclass,
    # model_construct restores the saved fields as they were, like pydantic's own unpickling.
    "pydantic": lambda o: _resolve(o["c"], "pydantic", _is_model).model_construct(**o["v"]),
}


def _decode_object(obj: dict[str, Any]) -> Any:
    # Called by the JSON parser for every object, innermost first.
    if TAG not in obj:
        return obj
    kind = obj[TAG]
    decode = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decode is None:
        raise ContextSerializationError(f"cannot load a value tagged {kind!r}: unknown tag")
    try:
        return decode(obj)
    except ContextSerializationError:
        raise
    except Exception as exc:
        text = json.dumps(obj, default=repr)[:200]
        raise ContextSerializationError(f"cannot load a malformed {kind}: {text}") from exc


_DECODER = json.JSONDecoder(object_hook=_decode_object)
_PLAIN_DECODER = json.JSONDecoder()


def _from_json(text: str, what: str) -> Any:
    # Text without any tag (the common case) is parsed without calling back into Python.
    decoder = _DECODER if f'"{TAG}"' in text else _PLAIN_DECODER
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise ContextSerializationError(f"cannot load {what}: invalid JSON ({exc})") from exc
    except RecursionError:
        raise ContextSerializationError(f"cannot load {what}: nested too deeply") from None


def loads(text: str) -> dict[str, Any]:
    """Decode :func:`dumps` output: every value comes back with its original type."""
    data = _from_json(text, "the context")
    if type(data) is not dict:
        raise ContextSerializationError(
            f"cannot load the context: expected a JSON object, got {type(data).__name__}"
        )
    return data


def loads_value(text: str) -> Any:
    """Decode :func:`dumps_value` output."""
    return _from_json(text, "the value")


def register_type(cls: _T) -> _T:
    """Let this process load values of ``cls`` (an Enum, dataclass or pydantic model class)
    before it has written one. Usable as a class decorator."""
    if not (
        isinstance(cls, type) and (_is_enum(cls) or dataclasses.is_dataclass(cls) or _is_model(cls))
    ):
        raise ContextSerializationError(
            f"cannot register {cls!r}: only Enum, dataclass and pydantic model classes can be "
            "stored in a context"
        )
    _class_ref(cls)
    return cls
