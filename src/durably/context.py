"""The context: a small, thread-safe key/value document that flows from task to task (SPEC §2).

Where a context is used is its :class:`ExecutionScope` (``scope``); how ``get_as`` turns stored
data into the type asked for is in ``conversion``; how the data is stored, in ``codec``.
"""

from __future__ import annotations

import copy as _copy
import enum
import functools
import threading
from collections.abc import (
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import Any, Final, Self, TypeVar, overload

from . import codec
from .conversion import converted
from .exceptions import ContextKeyExists, ContextKeyMissing, ContextSerializationError
from .scope import ExecutionScope

__all__ = ["MISSING", "Context", "ExecutionScope", "SagaContext"]

_T = TypeVar("_T")
_D = TypeVar("_D")


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""Default of :meth:`Context.get_as` meaning "no default: a missing key is an error"."""


def _key(key: object) -> str:
    if type(key) is str:
        return key
    if isinstance(key, str):
        # A str-Enum key constant would not find its plain-str twin (Enum hashes by name), and
        # keys come back from storage as plain str: store it as one.
        return str.__str__(key)
    raise ContextSerializationError(f"context keys must be str, not {type(key).__name__}: {key!r}")


class Context(MutableMapping[str, Any]):
    """A dict-like document of ``str`` keys, also readable and writable as attributes.

    ``ctx["k"]`` always reaches the data; ``ctx.k`` does too, unless ``k`` is the name of a
    method or property (``items``, ``get``, ``scope``...), or starts with ``_``.
    """

    __slots__ = ("__dict__", "_data", "_lock", "_scope")

    _data: dict[str, Any]
    _lock: threading.RLock
    _scope: ExecutionScope | None

    def __init__(
        self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None, /, **kwargs: Any
    ) -> None:
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_scope", None)
        self.update(mapping, **kwargs)

    @classmethod
    def _from_data(cls, data: dict[str, Any], scope: ExecutionScope | None = None) -> Self:
        """Wrap ``data`` as it is, without copying or checking it (the engine's hot path)."""
        self = cls.__new__(cls)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_scope", scope)
        return self

    @classmethod
    def _from_text(cls, text: str) -> Context:
        """A saved context (codec text) decoded when it is first read: an execution's
        result carries every task's output, and most callers read none of them (decoding
        them all was a tenth of a chain's cost)."""
        self = _StoredContext.__new__(_StoredContext)
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_lock", threading.RLock())
        object.__setattr__(self, "_scope", None)
        return self

    @property
    def scope(self) -> ExecutionScope | None:
        """The execution and task this context belongs to; ``None`` outside an execution."""
        return self._scope

    # -- mapping --------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._data[key if type(key) is str else _key(key)]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key if type(key) is str else _key(key)] = value

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._data[key if type(key) is str else _key(key)]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            return _key(key) in self._data

    def __iter__(self) -> Iterator[str]:
        # A snapshot of the keys: other threads may write while the caller iterates.
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> KeysView[str]:
        return KeysView(self)

    def values(self) -> ValuesView[Any]:
        return _ValuesView(self)

    def items(self) -> ItemsView[str, Any]:
        return _ItemsView(self)

    def get(self, key: str, default: Any = None) -> Any:
        if not isinstance(key, str):
            return default
        with self._lock:
            return self._data.get(_key(key), default)

    def pop(self, key: str, default: Any = MISSING) -> Any:
        with self._lock:
            if default is MISSING:
                return self._data.pop(_key(key))
            return self._data.pop(_key(key), default)

    def popitem(self) -> tuple[str, Any]:
        with self._lock:
            return self._data.popitem()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def setdefault(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._data.setdefault(_key(key), default)

    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        """Like ``dict.update``; every key is checked before anything is written."""
        if isinstance(other, Context):
            new = other._snapshot()
        else:
            new = {} if other is None else dict(other)
        new.update(kwargs)
        if any(type(k) is not str for k in new):
            new = {_key(k): v for k, v in new.items()}
        with self._lock:
            self._data.update(new)

    def copy(self) -> Self:
        """A shallow copy, like ``dict.copy()``, in the same scope."""
        return self._from_data(self._snapshot(), self._scope)

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self._from_data(_copy.deepcopy(self._snapshot(), memo), self._scope)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Context):
            return self._snapshot() == other._snapshot()
        if isinstance(other, Mapping):
            return self._snapshot() == (other if isinstance(other, dict) else dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._snapshot()!r})"

    def _snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._data)

    # -- attribute access -----------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails, so methods and properties always win.
        if not name.startswith("_"):
            with self._lock:
                if name in self._data:
                    return self._data[name]
        raise AttributeError(f"{type(self).__name__} has no key or attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # A method name written as an attribute writes the key, as minos does (the method
        # still wins when it is read); a property such as ``scope`` is read-only.
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif name in _properties(type(self)):
            raise AttributeError(
                f"{name!r} is a {type(self).__name__} attribute, not a key: "
                f"use ctx[{name!r}] = ... to store it"
            )
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
        elif name in _properties(type(self)):
            raise AttributeError(
                f"{name!r} is a {type(self).__name__} attribute, not a key: "
                f"use del ctx[{name!r}] to delete the key"
            )
        else:
            try:
                del self[name]
            except KeyError:
                raise AttributeError(
                    f"{type(self).__name__} has no key or attribute {name!r}"
                ) from None

    # -- Cloacina-style verbs -------------------------------------------------------------

    def insert(self, key: str, value: Any) -> None:
        """Add a new key; :class:`ContextKeyExists` if it is already there."""
        key = _key(key)
        with self._lock:
            if key in self._data:
                raise ContextKeyExists(
                    f"key {key!r} is already in the context: use replace() or "
                    f"ctx[{key!r}] = ... to change it"
                )
            self._data[key] = value

    def replace(self, key: str, value: Any) -> None:
        """Change an existing key; :class:`ContextKeyMissing` if it is absent."""
        key = _key(key)
        with self._lock:
            if key not in self._data:
                raise ContextKeyMissing(
                    f"key {key!r} is not in the context: use insert() or "
                    f"ctx[{key!r}] = ... to add it"
                )
            self._data[key] = value

    @overload
    def get_as(self, key: str, tp: type[_T]) -> _T: ...
    @overload
    def get_as(self, key: str, tp: type[_T], default: _D) -> _T | _D: ...
    def get_as(self, key: str, tp: type[_T], default: Any = MISSING) -> Any:
        """Return ``ctx[key]`` as a ``tp``: a dict becomes a dataclass or pydantic model, a
        str or int an Enum member, an int a float. Anything else is a
        :class:`ContextTypeError`."""
        key = _key(key)
        with self._lock:
            if key not in self._data:
                if default is MISSING:
                    raise ContextKeyMissing(f"key {key!r} is not in the context")
                return default
            value = self._data[key]
        return converted(key, value, tp)

    # -- serialization --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the data."""
        return _copy.deepcopy(self._snapshot())

    def to_json(self) -> str:
        with self._lock:
            return codec.dumps(self._data)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls._from_data(codec.loads(text))


class SagaContext(Context):
    """The context of a saga execution (the minos name): the same thing as :class:`Context`."""

    __slots__ = ()


_DATA_SLOT = Context.__dict__["_data"]


class _StoredContext(Context):
    """A :class:`Context` whose data is decoded from its saved text on first access
    (:meth:`Context._from_text`). Every method reaches the data through ``_data`` under the
    context's lock, so the decoding happens once, under that lock."""

    __slots__ = ("_text",)
    _text: str

    @property
    def _data(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = _DATA_SLOT.__get__(self, Context)
        except AttributeError:
            data = codec.loads(self._text)
            _DATA_SLOT.__set__(self, data)
        return data

    @_data.setter
    def _data(self, value: dict[str, Any]) -> None:
        _DATA_SLOT.__set__(self, value)


# It is a Context to its users: reprs and error messages name it so.
_StoredContext.__name__ = _StoredContext.__qualname__ = "Context"


class _ValuesView(ValuesView[Any]):
    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._ctx = ctx

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._ctx._snapshot().values()))

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class _ItemsView(ItemsView[str, Any]):
    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._ctx = ctx

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self._ctx._snapshot().items()))


@functools.cache
def _properties(cls: type) -> frozenset[str]:
    # The class attributes that are not methods: data descriptors such as ``scope``.
    return frozenset(
        name
        for klass in cls.__mro__
        for name, value in vars(klass).items()
        if isinstance(value, property)
    )
