"""What saga steps send and receive: requests to participants and their responses (minos names).

On the wire a request or a reply is a :class:`durably.wire.Message`: JSON text from the context
codec (never pickle) plus string headers that correlate a reply with the saga execution and the
step that is waiting for it. :func:`request_message` and :func:`reply_message` write them;
:meth:`SagaResponse.from_message` reads a reply.
"""

from __future__ import annotations

import dis
import sys
from collections.abc import Generator, Iterable
from enum import IntEnum
from types import CodeType
from typing import Any
from uuid import UUID

from . import codec
from .exceptions import UndecodableMessageError
from .wire import Message

__all__ = ["SagaRequest", "SagaResponse", "SagaResponseStatus"]

# Headers of saga messages. A request carries all but ``status``; its reply echoes ``saga``,
# ``step``, ``idempotency_key`` and ``token`` and adds ``status``.
HEADER_SAGA = "saga"  # the saga execution uuid
HEADER_STEP = "step"  # the step path, e.g. "2" or "3.0" inside a conditional step
HEADER_REPLY_TO = "reply_to"  # the topic the reply goes to
HEADER_KEY = "idempotency_key"  # one per request: "<saga>:<step>:execute|failure"
HEADER_STATUS = "status"  # the reply's SagaResponseStatus, as digits
# An unguessable secret per request (secrets.token_urlsafe), stored with the paused step: only
# a reply that echoes it can resume the step, so whoever can publish to the reply topic cannot
# complete a step they never received the request of.
HEADER_TOKEN = "token"

_ECHOED = frozenset({HEADER_SAGA, HEADER_STEP, HEADER_KEY, HEADER_TOKEN})


class SagaResponseStatus(IntEnum):
    """How a participant answered: SUCCESS runs ``on_success``, ERROR ``on_error``, and
    SYSTEM_ERROR fails the step."""

    SUCCESS = 200
    ERROR = 400
    SYSTEM_ERROR = 500


def request_message(
    target: str, body: str, saga: str, step: str, reply_to: str, key: str, token: str
) -> Message:
    """A saga request as it goes on the wire."""
    headers = {HEADER_SAGA: saga, HEADER_STEP: step, HEADER_REPLY_TO: reply_to, HEADER_KEY: key}
    if token:
        headers[HEADER_TOKEN] = token
    return Message(target, body, headers)


def reply_message(
    request: Message, reply_to: str, status: SagaResponseStatus, body: str
) -> Message:
    """A participant's reply to ``request`` as it goes on the wire: the request's correlation
    headers, and the status."""
    headers = {k: v for k, v in request.headers.items() if k in _ECHOED}
    headers[HEADER_STATUS] = str(int(status))
    return Message(reply_to, body, headers)


class SagaRequest:
    """What a remote step's ``on_execute`` or ``on_failure`` returns: a message for ``target``."""

    __slots__ = ("_content", "_target")

    def __init__(self, target: str, content: Any = None) -> None:
        if not isinstance(target, str) or not target:
            raise TypeError(f"a SagaRequest target must be a non-empty str, not {target!r}")
        self._target = target
        self._content = content

    @property
    def target(self) -> str:
        """The service (queue) the request goes to."""
        return self._target

    def content(self) -> Any:
        """The request's content (a plain call; ``await request.content()`` works too)."""
        return _maybe_awaitable(self._content, sys._getframe(1))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SagaRequest)
            and self._target == other._target
            and self._content == other._content
        )

    def __hash__(self) -> int:
        return hash((SagaRequest, self._target, _frozen(self._content)))

    def __repr__(self) -> str:
        return f"SagaRequest({self._target!r}, {self._content!r})"


