"""How a task's input context is built from its dependencies' outputs (SPEC §3.1).

Every strategy receives ``[(dependency name, output data), ...]`` in declaration order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .context import Context
from .exceptions import ContextConflictError, TaskReturnError

Inputs = list[tuple[str, dict[str, Any]]]
MergeFn = Callable[[list[tuple[str, Context]]], Any]
STRATEGIES = ("latest_wins", "deep", "strict")


def latest_wins(inputs: Inputs) -> dict[str, Any]:
    """``{**out(dep1), **out(dep2), ...}``: the last declared dependency wins per key."""
    if len(inputs) == 1:
        return inputs[0][1]
    merged: dict[str, Any] = {}
    for _, data in inputs:
        merged.update(data)
    return merged


def _deep_update(into: dict[str, Any], data: dict[str, Any]) -> None:
    for key, value in data.items():
        current = into.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            into[key] = dict(current)
            _deep_update(into[key], value)
        else:
            into[key] = value


def deep(inputs: Inputs) -> dict[str, Any]:
    """Nested dicts merged recursively; the last declared dependency wins on other values."""
    merged: dict[str, Any] = {}
    for _, data in inputs:
        _deep_update(merged, data)
    return merged


def strict(inputs: Inputs) -> dict[str, Any]:
    """Like ``latest_wins``, but two dependencies disagreeing on a key is an error."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, data in inputs:
        for key, value in data.items():
            if key in merged and merged[key] != value:
                raise ContextConflictError(
                    f"dependencies {owner[key]!r} and {name!r} hold different values for "
                    f"key {key!r}: {merged[key]!r} != {value!r}"
                )
            merged[key] = value
            owner.setdefault(key, name)
    return merged


def merge(strategy: str | MergeFn, inputs: Inputs) -> dict[str, Any]:
    """Apply a strategy by name, or a user callable taking ``[(name, Context), ...]``."""
    if strategy == "latest_wins":
        return latest_wins(inputs)
    if strategy == "deep":
        return deep(inputs)
    if strategy == "strict":
        return strict(inputs)
    if callable(strategy):
        result = strategy([(name, Context._from_data(data)) for name, data in inputs])
        if isinstance(result, Context):
            return result._data
        if isinstance(result, dict):
            return result
        raise TaskReturnError(
            f"merge callable must return a Context or a dict, not {type(result).__name__}"
        )
    raise ValueError(f"unknown merge strategy {strategy!r}")
