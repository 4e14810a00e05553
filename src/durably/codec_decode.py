"""Decoding durably JSON: each tag of ``durably.codec`` back to the value it was written from.

Text without a tag is parsed by the JSON decoder alone; :func:`from_json` is what ``loads`` and
``loads_value`` call.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo

from .codec_types import TAG, is_enum, is_model, resolve
from .exceptions import ContextSerializationError

__all__ = ["from_json"]

_Moment = TypeVar("_Moment", datetime, time)


def _with_offset(value: _Moment, obj: dict[str, Any]) -> _Moment:
    if "off" not in obj:
        return value
    return value.replace(tzinfo=timezone(timedelta(*obj["off"])))


def _decode_dataclass(obj: dict[str, Any]) -> Any:
    cls = resolve(obj["c"], "dataclass", dataclasses.is_dataclass)
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
    "enum": lambda o: resolve(o["c"], "Enum", is_enum)(o["v"]),
    "dataclass": _decode_dataclass,
    # model_construct restores the saved fields as they were, like pydantic's own unpickling.
    "pydantic": lambda o: resolve(o["c"], "pydantic", is_model).model_construct(**o["v"]),
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


def from_json(text: str, what: str) -> Any:
    """The value durably JSON ``text`` holds; a ``ContextSerializationError`` names ``what``
    when it cannot be loaded."""
    # Text without any tag (the common case) is parsed without calling back into Python.
    decoder = _DECODER if f'"{TAG}"' in text else _PLAIN_DECODER
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise ContextSerializationError(f"cannot load {what}: invalid JSON ({exc})") from exc
    except RecursionError:
        raise ContextSerializationError(f"cannot load {what}: nested too deeply") from None
