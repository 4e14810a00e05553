"""``durably list`` in a real process, on SQLite: what it prints (the same text as before its
commands were imported lazily), and that it loads only what listing needs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durably import Engine

SRC = Path(__file__).resolve().parents[1] / "src"

CONTEXT = "INSERT INTO contexts (id, value, created_at, updated_at) VALUES (?, '{}', ?, ?)"
EXECUTION = (
    "INSERT INTO pipeline_executions (id, pipeline_name, pipeline_version, status, context_id,"
    " created_at, updated_at, started_at, completed_at, error_details, idempotency_key,"
    " parent_execution_id, parent_task) VALUES (?, ?, 'v1', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SAGA = (
    "INSERT INTO saga_executions (id, saga_name, fingerprint, status, context_id, state,"
    " error_details, created_at, updated_at) VALUES (?, ?, 'f1', ?, ?, ?, ?, ?, ?)"
)
DAY = "2024-05-01T10:"
C = "0c000000-0000-4000-8000-000000000000"


def ids(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


# (id, workflow, status, created, completed, error, key, parent, parent task)
EXECUTIONS = [
    (ids(1), "orders", "completed", "00:00.000000", "00:01.250000", None, None, None, None),
    (ids(2), "orders", "failed", "01:00.000000", "01:00.500000", "ValueError: declined", None,
     None, None),
    (ids(3), "reports", "running", "02:00.000000", None, None, None, None, None),
    (ids(4), "reports", "pending", "03:00.000000", None, None, "r-1", ids(3), "fan_out"),
    (ids(5), "orders", "cancelled", "03:30.000000", "03:31.000000", None, None, None, None),
]  # fmt: skip
# (id, saga, status, created, updated, error)
SAGAS = [
    (ids(6), "billing", "errored", "04:00.000000", "04:02.000000", "refused"),
    (ids(7), "billing", "finished", "00:30.000000", "00:30.040000", None),
]


def build(url: str) -> None:
    """A database with both kinds of execution in every column's cases, written by SQL so
    that ids and times are fixed."""
    Engine(url).close()  # the schema
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    now = f"{DAY}00:00.000000+00:00"
    conn.execute(CONTEXT, (C, now, now))
    for id_, wf, status, created, done, error, key, parent, task in EXECUTIONS:
        at = f"{DAY}{created}+00:00"
        end = f"{DAY}{done}+00:00" if done else None
        row = (id_, wf, status, C, at, end or at, at, end, error, key, parent, task)
        conn.execute(EXECUTION, row)
    for id_, name, status, created, updated, error in SAGAS:
        conn.execute(CONTEXT, (id_, now, now))
        at, end = f"{DAY}{created}+00:00", f"{DAY}{updated}+00:00"
        conn.execute(SAGA, (id_, name, status, id_, '{"steps": []}', error, at, end))
    conn.commit()
    conn.close()


def durably(*args: str, columns: int = 120) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": str(columns), "TZ": "UTC"}
    env.pop("DURABLY_DATABASE_URL", None)
    argv = [sys.executable, "-m", "durably", *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'list.db'}"
    build(url)
    return url


WIDE = """\
id                                     kind       workflow   status      created            took   error
───────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
00000000-0000-4000-8000-000000000006   saga       billing    errored     05-01 10:04:00   2.00 s   refused
00000000-0000-4000-8000-000000000005   workflow   orders     cancelled   05-01 10:03:30   1.00 s
00000000-0000-4000-8000-000000000004   workflow   reports    pending     05-01 10:03:00
00000000-0000-4000-8000-000000000003   workflow   reports    running     05-01 10:02:00
00000000-0000-4000-8000-000000000002   workflow   orders     failed      05-01 10:01:00   500 ms   ValueError: declined
00000000-0000-4000-8000-000000000007   saga       billing    finished    05-01 10:00:30    40 ms
00000000-0000-4000-8000-000000000001   workflow   orders     completed   05-01 10:00:00   1.25 s
"""  # noqa: E501

NARROW = """\
id                                     workflow   status
───────────────────────────────────────────────────────────
00000000-0000-4000-8000-000000000006   billing    errored
00000000-0000-4000-8000-000000000005   orders     cancelled
00000000-0000-4000-8000-000000000004   reports    pending
00000000-0000-4000-8000-000000000003   reports    running
00000000-0000-4000-8000-000000000002   orders     failed
00000000-0000-4000-8000-000000000007   billing    finished
00000000-0000-4000-8000-000000000001   orders     completed
"""

FILTERED = """\
id                                     workflow   status      created            took   error
────────────────────────────────────────────────────────────────────────────────────────────────────────────
00000000-0000-4000-8000-000000000005   orders     cancelled   05-01 10:03:30   1.00 s
00000000-0000-4000-8000-000000000002   orders     failed      05-01 10:01:00   500 ms   ValueError: declined
"""  # noqa: E501

JSON: list[dict[str, Any]] = [
    {
        "id": "00000000-0000-4000-8000-000000000006",
        "kind": "saga",
        "workflow": "billing",
        "status": "errored",
        "fingerprint": "f1",
        "created_at": "2024-05-01T10:04:00+00:00",
        "completed_at": "2024-05-01T10:04:02+00:00",
        "error": "refused",
    },
    {
        "id": "00000000-0000-4000-8000-000000000005",
        "kind": "workflow",
        "workflow": "orders",
        "status": "cancelled",
        "version": "v1",
        "created_at": "2024-05-01T10:03:30+00:00",
        "completed_at": "2024-05-01T10:03:31+00:00",
        "error": None,
        "parent_id": None,
        "parent_task": None,
    },
    {
        "id": "00000000-0000-4000-8000-000000000004",
        "kind": "workflow",
        "workflow": "reports",
        "status": "pending",
        "version": "v1",
        "created_at": "2024-05-01T10:03:00+00:00",
        "completed_at": None,
        "error": None,
        "parent_id": "00000000-0000-4000-8000-000000000003",
        "parent_task": "fan_out",
    },
    {
        "id": "00000000-0000-4000-8000-000000000003",
        "kind": "workflow",
        "workflow": "reports",
        "status": "running",
        "version": "v1",
        "created_at": "2024-05-01T10:02:00+00:00",
        "completed_at": None,
        "error": None,
        "parent_id": None,
        "parent_task": None,
    },
    {
        "id": "00000000-0000-4000-8000-000000000002",
        "kind": "workflow",
        "workflow": "orders",
        "status": "failed",
        "version": "v1",
        "created_at": "2024-05-01T10:01:00+00:00",
        "completed_at": "2024-05-01T10:01:00.500000+00:00",
        "error": "ValueError: declined",
        "parent_id": None,
        "parent_task": None,
    },
    {
        "id": "00000000-0000-4000-8000-000000000007",
        "kind": "saga",
        "workflow": "billing",
        "status": "finished",
        "fingerprint": "f1",
        "created_at": "2024-05-01T10:00:30+00:00",
        "completed_at": "2024-05-01T10:00:30.040000+00:00",
        "error": None,
    },
    {
        "id": "00000000-0000-4000-8000-000000000001",
        "kind": "workflow",
        "workflow": "orders",
        "status": "completed",
        "version": "v1",
        "created_at": "2024-05-01T10:00:00+00:00",
        "completed_at": "2024-05-01T10:00:01.250000+00:00",
        "error": None,
        "parent_id": None,
        "parent_task": None,
    },
]


def table(text: str) -> str:
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1, text  # rich pads every row to the width
    return "\n".join(line.rstrip() for line in lines) + "\n"


def test_list_prints_the_table_it_printed_before(db: str) -> None:
    # The expected text is what durably list printed before its imports were made lazy.
    assert table(durably("list", "--db", db)) == WIDE
    assert table(durably("list", "--db", db, columns=60)) == NARROW
    assert table(durably("list", "--db", db, "--workflow", "orders", "--limit", "2")) == FILTERED
    assert json.loads(durably("list", "--db", db, "--json")) == JSON


def test_list_loads_only_what_listing_needs(db: str) -> None:
    # The commands' modules are imported when they run: listing needs the engine's read side
    # and rich, not asyncio, what runs executions, the saga runtime, the brokers or the web.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['durably', 'list', '--db', {db!r}]\n"
        "try:\n"
        "    runpy.run_module('durably', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stderr.split())
    assert "durably.cli_inspect" in loaded  # the probe ran the command
    unwanted = {
        "asyncio", "durably.worker", "durably.runner", "durably.repair", "durably.scheduler",
        "durably.broker", "durably.saga", "durably.saga_execution",
        "durably.saga_manager", "durably.saga_outbox", "durably.cli_worker", "durably.cli_run",
        "durably.cli_dashboard", "durably.cli_stranded", "durably.dashboard", "psycopg",
        "starlette", "jinja2", "uvicorn", "croniter", "prometheus_client", "opentelemetry",
        "aio_pika", "nats",
    }  # fmt: skip
    assert not unwanted & loaded, sorted(unwanted & loaded)
