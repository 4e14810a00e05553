"""Encoding a value as durably JSON: the walk that tags what plain JSON cannot hold, and the
errors that name the key path of a value that cannot be stored.

The tags are listed in ``durably.codec``; :func:`to_json` is what ``dumps`` and
``dumps_value`` call.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from .codec_types import TAG, class_ref, pydantic_base
from .exceptions import ContextSerializationError

__all__ = ["encode", "to_json"]

# Exact types only: bool, IntEnum and str-Enum members are int/str subclasses and must not be
# written as plain JSON, or they would come back as another type.
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})
_isfinite = math.isfinite
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
)


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


# -- the walk ------------------------------------------------------------------------------
#
# The walk returns each value itself when nothing in it needs a tag, so plain data is never
# copied; a container is copied only once one of its values changes. It keeps no record of the
# containers it is in (that costs as much as the walk itself): a reference cycle ends in a
# RecursionError, and only then does _find_cycle look for where it is.


def encode(value: Any) -> Any:
    """``value`` with each value plain JSON cannot hold replaced by its tagged object."""
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
            out[i] = encode(out[i])
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
        return {TAG: "enum", "c": class_ref(t), "v": encode(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "c": class_ref(t), "v": _encode_dict(fields)}
    model = pydantic_base()
    if model is not None and isinstance(value, model):  # dict(model): its fields and extras
        return {TAG: "pydantic", "c": class_ref(t), "v": _encode_dict(dict(value))}
    raise _Unencodable(f"unsupported type {_type_name(value)}", _SUPPORTED)


def _children(value: Any) -> Iterable[tuple[str | int, Any]]:
    t = type(value)
    if t is dict:
        return value.items()  # type: ignore[no-any-return]
    if t in (list, tuple, set, frozenset):
        return enumerate(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    model = pydantic_base()
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


def to_json(value: Any, what: str) -> str:
    """``value`` as compact durably JSON. A ``ContextSerializationError`` names ``what`` and
    the key path of a value that cannot be stored."""
    try:
        try:
            text: str = _ENCODER.encode(encode(value))
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
