"""Context rows stored as what changed: the format, pure.

A ``contexts`` row holds either the codec's full JSON text (``base_id`` NULL), or, resting on
the row ``base_id``, what changed at the top level since that row, as a JSON object::

    {"set": {"k3": 3}, "deleted": ["tmp"]}          (either part left out when empty)

Its value is the base's with ``deleted`` removed and then ``set`` written: a key the base
still holds keeps its place, any other goes at the end in the order given (so a key both
deleted and set moves to the end). Values are compared by their JSON text, never as Python
objects: a task may change a nested value in place, so only the texts tell what was saved.

A writer keeps a delta only when rebuilding from it gives exactly the text it was given
(:func:`rest_on`), so a row reads back as what was written whatever base was chosen. A
chain of deltas stays short: at most :data:`MAX_DEPTH` rows, and never more characters
than the full text itself, so reading a row costs at most about twice its own size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MAX_DEPTH", "SavedRow", "resolve", "rest_on", "resting"]

MAX_DEPTH = 16
# What a delta row costs beyond its value: the base's id (a UUID's text). Counted so that a
# delta must save more than a reference costs, and each row of a chain costs at least this.
REFERENCE_COST = 36

_SMALLEST_DELTA = len('{"set":{"k":0}}')

# The codec's own settings (codec_encode): a value re-encoded here is the text it wrote.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


class SavedRow:
    """A context row as this process read or wrote it: its id, its full text, and what
    reading it costs (``depth`` deltas, ``chain`` characters of them, ids counted, above the
    full row it rests on; both 0 for a full row)."""

    __slots__ = ("_encodings", "chain", "depth", "id", "text")

    def __init__(
        self, row_id: str, text: str, depth: int = 0, chain: int = 0,
        encodings: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.id = row_id
        self.text = text
        self.depth = depth
        self.chain = chain
        self._encodings = encodings

    def encodings(self) -> dict[str, str]:
        """Each top-level key's value as JSON text, in the text's order (parsed once)."""
        if self._encodings is None:
            self._encodings = encodings_of(self.text)
        return self._encodings

    def __repr__(self) -> str:
        return f"SavedRow({self.id!r}, depth={self.depth}, chain={self.chain})"


def resting(
    row_id: str, text: str, base: SavedRow, delta: str, encodings: dict[str, str] | None = None
) -> SavedRow:
    """The row ``row_id`` holding ``delta`` on ``base`` (its full text: ``text``)."""
    return SavedRow(
        row_id, text, base.depth + 1, base.chain + len(delta) + REFERENCE_COST, encodings
    )


def encodings_of(text: str) -> dict[str, str]:
    data = json.loads(text)
    if type(data) is not dict:
        raise ValueError(f"a context row holds a JSON object, not {type(data).__name__}")
    return {key: _ENCODE(value) for key, value in data.items()}


def text_of(encodings: Mapping[str, str]) -> str:
    """The object's text, as the codec writes it (its encoder joins members the same way)."""
    return "{" + ",".join(f"{_ENCODE(key)}:{value}" for key, value in encodings.items()) + "}"


def applied(base: Mapping[str, str], delta: str) -> dict[str, str]:
    change: dict[str, Any] = json.loads(delta)
    result = dict(base)
    for key in change.get("deleted", ()):
        result.pop(key, None)
    for key, value in change.get("set", {}).items():
        result[key] = _ENCODE(value)
    return result


def delta_of(base: Mapping[str, str], new: Mapping[str, str]) -> str:
    """What turns ``base`` into ``new``, keys in ``new``'s order: the longest run of its first
    keys that the base holds in the same order stays in place, later keys are written at the
    end (those the base holds are deleted first, which moves them)."""
    position = {key: i for i, key in enumerate(base)}
    kept: set[str] = set()
    last = -1
    for key in new:
        at = position.get(key)
        if at is None or at < last:
            break
        kept.add(key)
        last = at
    changed = {k: v for k, v in new.items() if k not in kept or base[k] != v}
    deleted = [k for k in base if k not in kept]
    parts = []
    if changed:
        parts.append('"set":' + text_of(changed))
    if deleted:
        parts.append('"deleted":' + _ENCODE(deleted))
    return "{" + ",".join(parts) + "}"


def rest_on(text: str, bases: Sequence[SavedRow]) -> tuple[SavedRow | None, str | None]:
    """How to store ``text`` given rows it was likely made from: ``(base, None)`` when a
    base holds this very text (no new row), ``(base, delta)`` for the smallest delta that
    rebuilds it exactly within the chain limits, or ``(None, None)``: the full text."""
    new: dict[str, str] | None = None
    best: tuple[SavedRow, str] | None = None
    for base in bases:
        if base.text == text:
            return base, None
        if base.depth >= MAX_DEPTH or len(text) <= _SMALLEST_DELTA + REFERENCE_COST:
            continue
        if new is None:
            new = encodings_of(text)
        delta = delta_of(base.encodings(), new)
        if base.chain + len(delta) + REFERENCE_COST > len(text):
            continue  # not worth it, or reading the chain would cost more than the text
        if best is not None and len(delta) >= len(best[1]):
            continue
        if text_of(applied(base.encodings(), delta)) == text:
            best = (base, delta)
    return best or (None, None)


def resolve(
    rows: Mapping[str, tuple[str, str | None]], wanted: Iterable[str]
) -> dict[str, SavedRow]:
    """The rows ``wanted`` (and those they rest on) from ``rows``: id -> (value, base_id),
    as one query read them."""
    done: dict[str, SavedRow] = {}
    for row_id in wanted:
        path: list[str] = []
        at: str | None = row_id
        while at is not None and at not in done:
            if at not in rows or len(path) > len(rows):  # a missing row, or a cycle
                raise LookupError(f"context row {row_id} rests on {at}, which was not read")
            path.append(at)
            at = rows[at][1]
        for step in reversed(path):
            value, base_id = rows[step]
            if base_id is None:
                done[step] = SavedRow(step, value)
                continue
            encodings = applied(done[base_id].encodings(), value)
            done[step] = resting(step, text_of(encodings), done[base_id], value, encodings)
    return done
