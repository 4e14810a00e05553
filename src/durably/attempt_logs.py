"""Per-attempt logs (SPEC §8): the records a task emits through ``handle.logger`` — and, with
``Engine(capture_logs=True)``, through any logger on the task's thread or asyncio task while
it runs — kept with that attempt, bounded in size.

An attempt's records live in memory (:class:`AttemptLog`) until its outcome is written: the
runtime then :meth:`AttemptLogs.take` s them as JSON text for the statement that completes or
fails the task. A task that logs nothing costs nothing: no log object is made, and the
statement binds NULL.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_BYTES = 64 * 1024
MAX_RECORDS = 1000
# One record may take at most this much of the budget: a megabyte-long message still leaves
# room for the records after it.
MAX_MESSAGE = 16 * 1024

TRUNCATED = "… truncated ({} more records)"

# The attempt running in this thread or asyncio task, for the capture of every logger's
# records (``capture_logs``): set around the task's function only.
current: contextvars.ContextVar[AttemptLog | None] = contextvars.ContextVar(
    "durably_attempt_log", default=None
)

_FORMAT = logging.Formatter("%(message)s")  # the message with its traceback, if any


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored log record of an attempt (``Attempt.logs``)."""

    at: datetime
    level: str
    logger: str
    message: str


class AttemptLog:
    """The records of one attempt, in order, within ``max_bytes`` of messages and
    ``max_records`` records; those past either bound are counted, not kept."""

    def __init__(
        self,
        fields: dict[str, Any],
        *,
        max_bytes: int = MAX_BYTES,
        max_records: int = MAX_RECORDS,
    ) -> None:
        self.fields = fields
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.entries: list[list[Any]] = []
        self.size = 0
        self.dropped = 0
        self.closed = False
        self._last: logging.LogRecord | None = None
        self._logger: logging.Logger | None = None
        self._lock = threading.Lock()

    @property
    def logger(self) -> logging.Logger:
        """``handle.logger``: a logger of this attempt alone, named ``durably.task.<task>``.
        It keeps INFO and above (DEBUG too when that logger is set to DEBUG), and passes each
        record on to ``logging.getLogger("durably.task.<task>")`` as if logged there, with
        the attempt's fields on it."""
        if self._logger is None:
            parent = logging.getLogger(f"durably.task.{self.fields['task']}")
            own = logging.Logger(parent.name, min(logging.INFO, parent.getEffectiveLevel()))
            own.propagate = False  # _Own hands records on, under the parent's own level
            own.parent = parent
            own.addHandler(_Own(self, parent))
            self._logger = own
        return self._logger

    def emit(self, record: logging.LogRecord) -> None:
        if record is self._last:
            return  # one record seen twice: handle.logger's, then the capture's
        self._last = record
        self.keep(record)

    def keep(self, record: logging.LogRecord) -> None:
        if self.closed:
            return  # the outcome was written already (a thread outliving its timeout)
        try:
            message = _FORMAT.format(record)
        except Exception:  # a bad %-format in someone's call: keep what can be said
            message = f"{record.msg!r} % {record.args!r}"
        message, size = _clean(message)
        with self._lock:
            if len(self.entries) >= self.max_records or self.size + size > self.max_bytes:
                self.dropped += 1
                return
            self.size += size
            self.entries.append([round(record.created, 6), record.levelname, record.name, message])

    def text(self) -> str | None:
        """The records as JSON text (None when there are none), closing the log."""
        self.closed = True
        if not self.entries and not self.dropped:
            return None
        entries = list(self.entries)
        if self.dropped:
            at = entries[-1][0] if entries else 0.0
            entries.append([at, "WARNING", "durably", TRUNCATED.format(self.dropped)])
        return json.dumps(entries, ensure_ascii=False)


class _Own(logging.Handler):
    """The handler of ``handle.logger``: the record gets the attempt's fields, is kept, and
    goes on to the logger the application configures."""

    def __init__(self, log: AttemptLog, parent: logging.Logger) -> None:
        super().__init__()
        self.log = log
        self.parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        for name, value in self.log.fields.items():
            record.__dict__.setdefault(name, value)
        self.log.emit(record)
        if self.parent.isEnabledFor(record.levelno):
            self.parent.handle(record)


