"""Which store a database URL names, opened and migrated: the one place that knows every
backend (so the stores themselves import only the interface)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .exceptions import StoreError
from .store import Store

DEFAULT_URL = "sqlite:///durably.db"
URL_ENV = "DURABLY_DATABASE_URL"


def resolve_url(url: str | None) -> str:
    """The URL given, else ``$DURABLY_DATABASE_URL``, else ``./durably.db``."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def open_store(url: str | None = None, *, migrate: bool = True, **options: Any) -> Store:
    """Open (and, unless ``migrate=False``, migrate) the store a URL names:
    ``sqlite:///path.db``, ``sqlite://:memory:``, ``postgresql://user@host/db``. Query
    parameters and ``options`` tune it (``synchronous=full`` on SQLite, ``schema=tenant`` on
    PostgreSQL)."""
    url = resolve_url(url)
    if not isinstance(url, str):
        raise StoreError(f"database URL must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    merged = {**query, **{k: v for k, v in options.items() if v is not None}}
    store: Store
    if parts.scheme == "sqlite":
        from .sqlite_store import SQLiteStore

        if "schema" in merged:
            raise StoreError("schema= selects a PostgreSQL schema; SQLite has none")

        path = _sqlite_path(url, parts.netloc, parts.path)
        try:
            store = SQLiteStore(path, **merged)
        except TypeError as exc:
            raise StoreError(f"unknown SQLite option in {url!r}: {exc}") from exc
    elif parts.scheme in ("postgresql", "postgres"):
        from .postgres_store import PostgresStore

        store = PostgresStore(url.split("?", 1)[0], **merged)
    else:
        raise StoreError(
            f"unsupported database URL {url!r}: use sqlite:///path.db, sqlite://:memory: "
            "or postgresql://user@host/dbname"
        )
    if not migrate:
        return store
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


SQLITE_FORMS = "sqlite:///relative.db, sqlite:////absolute/path.db or sqlite://:memory:"


def _sqlite_path(url: str, netloc: str, path: str) -> str:
    """The file a SQLite URL names, as SQLAlchemy spells them. Anything else is an error, not
    a guess: ``sqlite:/x`` or ``sqlite://host/x`` would otherwise create a stray file."""
    if not url.partition(":")[2].startswith("//") or netloc not in ("", ":memory:"):
        raise StoreError(f"invalid SQLite URL {url!r}: use {SQLITE_FORMS}")
    if netloc == ":memory:":
        if path:
            raise StoreError(f"invalid SQLite URL {url!r}: use {SQLITE_FORMS}")
        return ":memory:"
    if not path.removeprefix("/"):
        raise StoreError(f"database URL {url!r} names no file: use {SQLITE_FORMS}")
    return path.removeprefix("/")
