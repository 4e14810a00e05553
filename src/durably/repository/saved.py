"""The context rows this process read or wrote lately, so that a task's output can be stored
as a delta against the row its input came from without reading that row again.

Rows never change once written (a saga's context rows are not kept here), so a cached row is
never wrong, only possibly no longer linked (a delta resting on it still reads back exactly),
or gone with a transaction that rolled back: the statements that use a row saved before check
that it exists, and store the full text instead when it does not (``insert_context_delta``,
``save_final_fallback`` and ``finish_execution``), or say so (``link_saved_output``).
Bounded by entries and by characters held; thread-safe (one Repository serves every thread
of a runtime).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from .deltas import SavedRow

INITIAL = ""  # the name under which an execution's initial context is linked here


class SavedContexts:
    def __init__(self, max_rows: int = 4096, max_chars: int = 32 * 1024 * 1024) -> None:
        self._rows: OrderedDict[str, SavedRow] = OrderedDict()
        # (execution id, task name or INITIAL) -> the row it is linked to
        self._links: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._chars = 0
        self._max_rows = max_rows
        self._max_chars = max_chars
        self._lock = threading.Lock()

    def keep(self, execution_id: str, links: Iterable[tuple[str, SavedRow]]) -> None:
        """Remember rows and what of the execution they are linked to (a task's output,
        or ``INITIAL``)."""
        with self._lock:
            for name, row in links:
                self._links[execution_id, name] = row.id
                self._links.move_to_end((execution_id, name))
                if row.id not in self._rows:
                    self._rows[row.id] = row
                    self._chars += len(row.text)
                self._rows.move_to_end(row.id)
            while self._rows and (
                len(self._rows) > self._max_rows or self._chars > self._max_chars
            ):
                _, old = self._rows.popitem(last=False)
                self._chars -= len(old.text)
            while len(self._links) > 4 * self._max_rows:
                self._links.popitem(last=False)

    def linked(self, execution_id: str, names: Sequence[str]) -> list[SavedRow]:
        """The rows kept for these names of the execution (none: its initial context),
        the last name first: the later dependency wins the merge, so its output is most
        often what the input was made of."""
        with self._lock:
            found = []
            for name in reversed(names or (INITIAL,)):
                row_id = self._links.get((execution_id, name))
                row = self._rows.get(row_id) if row_id is not None else None
                if row is not None:
                    found.append(row)
            return found