def _clean(message: str) -> tuple[str, int]:
    """The message as storable text (a lone surrogate spelled out as ``\\udcxx``, so that no
    encoder refuses it), cut to :data:`MAX_MESSAGE` bytes, and its size in bytes."""
    if message.isascii():
        if len(message) <= MAX_MESSAGE:
            return message, len(message)
        encoded = message.encode()
    else:
        encoded = message.encode("utf-8", "backslashreplace")
    if len(encoded) <= MAX_MESSAGE:
        return encoded.decode(), len(encoded)
    cut = encoded[:MAX_MESSAGE].decode("utf-8", "ignore")
    note = f" … ({len(encoded) - len(cut.encode())} bytes cut)"
    return cut + note, len(cut.encode()) + len(note.encode())


def entries_of(text: str | None) -> tuple[LogEntry, ...]:
    """Stored JSON text back as entries (empty for NULL or unreadable text)."""
    if not text:
        return ()
    try:
        rows = json.loads(text)
        return tuple(
            LogEntry(datetime.fromtimestamp(at, UTC), str(level), str(name), str(message))
            for at, level, name, message in rows
        )
    except (ValueError, TypeError):
        return (LogEntry(datetime.fromtimestamp(0, UTC), "ERROR", "durably", "unreadable logs"),)


class AttemptLogs:
    """The logs of the attempts running in this process, by (task id, attempt), until their
    outcome takes them."""

    # The last texts taken, by attempt: an outcome whose transaction failed is written again
    # (a worker keeps it for its next transaction), and its logs must go with it again.
    KEPT = 128  # at most 8 MB (MAX_BYTES each)

    def __init__(self, *, capture: bool = False) -> None:
        self.capture = capture
        self._open: dict[tuple[str, int], AttemptLog] = {}
        self._taken: OrderedDict[tuple[str, int], str] = OrderedDict()

    def begin(self, task_id: str, attempt: int) -> None:
        """An attempt starts: nothing logged or taken before under its number is its (after
        ``retry()`` the attempts of a task are numbered from 1 again)."""
        if self._open:
            self._open.pop((task_id, attempt), None)
        if self._taken:
            self._taken.pop((task_id, attempt), None)

    def open(self, task_id: str, fields: dict[str, Any]) -> AttemptLog:
        key = (task_id, fields["attempt"])
        log = self._open.get(key)
        if log is None:
            log = self._open[key] = AttemptLog(fields)
        return log

    def take(self, task_id: str, attempt: int) -> str | None:
        """The attempt's records as JSON text, or None; the attempt logs nothing more. Taken
        again (its outcome written again), the same text."""
        key = (task_id, attempt)
        log = self._open.pop(key, None) if self._open else None
        if log is None:
            return self._taken.get(key) if self._taken else None
        text = log.text()
        if text is not None:
            self._taken[key] = text
            while len(self._taken) > self.KEPT:
                self._taken.popitem(last=False)
        return text


class CaptureHandler(logging.Handler):
    """On the root logger while an engine captures logs: hands each record to the attempt
    running in the thread or asyncio task that emitted it, if any."""

    def emit(self, record: logging.LogRecord) -> None:
        log = current.get()
        if log is not None:
            log.emit(record)


_capture = CaptureHandler()
_capturing = 0
_capture_lock = threading.Lock()


def capturing(capture_logs: bool) -> bool:
    """``Engine(capture_logs=...)``, checked; when True the root logger starts handing
    records to the attempts running (until the engine closes)."""
    if not isinstance(capture_logs, bool):
        raise TypeError(f"capture_logs must be a bool, not {type(capture_logs).__name__}")
    if capture_logs:
        start_capture()
    return capture_logs


def start_capture() -> None:
    global _capturing
    with _capture_lock:
        _capturing += 1
        if _capturing == 1:
            logging.getLogger().addHandler(_capture)


def stop_capture() -> None:
    global _capturing
    with _capture_lock:
        _capturing = max(0, _capturing - 1)
        if _capturing == 0:
            logging.getLogger().removeHandler(_capture)
