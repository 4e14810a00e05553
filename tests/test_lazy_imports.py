"""What importing durably loads, in a fresh interpreter: ``import durably`` loads none of its
modules (every public name is imported on first use), and the common first imports load none
of the heavy or optional dependencies they do not use (issue 14: `durably list` under 250 ms).
``durably list`` itself is checked in ``test_cli_list.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The optional extras' libraries, the CLI's, and what durably imports only when it is used.
EXTRAS = ("psycopg", "aio_pika", "nats", "jinja2", "starlette", "uvicorn", "croniter")
TELEMETRY = ("prometheus_client", "opentelemetry")
CLI = ("rich", "click")
RUNTIME = ("asyncio", "durably.broker", "durably.nats_broker", "durably.rabbitmq_broker")
SAGAS = ("durably.saga", "durably.saga_execution", "durably.saga_manager", "durably.saga_outbox")
HEAVY = (*EXTRAS, *TELEMETRY, *CLI, *RUNTIME, *SAGAS)


def loaded_by(statement: str) -> set[str]:
    """The top-level packages and durably modules in sys.modules after ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))\n"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    names = set(done.stdout.split())
    return names | {name.partition(".")[0] for name in names}


def test_import_durably_loads_nothing_else() -> None:
    loaded = loaded_by("import durably")
    assert {name for name in loaded if name.startswith("durably.")} == set()
    assert not set(HEAVY) & loaded, sorted(set(HEAVY) & loaded)
    assert "typing" not in loaded  # not even typing: the TYPE_CHECKING imports are skipped


@pytest.mark.parametrize(
    "statement",
    [
        # A module defining workflows, as a worker or `durably run -m` imports it.
        "from durably import Context, NonRetryable, RetryPolicy, Workflow, when",
        # A program that runs them.
        "from durably import Engine, Worker",
    ],
)
def test_defining_and_running_workflows_loads_no_saga_cli_or_extra(statement: str) -> None:
    loaded = loaded_by(statement)
    assert not set(HEAVY) & loaded, sorted(set(HEAVY) & loaded)


def test_a_saga_loads_its_runtime_when_asked_for() -> None:
    loaded = loaded_by("from durably import Saga, SagaManager")
    assert {"durably.saga", "durably.saga_manager", "asyncio"} <= loaded
    assert not set(EXTRAS + CLI) & loaded, sorted(set(EXTRAS + CLI) & loaded)
