"""Per-item stock reservation: one order fans out over its lines at run time (issue 10's
example of ``map_over``), at most 3 reservations at a time, and the confirmation sees the
list of reservation ids in line order.

    load_order ──► reserve (map_over="lines", max_parallel=3, collect="reservations") ──► confirm

Each line is its own task row (``reserve[0]``, ``reserve[1]``, ...) with its own status,
attempts and retries; ``handle.item`` is the line and ``handle.index`` its position. A failed
line fails ``reserve`` (and ``confirm`` is upstream_failed); ``engine.retry(id)`` runs only the
failed lines again.

    python -m examples.reservation_workflow   # reserves a 7-line order, prints the result
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from durably import Context, Engine, RetryPolicy, TaskHandle, Workflow

wf = Workflow("order_reservation")


@wf.task()
def load_order(ctx: Context) -> None:
    ctx["lines"] = [{"sku": f"SKU-{n}", "qty": n} for n in range(1, 8)]


@wf.task(
    dependencies=[load_order],
    map_over="lines",
    max_parallel=3,
    collect="reservations",
    retry=RetryPolicy(max_attempts=3, initial_delay=0.01),
)
def reserve(ctx: Context, handle: TaskHandle) -> Any:
    line = handle.item
    return f"R-{handle.index}-{line['sku']}x{line['qty']}"


@wf.task(dependencies=[reserve])
def confirm(ctx: Context) -> None:
    ctx["confirmed"] = len(ctx["reservations"]) == len(ctx["lines"])


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as folder,
        Engine(f"sqlite:///{Path(folder) / 'reservation.db'}") as engine,
    ):
        result = engine.run(wf)
    print(f"{result.execution_id}: {result.status}")
    for reservation in result.context["reservations"]:
        print(f"  {reservation}")
    return 0 if result.status == "completed" and result.context["confirmed"] else 1


if __name__ == "__main__":
    sys.exit(main())
