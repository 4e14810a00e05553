"""The checks on what callers hand the engine: ids, idempotency keys, initial contexts and
numeric options. Bad input is refused here with a clear message, before anything is written."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from . import codec
from .context import Context
from .exceptions import ExecutionNotFound

MAX_KEY_LENGTH = 1000
MAX_LEASE = 7 * 24 * 3600.0


def as_id(execution_id: UUID | str) -> str:
    try:
        return str(UUID(str(execution_id)))
    except ValueError:
        raise ExecutionNotFound(f"{execution_id!r} is not an execution id") from None


def check_lease(lease: object) -> float:
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int | float)
        or not math.isfinite(lease)
        or not 0 < lease <= MAX_LEASE
    ):
        raise ValueError(f"lease must be a finite number of seconds > 0 and <= {MAX_LEASE:g}")
    return float(lease)


def check_int(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")


def check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty str, not {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"key is {len(key)} characters long, over the limit of {MAX_KEY_LENGTH}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("key must be valid text (it holds a lone surrogate)") from None
    return key


def encode_initial(context: Context | Mapping[str, Any] | None, max_bytes: int) -> str:
    """The initial context as stored; a bad one raises before anything is written."""
    if context is None:
        return "{}"
    if isinstance(context, Context):
        return codec.dumps(context._data, max_bytes=max_bytes)
    if isinstance(context, Mapping):
        return codec.dumps(context, max_bytes=max_bytes)
    raise TypeError(f"context must be a Context or a dict, not {type(context).__name__}")
