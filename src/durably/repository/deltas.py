"""Context rows stored as what changed: the format, pure.

A ``contexts`` row holds either the codec's full JSON text (``base_id`` NULL), or, resting on
the full row ``base_id``, what changed at the top level since that row, as a JSON object::

    {"set": {"k3": 3}, "deleted": ["tmp"]}          (either part left out when empty)

Its value is the base's with ``deleted`` removed and then ``set`` written: a key the base
still holds keeps its place, any other goes at the end in the order given (so a key both
deleted and set moves to the end). Values are compared by their JSON text, never as Python
objects: a task may change a nested value in place, so only the texts tell what was saved.

A delta always rests on a full row, never on another delta: a task whose input came from a
delta row writes what changed since that row's base. Reading any row is then that row and at
most one more, in the same query, whatever the length of the chain of tasks. A delta is kept
only while it is at most a quarter of the full text (:data:`SHARE`): reading costs little
more than the text, and a context that keeps growing gets a new full row once its changes
since the last one reach a quarter of it, so the deltas of a long chain stay small.
A delta rebuilds exactly the text it was made from (:func:`rest_on` checks that the text is
what its members join to), so a row reads back as written whatever base was chosen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

__all__ = ["SavedRow", "resolve", "rest_on"]

SHARE = 4  # a delta is kept while it is at most 1/SHARE of the text, its reference counted
# What a delta row costs beyond its value: the base's id (a UUID's text).
REFERENCE_COST = 36
_SMALLEST_DELTA = len('{"set":{"k":0}}')

# The codec's own settings (codec_encode): a value re-encoded here is the text it wrote.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_SCALARS: dict[type, Any] = {
    # What the encoder writes for these, without its per-call setup (most values are these).
    str: encode_basestring,
    int: int.__repr__,
    float: float.__repr__,  # finite: the codec tags the others
    bool: lambda b: "true" if b else "false",
    type(None): lambda _: "null",
}


def _encode(value: Any) -> str:
    scalar = _SCALARS.get(type(value))
    return scalar(value) if scalar is not None else _ENCODER.encode(value)


class SavedRow:
    """A context row as this process read or wrote it: its id, its full text, and the full
    row it rests on (``base``, None for a full row)."""

    __slots__ = ("_members", "base", "id", "text")

    def __init__(
        self, row_id: str, text: str, base: SavedRow | None = None,
        members: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.id = row_id
        self.text = text
        self.base = base
        self._members = members

    def members(self) -> dict[str, str]:
        """Each top-level key's member (``"key":value`` as JSON text), in the text's order
        (parsed once)."""
        if self._members is None:
            self._members = members_of(self.text)
        return self._members

    def __repr__(self) -> str:
        return f"SavedRow({self.id!r}, base={self.base.id if self.base else None!r})"


def members_of(text: str) -> dict[str, str]:
    data = json.loads(text)
    if type(data) is not dict:
        raise ValueError(f"a context row holds a JSON object, not {type(data).__name__}")
    return {key: f"{encode_basestring(key)}:{_encode(value)}" for key, value in data.items()}


def text_of(members: Mapping[str, str]) -> str:
    """The object's text, as the codec writes it (its encoder joins members the same way)."""
    return "{" + ",".join(members.values()) + "}"


def applied(base: Mapping[str, str], delta: str) -> dict[str, str]:
    change: dict[str, Any] = json.loads(delta)
    result = dict(base)
    for key in change.get("deleted", ()):
        result.pop(key, None)
    for key, value in change.get("set", {}).items():
        result[key] = f"{encode_basestring(key)}:{_encode(value)}"
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
        parts.append('"deleted":' + _encode(deleted))
    return "{" + ",".join(parts) + "}"


def rest_on(
    text: str, bases: Sequence[SavedRow]
) -> tuple[SavedRow | None, str | None, dict[str, str] | None]:
    """How to store ``text`` given rows it was likely made from: ``(row, None, _)`` when one
    holds this very text (no new row), ``(full row, delta, members of text)`` for the
    smallest delta on their full rows, or ``(None, None, None)``: the full text."""
    for row in bases:
        if row.text == text:
            return row, None, None
    limit = len(text) // SHARE - REFERENCE_COST  # the longest delta worth keeping
    if limit < _SMALLEST_DELTA:
        return None, None, None
    new = members_of(text)
    # Applying a delta rebuilds these members, keys in order, by construction: the text must
    # be what they join to (so not a text in another form, written by another version).
    if text_of(new) != text:
        return None, None, None
    best: tuple[SavedRow, str] | None = None
    for full in dict.fromkeys(row.base or row for row in bases):
        delta = delta_of(full.members(), new)
        if len(delta) <= limit and (best is None or len(delta) < len(best[1])):
            best = (full, delta)
    if best is None:
        return None, None, None
    return best[0], best[1], new


def resolve(
    rows: Mapping[str, tuple[str, str | None]], wanted: Iterable[str]
) -> dict[str, SavedRow]:
    """The rows ``wanted`` from ``rows`` (id -> (value, base_id), as one query read them:
    the rows and the full rows they rest on)."""
    done: dict[str, SavedRow] = {}
    for row_id in wanted:
        if row_id in done:
            continue
        if row_id not in rows:
            raise LookupError(f"context row {row_id} was not read")
        value, base_id = rows[row_id]
        if base_id is None:
            done[row_id] = SavedRow(row_id, value)
            continue
        base = done.get(base_id)
        if base is None:
            if base_id not in rows or rows[base_id][1] is not None:
                raise LookupError(f"context row {row_id} rests on {base_id}, not a full row read")
            base = done[base_id] = SavedRow(base_id, rows[base_id][0])
        members = applied(base.members(), value)
        done[row_id] = SavedRow(row_id, text_of(members), base, members)
    return done
