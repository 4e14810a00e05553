"""What an action's form says, checked before anything is written: the body (bounded), an
event's payload, and a fork's edited context turned into the patch ``Engine.fork`` takes.

JSON here is a context as durably stores it: special values tagged ``{"$durably": ...}``, the
form the editor is pre-filled with, so ``codec`` decodes it as it decodes a stored context.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from .. import codec
from ..exceptions import DurablyError
from .security import Refused

MAX_BODY = 2 * 1024 * 1024  # a context is at most 1 MiB by default; a form holds one
MAX_FIELDS = 20


async def read_form(request: Request, limit: int = MAX_BODY) -> dict[str, str]:
    """The url-encoded form of ``request``; :class:`Refused` (413) past ``limit`` bytes,
    counted as they arrive, whatever ``Content-Length`` claims."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(f"request body over {limit // 1024} KiB refused", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(f"request body over {limit // 1024} KiB refused", status=413)
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"malformed form body: {exc}", status=400) from None
    return dict(pairs)


class BadInput(ValueError):
    """What the user typed cannot be used; the message says why (shown in the form)."""


def _parse(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def payload(text: str) -> Any:
    """An event's payload: any JSON value (empty: null), tagged values decoded."""
    if not text.strip():
        return None
    data = _parse(text, "the payload")
    try:
        return codec.loads_value(json.dumps(data))
    except DurablyError as exc:
        raise BadInput(f"the payload cannot be used: {exc}") from None


def edited_context(text: str, original: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    """The patch a fork applies: the keys of the edited context ``text`` that are new or
    changed against the task's input ``original``. A fork patches the input, so a removed
    key cannot be expressed: that is refused rather than silently kept."""
    data = _parse(text, "the context")
    if not isinstance(data, dict):
        raise BadInput(f"the context must be a JSON object, not {type(data).__name__}")
    try:
        edited = codec.loads(json.dumps(data))
    except DurablyError as exc:
        raise BadInput(f"the context cannot be used: {exc}") from None
    removed = [key for key in original if key not in edited]
    if removed:
        raise BadInput(
            f"a fork cannot remove keys from the task's input ({', '.join(map(repr, removed))}):"
            " set them to null instead"
        )
    before = json.loads(codec.dumps(dict(original)))
    patch = {k: v for k, v in edited.items() if k not in before or data[k] != before[k]}
    try:
        codec.dumps(patch, max_bytes=max_bytes)
    except DurablyError as exc:
        raise BadInput(str(exc)) from None
    return patch
