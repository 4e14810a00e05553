"""Named SQL queries, loaded from the ``.sql`` files beside this module.

A file holds blocks that each start with ``-- name: NAME``; the lines up to the next block are
the query. ``queries.sql`` and ``saga.sql`` are shared by every dialect; ``sqlite.sql`` and
``postgres.sql`` replace a shared block of the same name where a dialect needs its own SQL.
Parameters are written ``:name`` everywhere; the PostgreSQL store rewrites them for psycopg.

The files are read through the package's loader (``pkgutil.get_data``), which reads them from
a zip as well as from the file system; ``importlib.resources`` would too, but importing it
costs about 10 ms (pathlib, zipfile, tempfile), more than anything else in opening a store.
"""

from __future__ import annotations

import functools
import os
import pkgutil
import re

from ..exceptions import MigrationError

_BLOCK = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
SHARED_FILES = ("queries.sql", "saga.sql")
DIALECTS = ("sqlite", "postgres")
# Writes spanning several tables as one statement, defined only by the dialects that can
# (PostgreSQL's data-modifying WITH) and sent only where ``Tx.combined`` says so; the other
# dialects run their parts (named in each block's comment) one by one.
COMBINED = frozenset(
    {
        "start_execution",
        "complete_with_output",
        "complete_lone_tasks",
        "finish_with_fallback",
    }
)


def parse(text: str) -> dict[str, str]:
    """Split a ``.sql`` file into ``{name: query}``; a duplicate name is an error."""
    parts = _BLOCK.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def _read(name: str) -> str:
    """A file of this package, by its path inside it (``/``-separated)."""
    data = pkgutil.get_data(__name__, name)
    if data is None:  # pragma: no cover - a loader that cannot read its package's files
        raise MigrationError(f"cannot read durably's SQL file {name!r}")
    return data.decode("utf-8")


def _names(folder: str) -> list[str]:
    """The names of the files in a folder of this package."""
    path = os.path.join(os.path.dirname(__file__), folder)
    if os.path.isdir(path):
        return os.listdir(path)
    from importlib import resources  # not on the file system (a zip): any loader's way

    return [entry.name for entry in resources.files(__name__).joinpath(folder).iterdir()]


@functools.cache
def queries(dialect: str) -> dict[str, str]:
    """Every named query for ``dialect``: the shared ones, then the dialect's overrides."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    merged: dict[str, str] = {}
    for file in SHARED_FILES:
        for name, query in parse(_read(file)).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in two shared files")
            merged[name] = query
    merged.update(parse(_read(f"{dialect}.sql")))
    return merged


def schema(dialect: str) -> str:
    """The current schema, as a fresh database gets it."""
    return _read(f"schema_{dialect}.sql")


def migrations(dialect: str) -> list[tuple[int, str]]:
    """``[(version, sql), ...]`` in order, from ``migrations/<dialect>/NNNN_name.sql``."""
    folder = f"migrations/{dialect}"
    found = []
    for name in _names(folder):
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), _read(f"{folder}/{name}")))
    return sorted(found)


def plan(dialect: str, current: int) -> tuple[list[str], list[int]]:
    """What brings a database at schema version ``current`` up to date: the scripts to run
    and the versions to record. A fresh database (version 0) gets the current schema in one
    go, as procrastinate does; a newer database than this code is an error."""
    steps = migrations(dialect)
    latest = steps[-1][0] if steps else 0
    if current > latest:
        raise MigrationError(
            f"the database is at schema version {current}, newer than this durably ({latest})"
        )
    if current == latest:
        return [], []
    if current == 0:
        return [schema(dialect)], [version for version, _ in steps]
    pending = [(version, script) for version, script in steps if version > current]
    return [script for _, script in pending], [version for version, _ in pending]
