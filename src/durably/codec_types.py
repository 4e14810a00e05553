"""The types a tagged value names: the :data:`TAG` key, and classes by ``module:qualname``.

A value JSON cannot hold is written as an object whose ``TAG`` key names its kind (see
``durably.codec``); an Enum member, a dataclass or a pydantic model also names its class.
Classes are found among those this process has encoded or registered (:func:`register_type`),
then in modules already imported: loading never imports anything named by stored data.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from .exceptions import ContextSerializationError

__all__ = ["TAG", "class_ref", "is_enum", "is_model", "pydantic_base", "register_type", "resolve"]

TAG = "$durably"
_T = TypeVar("_T", bound=type)

_registry: dict[str, type] = {}


def class_ref(cls: type) -> str:
    """The ``module:qualname`` a tag names ``cls`` by; ``cls`` is remembered under it."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    _registry[name] = cls  # so that this process can load what it wrote, even local classes
    return name


def pydantic_base() -> Any:
    """pydantic's ``BaseModel``, or None when pydantic was never imported."""
    # pydantic is optional: if it was never imported, no value can be a pydantic model.
    module = sys.modules.get("pydantic")
    return getattr(module, "BaseModel", None) if module is not None else None


def resolve(name: Any, kind: str, check: Callable[[type], bool]) -> Any:
    """The ``kind`` class (one that passes ``check``) that ``name`` names: remembered, or found
    in a module already imported, never imported."""
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


def is_enum(cls: type) -> bool:
    """Whether ``cls`` is an Enum class."""
    return issubclass(cls, Enum)


def is_model(cls: type) -> bool:
    """Whether ``cls`` is a pydantic model class."""
    model = pydantic_base()
    return model is not None and issubclass(cls, model)


def register_type(cls: _T) -> _T:
    """Let this process load values of ``cls`` (an Enum, dataclass or pydantic model class)
    before it has written one. Usable as a class decorator."""
    if not (
        isinstance(cls, type) and (is_enum(cls) or dataclasses.is_dataclass(cls) or is_model(cls))
    ):
        raise ContextSerializationError(
            f"cannot register {cls!r}: only Enum, dataclass and pydantic model classes can be "
            "stored in a context"
        )
    class_ref(cls)
    return cls