class SagaResponse:
    """A participant's reply: ``response.content()`` is what it returned (a plain call, whose
    result minos code may also ``await``).

    Positional arguments follow durably's order ``(content, status, uuid)`` or minos' order
    ``(content, related_services, status, uuid)``: a second argument that is a status (an
    ``int``) is durably's, anything else (a set of service names, ``None``) is minos'.

    ``uuid`` names the saga execution the reply belongs to; ``idempotency_key`` the request it
    answers and ``token`` the secret that request carried (a reply from a broker has both, and
    is applied only when they match the step that waits).
    """

    __slots__ = ("_content", "_key", "_received", "_related", "_status", "_token", "_uuid")

    def __init__(
        self,
        content: Any = None,
        *args: Any,
        status: SagaResponseStatus | int | None = None,
        uuid: UUID | str | None = None,
        related_services: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        token: str | None = None,
    ) -> None:
        if len(args) > 3:
            raise TypeError(
                f"SagaResponse takes at most 4 positional arguments, not {len(args) + 1}"
            )
        if args and _is_status(args[0]):
            if len(args) > 2:
                raise TypeError("SagaResponse(content, status, uuid) takes 3 positional arguments")
            named = dict(zip(("status", "uuid"), args, strict=False))
        else:
            named = dict(zip(("related_services", "status", "uuid"), args, strict=False))
        given = {"status": status, "uuid": uuid, "related_services": related_services}
        for name in named:
            if given[name] is not None:
                raise TypeError(f"SagaResponse got {name!r} twice")
        status = named.get("status", status)
        uuid = named.get("uuid", uuid)
        related_services = named.get("related_services", related_services)
        if status is None:
            status = SagaResponseStatus.SUCCESS  # as minos: no status is a success
        elif not _is_status(status):
            raise TypeError(f"a SagaResponse status must be a SagaResponseStatus, not {status!r}")
        self._status = SagaResponseStatus(status)  # ValueError names a code it does not know
        if isinstance(related_services, str):
            raise TypeError("related_services must be a collection of service names, not a str")
        self._content = content
        self._uuid = UUID(str(uuid)) if uuid is not None else None
        self._related = frozenset(related_services or ())
        self._key = idempotency_key
        self._token = token
        self._received = False  # True when decoded from a broker message

    def content(self) -> Any:
        """The reply's content (a plain call; ``await response.content()`` works too)."""
        return _maybe_awaitable(self._content, sys._getframe(1))

    @property
    def status(self) -> SagaResponseStatus:
        return self._status

    @property
    def ok(self) -> bool:
        return self._status is SagaResponseStatus.SUCCESS

    @property
    def uuid(self) -> UUID | None:
        """The saga execution this reply resumes."""
        return self._uuid

    @property
    def related_services(self) -> frozenset[str]:
        """minos' services involved in the reply (kept, not used by durably)."""
        return self._related

    @property
    def idempotency_key(self) -> str | None:
        """The key of the request this answers; ``None`` for a hand-made response."""
        return self._key

    @property
    def token(self) -> str | None:
        """The secret of the request this answers; ``None`` for a hand-made response."""
        return self._token

    @property
    def received(self) -> bool:
        """Whether this reply came from a broker (and so must carry the request's token)."""
        return self._received

    @classmethod
    def from_message(cls, message: Message) -> SagaResponse:
        """Decode a reply message a participant sent (see :meth:`durably.broker.Broker.serve`).
        Raises ``UndecodableMessageError`` for one that is not JSON or has a non-numeric
        ``status``: no redelivery can change that."""
        headers = message.headers
        try:
            uuid = UUID(headers.get(HEADER_SAGA, ""))
        except ValueError:
            uuid = None  # not a saga reply: no execution will be found for it
        raw_status = headers.get(HEADER_STATUS, str(int(SagaResponseStatus.SUCCESS)))
        try:
            status = SagaResponseStatus(int(raw_status))
        except ValueError:
            raise UndecodableMessageError(
                f"reply {message.id or '?'} on {message.topic!r} has the status header "
                f"{raw_status[:40]!r}: not 200, 400 or 500"
            ) from None
        try:
            content = codec.loads_value(message.body)
        except Exception as exc:  # the codec's errors vary with what is wrong in the text
            raise UndecodableMessageError(
                f"reply {message.id or '?'} on {message.topic!r} is not durably JSON: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        response = cls(
            content,
            status=status,
            uuid=uuid,
            idempotency_key=headers.get(HEADER_KEY) or None,
            token=headers.get(HEADER_TOKEN) or None,
        )
        response._received = True
        return response

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SagaResponse)
            and self._content == other._content
            and self._status == other._status
            and self._uuid == other._uuid
        )

    def __hash__(self) -> int:
        return hash((SagaResponse, _frozen(self._content), self._status, self._uuid))

    def __repr__(self) -> str:
        return f"SagaResponse({self._content!r}, {self._status.name}, uuid={self._uuid})"


def _is_status(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for ``value`` that is equal for equal values (dicts, lists and sets
    included), so equal requests and responses hash alike."""
    if isinstance(value, dict):
        return frozenset((_frozen(k), _frozen(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(_frozen(item) for item in value)
    try:
        hash(value)
    except TypeError:
        return (type(value).__qualname__, repr(value))
    return value


# -- `content()` as a plain call that minos code may also await -------------------------------
#
# minos writes `await response.content()`; durably's SPEC (and existing code) calls it plainly.
# No one return value can be both a dict and awaitable without changing its type, so content()
# looks at the instruction that follows the call in its caller: when it is GET_AWAITABLE, the
# caller is awaiting, and gets an awaitable of the value; otherwise the value itself. The answer
# is cached per code location (it cannot change); any inspection problem means "plain call".

_awaited_at: dict[tuple[CodeType, int], bool] = {}


class _Ready:
    """An awaitable that is already done with ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator that never suspends


def _maybe_awaitable(value: Any, frame: Any) -> Any:
    where = (frame.f_code, frame.f_lasti)
    awaited = _awaited_at.get(where)
    if awaited is None:
        awaited = False
        try:
            following = [i for i in dis.get_instructions(frame.f_code) if i.offset > frame.f_lasti]
            while following and following[0].opname in ("CACHE", "PRECALL", "CALL"):
                following.pop(0)
            awaited = bool(following) and following[0].opname == "GET_AWAITABLE"
        except Exception:
            pass
        _awaited_at[where] = awaited
    return _Ready(value) if awaited else value
