"""Running an execution from the command line: its tasks shown live while they run (or
nothing shown, for ``--json``), until the execution is finished."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import UUID

from rich.console import Console

from .engine import Engine
from .execution_views import task_table
from .results import ExecutionResult
from .statuses import EXECUTION_TERMINAL

POLL_SECONDS = 0.1


def follow(
    engine: Engine,
    execution_id: UUID,
    work: Callable[[], object],
    out: Console,
    *,
    tolerate: Callable[[BaseException], bool] = lambda exc: False,
) -> ExecutionResult:
    """Run ``work`` on a thread while a live table shows the execution's tasks, polled from
    the database; return the result once the execution is terminal."""
    from rich.live import Live

    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="durably-cli-run", daemon=True)
    result = engine.get(execution_id)
    with Live(task_table(result, live=True), console=out, refresh_per_second=10) as live:
        thread.start()
        while True:
            thread.join(POLL_SECONDS)
            result = engine.get(execution_id)
            live.update(task_table(result, live=True))
            if failure and not tolerate(failure[0]):
                raise failure[0]
            if not thread.is_alive():
                if result.status in EXECUTION_TERMINAL or not failure:
                    break
                time.sleep(POLL_SECONDS)  # another process runs it: keep watching
    if not out.is_terminal:
        out.line()  # Live ends its last render with a newline on terminals only
    return result


def run_quietly(
    engine: Engine,
    execution_id: UUID,
    work: Callable[[], object],
    *,
    tolerate: Callable[[BaseException], bool] = lambda exc: False,
) -> ExecutionResult:
    try:
        work()
    except Exception as exc:
        if not tolerate(exc):
            raise
        return engine.wait(execution_id)
    return engine.get(execution_id)
