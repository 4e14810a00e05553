"""A saga callback and the extra keyword arguments it is called with (:class:`SagaOperation`),
and the names that identify a callback across processes (:func:`callable_name`).

A saga's fingerprint hashes these names (``durably.saga``), so they must be the same in every
process that loads the definition: they are built from ``__module__`` and ``__qualname__``,
never from an object's ``id`` or ``repr``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Callback", "SagaOperation", "callable_name", "operation", "signature_of"]

Callback = Callable[..., Any]


def callable_name(fn: Any) -> str:
    """``module:qualname`` of a callback (a partial's function; a callable object's class).

    Lambdas share one qualname per scope, so theirs also gets the line they start on."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    name = f"{target.__module__}:{target.__qualname__}"
    code = getattr(target, "__code__", None)
    if name.endswith("<lambda>") and code is not None:
        name += f"@{code.co_firstlineno}"
    return name


class SagaOperation:
    """A callback and the extra keyword arguments it is called with (minos ``parameters``):
    ``SagaOperation(fn, **parameters)`` or ``SagaOperation(fn, parameters={...})``. Accepted
    wherever a callback is."""

    __slots__ = ("callback", "parameters")
    callback: Callback
    parameters: Mapping[str, Any]

    def __init__(
        self,
        callback: Callback | SagaOperation,
        parameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(callback, SagaOperation):
            parameters = {**callback.parameters, **(parameters or {})}
            callback = callback.callback
        if not callable(callback):
            raise TypeError(f"a saga callback must be callable, not {callback!r}")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise TypeError(f"parameters must be a mapping of names to values, not {parameters!r}")
        object.__setattr__(self, "callback", callback)
        object.__setattr__(self, "parameters", {**(parameters or {}), **kwargs})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a SagaOperation cannot change")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SagaOperation):
            return NotImplemented
        return self.callback == other.callback and dict(self.parameters) == dict(other.parameters)

    def __hash__(self) -> int:
        return hash((self.callback, tuple(sorted(self.parameters))))

    def __repr__(self) -> str:
        return f"SagaOperation({callable_name(self.callback)}, {dict(self.parameters)!r})"

    @property
    def name(self) -> str:
        """The callback's short name, for display: ``validate``, ``<lambda>``."""
        qualname = callable_name(self.callback).partition(":")[2]
        return qualname.rpartition(".")[2].partition("@")[0]

    @property
    def anonymous(self) -> bool:
        """Whether the callback is a lambda, whose name says nothing."""
        return self.name == "<lambda>"

    def signature(self) -> list[Any]:
        # Parameter names only: their values may not have a stable text form across processes.
        return [callable_name(self.callback), sorted(self.parameters)]


def operation(
    callback: Callback | SagaOperation,
    parameters: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> SagaOperation:
    """What a step's ``on_execute(callback, parameters, **kwargs)`` (and the like) stores."""
    return SagaOperation(callback, {**(parameters or {}), **kwargs})


def signature_of(op: SagaOperation | None) -> list[Any] | None:
    """What the fingerprint hashes for an optional callback."""
    return op.signature() if op is not None else None
