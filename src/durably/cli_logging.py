"""Where ``durably worker`` writes durably's log records: stderr, one line each — words, or
with ``--json`` one JSON object carrying the SPEC §8 fields (``execution_id``, ``workflow``,
``task``, ``attempt``, ``action``) and any other ``extra`` of the record."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

FIELDS = ("execution_id", "workflow", "task", "attempt", "action")
# What every LogRecord has: anything else on one came from ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "OFF")


class JsonLines(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, the five fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({name: record.__dict__.get(name) for name in FIELDS})
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in line:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


@contextlib.contextmanager
def worker_logs(level: str, as_json: bool) -> Iterator[None]:
    """While the worker runs: durably's records at ``level`` and above go to stderr (the
    records say everything in words, so the text form needs no fields)."""
    if level == "OFF" or logging.getLogger().handlers:
        yield  # off, or the application configured logging: its handlers get the records
        return
    root = logging.getLogger("durably")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    previous = root.level
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
