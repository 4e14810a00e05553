"""How :meth:`Context.get_as <durably.context.Context.get_as>` turns stored plain data into the
type asked for: a dict into a dataclass or a pydantic model (nested fields too), a str or an
int into an Enum member, an int into a float. Anything else is refused, never guessed.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import Any

from .exceptions import ContextTypeError

__all__ = ["converted"]


def converted(key: str, value: Any, tp: Any) -> Any:
    """``value``, stored under ``key``, as a ``tp``; :class:`ContextTypeError` if it is not one
    and cannot become one."""
    try:
        return _convert(value, tp)
    except Exception as exc:
        reason = f" ({exc})" if not isinstance(exc, _NotConvertible) else ""
        raise ContextTypeError(
            f"context key {key!r}: expected {_name(tp)}, got {_name(type(value))}{reason}"
        ) from exc


def _name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def _is_model(tp: type) -> bool:
    return hasattr(tp, "model_validate") and hasattr(tp, "__pydantic_fields__")


class _NotConvertible(TypeError):
    pass


def _convert(value: Any, tp: Any) -> Any:
    try:
        if isinstance(value, tp):
            return value
    except TypeError:
        raise TypeError(f"get_as() needs a class or a union of classes, not {tp!r}") from None
    if _is_structured(tp):
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            return _to_dataclass(value, tp)
        if _is_model(tp) and isinstance(value, Mapping):
            return tp.model_validate(value)
        if issubclass(tp, enum.Enum) and type(value) in (str, int):
            try:
                return tp(value)
            except ValueError:
                if type(value) is str and value in tp.__members__:
                    return tp[value]  # a member's name, as people write it by hand
                raise
    if tp is float and type(value) is int:
        return float(value)
    raise _NotConvertible


def _is_structured(tp: Any) -> bool:
    return isinstance(tp, type) and (
        dataclasses.is_dataclass(tp) or _is_model(tp) or issubclass(tp, enum.Enum)
    )


def _to_dataclass(value: Mapping[str, Any], tp: Any) -> Any:
    # Nested dataclass, model and Enum fields given as plain data are converted too.
    try:
        hints = typing.get_type_hints(tp)
    except Exception:  # e.g. a forward reference to a class local to a function
        hints = {}
    kwargs = {}
    for name, item in value.items():
        hint = hints.get(name)
        kwargs[name] = _convert(item, hint) if _is_structured(hint) else item
    return tp(**kwargs)
