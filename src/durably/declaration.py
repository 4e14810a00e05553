"""Checks on a task as declared, apart from the workflow that holds it: which arguments its
function takes, whether its fan-out options fit together, and the digest of its code that a
workflow's version hashes."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from types import CodeType
from typing import Any

from .exceptions import WorkflowDefinitionError


def wants_handle(fn: Callable[..., Any], what: str) -> bool:
    """Whether ``fn`` takes ``(ctx, handle)`` rather than ``(ctx)``.

    A second positional parameter with a default is a closure variable bound in a loop
    (``def step(ctx, i=i)``), not a handle, unless its annotation says ``TaskHandle``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 2 or keyword_only or (not positional and not varargs):
        raise WorkflowDefinitionError(f"{what} must take (ctx) or (ctx, handle)")
    if len(positional) >= 2:
        second = positional[1]
        return second.default is second.empty or names_task_handle(second.annotation)
    return varargs


def names_task_handle(annotation: Any) -> bool:
    """Whether an annotation is ``TaskHandle``, ``TaskHandle | None`` or such; a string one
    (``from __future__ import annotations``) is compared by name, never evaluated."""
    if isinstance(annotation, str):
        parts = annotation.replace("Optional[", "|").replace("]", "|").split("|")
        return any(part.strip().strip("'\"").rpartition(".")[2] == "TaskHandle" for part in parts)
    # By name too: the executor, which defines TaskHandle, imports this module.
    if getattr(annotation, "__name__", None) == "TaskHandle":
        return True
    return any(names_task_handle(arg) for arg in typing.get_args(annotation))


def check_map(map_over: object, max_parallel: object, collect: object, wait: object) -> None:
    """``map_over`` / ``max_parallel`` / ``collect`` (SPEC §3.4), refused when malformed."""
    for name, value in (("map_over", map_over), ("collect", collect)):
        if value is not None and (not isinstance(value, str) or not value or value[0] == "_"):
            raise WorkflowDefinitionError(
                f"{name} must name a context key (a non-empty str not starting with '_'), "
                f"not {value!r}"
            )
    if max_parallel is not None and (
        isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1
    ):
        raise WorkflowDefinitionError(f"max_parallel must be an int >= 1, not {max_parallel!r}")
    if map_over is None and (max_parallel is not None or collect is not None):
        raise WorkflowDefinitionError("max_parallel and collect apply to a task with map_over")
    if map_over is not None and wait is not None:
        raise WorkflowDefinitionError(
            "a mapped task cannot also wait: put the wait on a task before it"
        )


def code_digest(code: CodeType, h: Any) -> None:
    h.update(code.co_code)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            code_digest(const, h)
        else:
            h.update(repr(const).encode())
    h.update(repr(code.co_names).encode())
