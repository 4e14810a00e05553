"""The demo's third part: a bulk order that fans out per line inside a sub-workflow.

    take_order ──► fulfil (sub-workflow demo_fulfilment) ──► invoice
                     reserve_line (map_over="lines", max_parallel=2, collect="reservations")
                       ──► pack

``fulfil`` runs ``demo_fulfilment`` as an execution of its own, with ``take_order``'s output
as its initial context; ``invoice`` sees the child's final context. Each line is an instance
of ``reserve_line`` with its own status and attempts; the reservations arrive in line order.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from .context import Context
from .engine import Engine
from .execution_views import task_table
from .executor import TaskHandle
from .results import ExecutionResult
from .workflow import Workflow

fulfilment = Workflow("demo_fulfilment")


@fulfilment.task(map_over="lines", max_parallel=2, collect="reservations")
def reserve_line(ctx: Context, handle: TaskHandle) -> str:
    line = handle.item
    return f"R-{handle.index}-{line['sku']}x{line['qty']}"


@fulfilment.task(dependencies=[reserve_line])
def pack(ctx: Context) -> None:
    ctx["parcels"] = (len(ctx["reservations"]) + 1) // 2  # two lines to a parcel


bulk_order = Workflow("demo_bulk_order")


@bulk_order.task()
def take_order(ctx: Context) -> None:
    ctx["lines"] = [{"sku": sku, "qty": n} for n, sku in enumerate(("pen", "ink", "pad"), 1)]


bulk_order.subworkflow("fulfil", fulfilment, dependencies=[take_order])


@bulk_order.task(dependencies=["fulfil"])
def invoice(ctx: Context) -> None:
    ctx["invoice"] = f"INV-{ctx['order_id']}: {len(ctx['lines'])} lines, {ctx['parcels']} parcels"


def run_bulk(engine: Engine, out: Console) -> ExecutionResult:
    """Run a bulk order and print it with its child execution."""
    result = engine.run(bulk_order, Context(order_id="B-2001"))
    out.print(task_table(result))
    child_id = result.tasks["fulfil"].child_id
    if child_id is not None:
        out.print(task_table(engine.get(child_id)))
    out.print(
        Text.assemble(
            ("Reservations, in line order: ", "bold"),
            ", ".join(result.context.get("reservations", [])),
        )
    )
    out.print(Text.assemble(("Outcome: ", "bold"), f"{result.status}: {result.context['invoice']}"))
    return result
