"""What saga steps send and receive: requests to participants and their responses (minos names).

On the wire a request or a reply is a :class:`durably.broker.Message`: JSON text from the context
codec (never pickle) plus string headers that correlate a reply with the saga execution and the
step that is waiting for it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

from . import codec

if TYPE_CHECKING:
    from .broker import Message

__all__ = ["SagaRequest", "SagaResponse", "SagaResponseStatus"]

# Headers of saga messages. A request carries all but ``status``; its reply echoes ``saga``,
# ``step`` and ``idempotency_key`` and adds ``status``.
HEADER_SAGA = "saga"  # the saga execution uuid
HEADER_STEP = "step"  # the step path, e.g. "2" or "3.0" inside a conditional step
HEADER_REPLY_TO = "reply_to"  # the topic the reply goes to
HEADER_KEY = "idempotency_key"  # one per request: "<saga>:<step>:execute|failure"
HEADER_STATUS = "status"  # the reply's SagaResponseStatus, as digits


class SagaResponseStatus(IntEnum):
    """How a participant answered: SUCCESS runs ``on_success``, ERROR ``on_error``, and
    SYSTEM_ERROR fails the step."""

    SUCCESS = 200
    ERROR = 400
    SYSTEM_ERROR = 500


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
        """The request's content."""
        return self._content

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SagaRequest)
            and self._target == other._target
            and self._content == other._content
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SagaRequest({self._target!r}, {self._content!r})"


class SagaResponse:
    """A participant's reply: ``response.content()`` is what it returned (a plain call).

    ``uuid`` names the saga execution the reply belongs to; ``idempotency_key`` the request it
    answers (replies from a broker carry it, so a duplicate is recognised and ignored).
    """

    __slots__ = ("_content", "_key", "_status", "_uuid")

    def __init__(
        self,
        content: Any = None,
        status: SagaResponseStatus | int = SagaResponseStatus.SUCCESS,
        uuid: UUID | str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        self._content = content
        self._status = SagaResponseStatus(status)
        self._uuid = UUID(str(uuid)) if uuid is not None else None
        self._key = idempotency_key

    def content(self) -> Any:
        """The reply's content."""
        return self._content

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
    def idempotency_key(self) -> str | None:
        """The key of the request this answers; ``None`` for a hand-made response."""
        return self._key

    @classmethod
    def from_message(cls, message: Message) -> SagaResponse:
        """Decode a reply message a participant sent (see :meth:`durably.broker.Broker.serve`)."""
        headers = message.headers
        try:
            uuid = UUID(headers.get(HEADER_SAGA, ""))
        except ValueError:
            uuid = None  # not a saga reply: no execution will be found for it
        return cls(
            codec.loads_value(message.body),
            int(headers.get(HEADER_STATUS, SagaResponseStatus.SUCCESS)),
            uuid,
            idempotency_key=headers.get(HEADER_KEY),
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SagaResponse)
            and self._content == other._content
            and self._status == other._status
            and self._uuid == other._uuid
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SagaResponse({self._content!r}, {self._status.name}, uuid={self._uuid})"
