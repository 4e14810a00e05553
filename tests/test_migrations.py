"""Schema files, migrations and the SQL loader: every migration applied equals the schema."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from durably import sql
from durably.backends import open_store
from durably.exceptions import MigrationError
from durably.store import Store

# -- the .sql parser ---------------------------------------------------------------------------


def test_parse_splits_named_blocks() -> None:
    text = """-- A header comment before the first block is not a query.

-- name: first
-- what it does, stripped
SELECT 1
FROM t;\x20\x20

--   name:   second
  -- indented comment, stripped too
UPDATE t SET a = :a WHERE b = 'x -- kept';
"""
    assert sql.parse(text) == {
        "first": "SELECT 1\nFROM t",
        "second": "UPDATE t SET a = :a WHERE b = 'x -- kept'",
    }


def test_parse_rejects_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="'twice' is defined twice"):
        sql.parse("-- name: twice\nSELECT 1;\n-- name: twice\nSELECT 2;\n")


def test_parse_of_no_block_is_empty() -> None:
    assert sql.parse("-- only a comment\n") == {}


def _file_queries(name: str) -> dict[str, str]:
    return sql.parse(resources.files("durably.sql").joinpath(name).read_text(encoding="utf-8"))


def test_every_dialect_has_the_same_query_names() -> None:
    """But the combined writes (sql.COMBINED), which only PostgreSQL defines."""
    assert set(sql.queries("postgres")) >= sql.COMBINED
    names = {dialect: set(sql.queries(dialect)) - sql.COMBINED for dialect in sql.DIALECTS}
    first, *others = sql.DIALECTS
    for dialect in others:
        assert names[dialect] == names[first], (
            f"{dialect} and {first} differ: "
            f"only {dialect}: {sorted(names[dialect] - names[first])}, "
            f"only {first}: {sorted(names[first] - names[dialect])}"
        )


def test_dialect_files_only_override_shared_queries() -> None:
    shared: set[str] = set()
    for file in sql.SHARED_FILES:
        shared |= set(_file_queries(file))
    for dialect in sql.DIALECTS:
        extra = set(_file_queries(f"{dialect}.sql")) - shared - sql.COMBINED
        assert not extra, f"{dialect}.sql defines queries with no shared version: {sorted(extra)}"


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    for dialect in sql.DIALECTS:
        versions = [version for version, _ in sql.migrations(dialect)]
        assert versions == list(range(1, len(versions) + 1)), dialect
    assert [v for v, _ in sql.migrations("sqlite")] == [v for v, _ in sql.migrations("postgres")]


# -- schema description, per backend -----------------------------------------------------------


def _normalized(text: str | None) -> str | None:
    return None if text is None else re.sub(r"\s+", " ", text).strip()


def sqlite_schema(conn: sqlite3.Connection) -> dict[str, Any]:
    """Tables by their columns, keys and indexes (column order aside), and the normalized
    sqlite_master entries of indexes, views and triggers."""
    tables: dict[str, Any] = {}
    for (table,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ):
        indexes = set()
        for _, name, unique, origin, partial in conn.execute(
            'SELECT seq, name, "unique", origin, partial FROM pragma_index_list(?)', (table,)
        ):
            columns = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,)
                )
            )
            # Automatic indexes (UNIQUE, PRIMARY KEY) are named by position: use the columns.
            label = None if name.startswith("sqlite_autoindex") else name
            indexes.add((label, unique, origin, partial, columns))
        tables[table] = {
            "columns": sorted(
                conn.execute(
                    'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(?)',
                    (table,),
                )
            ),
            "foreign_keys": sorted(
                conn.execute(
                    'SELECT "table", "from", "to", on_update, on_delete, "match" '
                    "FROM pragma_foreign_key_list(?)",
                    (table,),
                )
            ),
            "indexes": sorted(indexes, key=repr),
        }
    others = sorted(
        (kind, name, table, _normalized(text))
        for kind, name, table, text in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type != 'table'"
        )
    )
    return {"tables": tables, "others": others}


def postgres_schema(conn: Any) -> dict[str, Any]:
    """Columns (information_schema), indexes (pg_indexes) and constraints of the schema."""
    columns = conn.execute(
        """
        SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default,
               character_maximum_length, numeric_precision
        FROM information_schema.columns WHERE table_schema = current_schema()
        ORDER BY table_name, column_name
        """
    ).fetchall()
    indexes = conn.execute(
        """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = current_schema() ORDER BY tablename, indexname
        """
    ).fetchall()
    constraints = conn.execute(
        """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE k.connamespace = current_schema()::regnamespace
        ORDER BY c.relname, k.conname
        """
    ).fetchall()
    return {"columns": columns, "indexes": indexes, "constraints": constraints}


# -- every migration applied equals the schema file --------------------------------------------


def test_migrations_equal_schema_on_sqlite(tmp_path: Path) -> None:
    from durably.sqlite_store import SQLiteStore, apply_migrations_only

    with SQLiteStore(str(tmp_path / "schema.db")) as store:
        assert store.migrate() == len(sql.migrations("sqlite"))
    with sqlite3.connect(tmp_path / "schema.db") as conn:
        from_schema = sqlite_schema(conn)
    conn.close()
    migrated = sqlite3.connect(tmp_path / "migrations.db", isolation_level=None)
    try:
        migrated.execute("BEGIN")
        apply_migrations_only(migrated)
        migrated.execute("COMMIT")
        from_migrations = sqlite_schema(migrated)
    finally:
        migrated.close()
    assert from_schema["tables"], "the schema file created no table"
    assert from_migrations == from_schema


@pytest.mark.postgres
def test_migrations_equal_schema_on_postgres(make_pg_database: Callable[..., str]) -> None:
    import psycopg

    from durably.postgres_store import PostgresStore, apply_migrations_only

    schema_url, migrations_url = make_pg_database(migrated=False), make_pg_database(False)
    with PostgresStore(schema_url) as store:
        assert store.migrate() == len(sql.migrations("postgres"))
    with psycopg.connect(schema_url) as conn:
        from_schema = postgres_schema(conn)
    with psycopg.connect(migrations_url) as conn:
        with conn.transaction():
            apply_migrations_only(conn)
        from_migrations = postgres_schema(conn)
    assert from_schema["columns"], "the schema file created no table"
    for part in ("columns", "indexes", "constraints"):
        assert from_migrations[part] == from_schema[part], part


@pytest.mark.postgres
def test_postgres_schema_mirrors_sqlite(tmp_path: Path, postgres_url: str) -> None:
    """The same tables, columns, nullability, keys and indexes on both (types differ)."""
    import psycopg

    with open_store(f"sqlite:///{tmp_path}/mirror.db"):
        pass
    with sqlite3.connect(tmp_path / "mirror.db") as conn:
        lite = sqlite_schema(conn)["tables"]
    conn.close()
    with psycopg.connect(postgres_url) as pg:
        described = postgres_schema(pg)
        uniques = pg.execute(
            """
            SELECT c.relname, k.contype,
                   ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(n, i)
                         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                         ORDER BY u.i)
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            WHERE k.connamespace = current_schema()::regnamespace AND k.contype IN ('u', 'p')
            """
        ).fetchall()
        foreign = pg.execute(
            """
            SELECT c.relname, r.relname, a.attname, k.confdeltype
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            JOIN pg_class r ON r.oid = k.confrelid
            JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
            WHERE k.connamespace = current_schema()::regnamespace AND k.contype = 'f'
            """
        ).fetchall()

    def columns_of_sqlite() -> set[tuple[str, str, bool]]:
        return {
            (table, name, bool(notnull or pk))
            for table, info in lite.items()
            for name, _type, notnull, _default, pk in info["columns"]
        }

    pg_columns = {(t, c, nullable == "NO") for t, c, _, _, nullable, *_ in described["columns"]}
    assert pg_columns == columns_of_sqlite()

    lite_keys = {
        (table, "p" if origin == "pk" else "u", columns)
        for table, info in lite.items()
        for _label, _unique, origin, _partial, columns in info["indexes"]
        if origin in ("pk", "u")
    }
    for table, info in lite.items():
        pk = tuple(name for name, *_, pk in sorted(info["columns"], key=lambda c: c[4]) if pk)
        # A single-column INTEGER/TEXT primary key has no automatic index in every case.
        if pk and not any(k[0] == table and k[1] == "p" for k in lite_keys):
            lite_keys.add((table, "p", pk))
    assert {(t, kind, tuple(cols)) for t, kind, cols in uniques} == lite_keys

    actions = {"a": "NO ACTION", "c": "CASCADE", "r": "RESTRICT", "n": "SET NULL"}
    lite_foreign = {
        (table, target, column, on_delete)
        for table, info in lite.items()
        for target, column, _to, _on_update, on_delete, _match in info["foreign_keys"]
    }
    assert {(t, r, c, actions[d]) for t, r, c, d in foreign} == lite_foreign

    lite_indexes = {
        (table, label)
        for table, info in lite.items()
        for label, _u, origin, *_ in info["indexes"]
        if origin == "c"
    }
    pg_indexes = {(t, name) for t, name, _ in described["indexes"]} - {
        (t, name) for t, name, *_ in described["constraints"]
    }
    assert pg_indexes == lite_indexes


# -- migrate() ---------------------------------------------------------------------------------


def test_migrate_records_every_version_on_a_fresh_database(empty_store_url: str) -> None:
    with open_store(empty_store_url) as store:
        assert store.schema_version() == sql.migrations(store.dialect)[-1][0]


def test_newer_database_is_refused(store_url: str, backend: str) -> None:
    if backend == "sqlite":
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO schema_version VALUES (999, 'later')")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(store_url) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (999)")
    with _unmigrated(store_url) as store, pytest.raises(MigrationError, match="999"):
        store.migrate()


def _unmigrated(url: str) -> Store:
    if url.startswith("sqlite:"):
        from durably.sqlite_store import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    from durably.postgres_store import PostgresStore

    return PostgresStore(url)


def test_0012_keeps_every_output_while_rebuilding_its_table(tmp_path: Path) -> None:
    """SQLite drops a foreign key by rebuilding the table: the outputs saved before the
    upgrade are still there, and still read, after it."""
    from durably.sqlite_store import SQLiteStore
    from durably.store import iter_statements

    path = tmp_path / "upgrade.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    for version, script in sql.migrations("sqlite"):
        if version < 12:
            for statement in iter_statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, 'then')", (version,))
    now = "2026-01-01T00:00:00+00:00"
    conn.execute("INSERT INTO contexts VALUES ('c0', '{\"n\": 1}', ?, ?)", (now, now))
    conn.execute("INSERT INTO contexts VALUES ('c1', '{\"n\": 2}', ?, ?)", (now, now))
    conn.execute(
        "INSERT INTO pipeline_executions (id, pipeline_name, pipeline_version, status, "
        "context_id, created_at, updated_at) VALUES ('e', 'wf', 'v', 'completed', 'c0', ?, ?)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO task_executions (id, pipeline_execution_id, task_name, position, status, "
        "created_at, updated_at) VALUES ('t', 'e', 'a', 0, 'completed', ?, ?)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO task_execution_metadata VALUES ('m', 't', 'e', 'a', 'c1', ?, ?)", (now, now)
    )
    conn.execute("COMMIT")
    conn.close()
    with SQLiteStore(str(path)) as store:
        assert store.migrate() == len(sql.migrations("sqlite")) - 11
        with store.read() as tx:
            row = tx.fetch_one("get_task_output", {"id": "e", "name": "a"})
    assert row is not None
    assert row["value"] == '{"n": 2}'
    conn = sqlite3.connect(path)
    try:
        keys = conn.execute(
            "SELECT \"table\" FROM pragma_foreign_key_list('task_execution_metadata')"
        )
        assert [table for (table,) in keys] == ["pipeline_executions"]
    finally:
        conn.close()
