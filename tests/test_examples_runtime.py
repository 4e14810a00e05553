"""The waits and fan-out examples run as modules, as their docstrings say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


@pytest.mark.slow
def test_the_approval_example_waits_for_its_event_and_publishes() -> None:
    done = run_example("examples.approval_workflow")
    assert done.returncode == 0, done.stderr
    assert "approve is waiting for its event" in done.stdout
    # The second approval carried the same key: it was ignored.
    assert "completed: published, approved by alice" in done.stdout


@pytest.mark.slow
def test_the_reservation_example_reserves_every_line_in_order() -> None:
    done = run_example("examples.reservation_workflow")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines() if line.startswith("  R-")]
    assert lines == [f"R-{i}-SKU-{i + 1}x{i + 1}" for i in range(7)]


@pytest.mark.slow
def test_the_parent_child_example_ships_one_and_refunds_the_other() -> None:
    done = run_example("examples.parent_child_workflow")
    assert done.returncode == 0, done.stderr
    assert ": completed: captured 42, shipped to PT" in done.stdout
    assert "payment ran as execution" in done.stdout
    assert "compensation: refunded 42 for O-2" in done.stdout
