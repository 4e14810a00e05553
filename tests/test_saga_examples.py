"""SPEC §4's example and seed 001's saga examples (examples/*.py), run as written.

Both import the saga API from ``durably`` itself, as SPEC §4 shows.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from rich.console import Console

from durably.context import SagaContext
from durably.exceptions import SagaFailedExecutionException
from durably.saga import Saga
from durably.saga_execution import SagaStatus, SagaStepStatus
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest
from durably.saga_repository import SagaExecutionRepository

# datetime.utcnow() is deprecated from Python 3.12; the seed's snippets use it as written.
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` once (as the module ``<name>``)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def manager_for(module: ModuleType, tmp_path: Path) -> SagaManager:
    repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/sagas.db")
    return SagaManager(storage=repo, broker_pool=module.broker)


def order_context(**extra: Any) -> SagaContext:
    return SagaContext(
        order_id=12345,
        customer_id="cust_456",
        items=[{"sku": "ITEM1", "quantity": 2}],
        total=99.99,
        **extra,
    )


# -- SPEC §4 ---------------------------------------------------------------------------------


def test_spec_section_4_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's database is ./durably.db
    from durably import (
        InMemoryBroker,
        Saga,
        SagaContext,
        SagaExecution,
        SagaExecutionRepository,
        SagaManager,
        SagaRequest,
        SagaResponse,
        SagaResponseStatus,
        SagaStatus,
        SagaStepStatus,
    )

    def validate_order(ctx: SagaContext) -> None:
        ctx.validated = True

    def undo_validation(ctx: SagaContext) -> None:
        ctx.validated = False

    def reserve(ctx: SagaContext) -> SagaRequest:
        return SagaRequest("inventory-service", {"order_id": ctx.order_id})

    def reserved(ctx: SagaContext, response: SagaResponse) -> None:
        ctx.reservation = response.content()["reservation"]

    def rejected(ctx: SagaContext, response: SagaResponse) -> Exception:
        return ValueError(response.content())

    def release(ctx: SagaContext) -> SagaRequest:
        return SagaRequest("inventory-service", {"release": ctx.reservation})

    def is_premium(ctx: SagaContext) -> bool:
        return ctx.get("tier") == "premium"

    premium_saga = Saga().local_step(lambda ctx: ctx.update(shipping="express")).commit()
    basic_saga = Saga().local_step(lambda ctx: ctx.update(shipping="standard")).commit()
    ctx = SagaContext(order_id=2, tier="premium")

    async def spec_example() -> None:
        # --- SPEC §4, as written ---
        saga = (Saga()
                .local_step().on_execute(validate_order).on_failure(undo_validation)
                .remote_step().on_execute(reserve).on_success(reserved).on_error(rejected)
                              .on_failure(release)
                .conditional_step().if_then(is_premium, premium_saga).else_then(basic_saga)
                .commit())  # fmt: skip

        repo = SagaExecutionRepository("sqlite:///durably.db")
        broker = InMemoryBroker()

        @broker.service("inventory-service")  # the participant the example talks to
        def inventory(content: dict[str, Any]) -> dict[str, Any]:
            return {"reservation": f"R-{content['order_id']}"}

        manager = SagaManager(storage=repo, broker_pool=broker)
        execution = await manager.run(definition=saga, context=SagaContext(order_id=1))
        assert isinstance(execution, SagaExecution)
        assert execution.status is SagaStatus.Finished
        assert execution.context == {
            "order_id": 1,
            "validated": True,
            "reservation": "R-1",
            "shipping": "standard",
        }
        assert {s.status for s in execution.steps} == {SagaStepStatus.Finished}

        uuid = await manager.run(definition=saga, context=ctx, pause_on_disk=True,
                                 return_execution=False)  # fmt: skip
        execution = await repo.load(uuid)  # execution.context, execution.status
        assert execution.status is SagaStatus.Paused
        assert execution.context == {"order_id": 2, "tier": "premium", "validated": True}
        execution = await manager.run(
            response=SagaResponse({"reservation": "R-2"}, uuid=uuid), pause_on_disk=True
        )
        assert execution.status is SagaStatus.Finished
        assert execution.context["shipping"] == "express"
        assert SagaResponseStatus.SUCCESS == 200

    asyncio.run(spec_example())
    assert (tmp_path / "durably.db").exists()


# -- "Context in Saga Steps": order processing with inventory and payment services ------------


def test_order_saga_as_written_stops_cleanly_at_context_items(tmp_path: Path) -> None:
    order = example("order_saga")
    manager = manager_for(order, tmp_path)
    with pytest.raises(SagaFailedExecutionException) as info:
        asyncio.run(
            manager.run(definition=order.create_order_processing_saga(), context=order_context())
        )
    # ``context.items`` is the mapping method (SPEC §2), so the request cannot be encoded.
    assert "items" in str(info.value)
    assert "method" in str(info.value)
    [summary] = manager.storage.list_executions()
    assert [s.status for s in summary.steps] == [
        SagaStepStatus.Finished,
        SagaStepStatus.ErroredOnExecute,
    ]
    assert "validated_at" in summary.context  # the validation step's output was saved


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/order_saga.py, with the inventory request reading ``context["items"]``."""
    module = example("order_saga")

    def create_inventory_request(context: SagaContext) -> SagaRequest:
        return SagaRequest(
            target="inventory-service",
            content={"items": context["items"], "order_id": context.order_id},
        )

    monkeypatch.setattr(module, "create_inventory_request", create_inventory_request)
    monkeypatch.setattr(module, "stock", {"ITEM1": 10, "ITEM2": 5})
    monkeypatch.setattr(module, "reservations", {})
    monkeypatch.setattr(module, "payments", {})
    return module


