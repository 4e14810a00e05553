"""SQLite durability settings (issue 2): WAL always, NORMAL by default, FULL on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from durably import Engine, StoreError
from durably.backends import open_store


def pragmas(store: object) -> tuple[str, int]:
    conn = store._conn  # type: ignore[attr-defined]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
    return journal, synchronous


def test_default_survives_a_killed_process(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db") as store:
        assert pragmas(store) == ("wal", 1)  # WAL + NORMAL


def test_synchronous_full_from_the_url(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db?synchronous=full") as store:
        assert pragmas(store) == ("wal", 2)  # WAL + FULL: each commit fsynced


def test_synchronous_full_as_an_engine_option(tmp_path: Path) -> None:
    with Engine(f"sqlite:///{tmp_path}/a.db", synchronous="full") as engine:
        assert pragmas(engine.store) == ("wal", 2)


def test_memory_database(tmp_path: Path) -> None:
    with open_store("sqlite://:memory:") as store:
        assert store.schema_version() >= 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///{tmp}/a.db?synchronous=sometimes", "synchronous must be one of"),
        ("sqlite:///{tmp}/a.db?colour=blue", "unknown SQLite option"),
        ("sqlite:///{tmp}/a.db?schema=tenant", "SQLite has none"),
        ("sqlite://", "names no file"),
        ("sqlite:///{tmp}/missing-dir/a.db", "cannot open SQLite database"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url.format(tmp=tmp_path))


@pytest.mark.parametrize(
    "options",
    [{"lease": 0}, {"lease": "10"}, {"concurrency": 0}, {"concurrency": 1.5}],
)
def test_bad_engine_options(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        Engine(f"sqlite:///{tmp_path}/a.db", **options)  # type: ignore[arg-type]
