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

Here are the four calls; the walk that writes tags is in ``codec_encode``, reading them back in
``codec_decode``, and the tag key with the classes it names in ``codec_types``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .codec_decode import from_json
from .codec_encode import to_json
from .codec_types import TAG, register_type
from .exceptions import ContextSerializationError, ContextTooLargeError

__all__ = ["TAG", "dumps", "dumps_value", "loads", "loads_value", "register_type"]


def dumps(data: Mapping[str, Any], *, max_bytes: int | None = None) -> str:
    """Encode a context's data as compact JSON.

    Raises :class:`ContextSerializationError` naming the key path and type of a value that
    cannot be stored, and :class:`ContextTooLargeError` when the UTF-8 size exceeds
    ``max_bytes``.
    """
    text = to_json(data if type(data) is dict else dict(data.items()), "the context")
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
    return to_json(value, "the value")


def loads(text: str) -> dict[str, Any]:
    """Decode :func:`dumps` output: every value comes back with its original type."""
    data = from_json(text, "the context")
    if type(data) is not dict:
        raise ContextSerializationError(
            f"cannot load the context: expected a JSON object, got {type(data).__name__}"
        )
    return data


def loads_value(text: str) -> Any:
    """Decode :func:`dumps_value` output."""
    return from_json(text, "the value")