def test_order_saga_reserves_and_pays(order: ModuleType, tmp_path: Path) -> None:
    manager = manager_for(order, tmp_path)
    execution = asyncio.run(
        manager.run(definition=order.create_order_processing_saga(), context=order_context())
    )
    assert execution.status is SagaStatus.Finished
    ctx = execution.context
    assert (ctx.reservation_id, ctx.inventory_status) == ("res-12345", "reserved")
    assert (ctx.payment_id, ctx.transaction_id, ctx.payment_status) == (
        "pay-12345",
        "tx-12345",
        "completed",
    )
    assert order.stock["ITEM1"] == 8
    assert "pay-12345" in order.payments


def test_order_saga_failed_payment_releases_the_reservation(
    order: ModuleType, tmp_path: Path
) -> None:
    manager = manager_for(order, tmp_path)
    with pytest.raises(SagaFailedExecutionException) as info:
        asyncio.run(
            manager.run(
                definition=order.create_order_processing_saga(),
                context=order_context(payment_method="expired_card"),
            )
        )
    assert "card processor unavailable" in str(info.value)
    assert order.stock["ITEM1"] == 10  # reservation compensated
    assert order.reservations == {}
    [summary] = manager.storage.list_executions()
    assert [s.status for s in summary.steps] == [
        SagaStepStatus.Finished,
        SagaStepStatus.Compensated,
        SagaStepStatus.ErroredByOnExecute,
    ]


def test_order_saga_out_of_stock_is_an_error_reply(order: ModuleType, tmp_path: Path) -> None:
    context = order_context()
    context["items"] = [{"sku": "ITEM2", "quantity": 50}]
    manager = manager_for(order, tmp_path)
    execution = asyncio.run(
        manager.run(definition=order.create_order_processing_saga(), context=context)
    )
    # No on_error handler: as in minos, the ERROR reply leaves the context as it was.
    assert execution.status is SagaStatus.Finished
    assert "reservation_id" not in execution.context


# -- "Context Debugging and Monitoring" --------------------------------------------------------


def test_monitored_saga_logs_each_step(
    order: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manager = manager_for(order, tmp_path)
    execution = asyncio.run(
        manager.run(definition=order.create_monitored_saga(), context=order_context())
    )
    assert execution.status is SagaStatus.Finished
    assert execution.context.validated is True
    assert execution.context.payment_status == "completed"
    out = capsys.readouterr().out
    for step in ("start", "payment_request", "payment_success"):
        assert f"Context at {step}:" in out
    assert "  order_id: 12345" in out


def test_snapshot_step_in_a_saga(
    order: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saga = Saga().local_step(order.debug_step_with_snapshot).commit()
    execution = asyncio.run(manager_for(order, tmp_path).run(definition=saga, context={"a": 1}))
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == "debug_checkpoint"
    assert printed["data"] == {"a": 1}
    assert execution.context.debug_checkpoint == printed["timestamp"]


# -- "Context Persistence and Recovery" --------------------------------------------------------


def test_persistence_example_pauses_on_disk_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    persistence = example("saga_persistence")
    url = f"sqlite:///{tmp_path}/sagas.db"
    monkeypatch.setattr(persistence, "repo", SagaExecutionRepository(url))
    asyncio.run(persistence.demonstrate_persistence())
    out = capsys.readouterr().out
    assert "Process ID: proc_123\nData: {'key': 'value'}\nStep count: 1\n" in out
    # A new repository (another process) sees the finished execution.
    [summary] = SagaExecutionRepository(url).list_executions()
    assert summary.status is SagaStatus.Finished
    assert summary.context == {
        "process_id": "proc_123",
        "data": {"key": "value"},
        "step_count": 2,
        "result": "processed",
    }


# -- "Advanced Context Patterns": dynamic sagas -------------------------------------------------


def test_dynamic_saga_follows_the_context(tmp_path: Path) -> None:
    dynamic = example("dynamic_saga")
    assert (dynamic.customer_tier, dynamic.first_item_sku, dynamic.shipping_method) == (
        "premium",
        "ITEM1",
        "express",
    )
    manager = manager_for(dynamic, tmp_path)
    premium = SagaContext(dynamic.context)
    execution = asyncio.run(
        manager.run(definition=dynamic.create_dynamic_saga(premium), context=premium)
    )
    assert execution.status is SagaStatus.Finished
    assert premium.processing_type == "express_processing"
    assert dynamic.shipped[-1]["speed"] == "express"

    basic = SagaContext(customer={"tier": "basic"}, order={"items": [], "total": 150})
    saga = dynamic.create_dynamic_saga(basic)
    assert basic.processing_type == "standard_processing"
    execution = asyncio.run(manager.run(definition=saga, context=basic))
    assert execution.context.processing_type == "standard_processing"
    assert dynamic.shipped[-1]["speed"] == "standard"


# -- "Context Validation and Type Safety" ------------------------------------------------------


def test_validated_saga(tmp_path: Path) -> None:
    validation = example("saga_validation")
    manager = manager_for(validation, tmp_path)
    context = validation.context
    assert context.total == pytest.approx(99.99)
    assert context.status == "pending"
    execution = asyncio.run(
        manager.run(definition=validation.create_validated_saga(), context=context)
    )
    assert execution.status is SagaStatus.Finished

    missing = SagaContext({k: v for k, v in context.items() if k != "customer_id"})
    with pytest.raises(SagaFailedExecutionException) as info:
        asyncio.run(manager.run(definition=validation.create_validated_saga(), context=missing))
    assert isinstance(info.value.__cause__, ValueError)
    assert "customer_id" in str(info.value)

    wrong = SagaContext(context, total="a lot")
    with pytest.raises(SagaFailedExecutionException) as info:
        asyncio.run(manager.run(definition=validation.create_validated_saga(), context=wrong))
    assert isinstance(info.value.__cause__, TypeError)

    paid = validation.OrderContextFactory.create_payment_context(
        {"method": "card", "token": "tok", "billing_address": "1 Main St"}, SagaContext(context)
    )
    assert paid.payment_method == "card"


# -- the demo --------------------------------------------------------------------------------


def test_saga_demo_prints_a_run_that_compensates(tmp_path: Path) -> None:
    from durably.saga_demo import run_saga_demo

    out = io.StringIO()
    url = f"sqlite:///{tmp_path}/demo.db"
    run_saga_demo(url, Console(file=out, width=140))
    text = out.getvalue()
    refunded = text.index("payment P-S-2002 refunded")
    released = text.index("reservation R-S-2002 released")
    voided = text.index("order S-2002 voided")
    assert refunded < released < voided
    assert "compensated" in text
    assert "no carrier delivers to Atlantis" in text
    statuses = sorted(s.status.value for s in SagaExecutionRepository(url).list_executions())
    assert statuses == ["errored", "finished"]
