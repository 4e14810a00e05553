"""OpenTelemetry spans (SPEC §8) with the SDK's in-memory exporter: one per execution, per task
attempt and per saga step, parent and child as they ran, and a participant's span in its
saga's trace through the request's headers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from durably import Engine, RetryPolicy, TaskHandle, Workflow, tracing
from durably.broker import InMemoryBroker
from durably.context import SagaContext
from durably.saga import Saga
from durably.saga_manager import SagaManager
from durably.saga_messages import SagaRequest, SagaResponse
from durably.saga_repository import SagaExecutionRepository

from .conftest import unique

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A configured global tracer provider for this test only (the API sets one once per
    process; the test puts it in place and takes it back)."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def traced_workflow() -> Workflow:
    wf = Workflow(unique("traced"))
    app = trace.get_tracer("app")

    @wf.task(retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False))
    def fetch(ctx: Any, handle: TaskHandle) -> None:
        with app.start_as_current_span("app.inside"):
            pass
        if handle.attempt == 1:
            raise RuntimeError("flaky")

    @wf.task(dependencies=["fetch"])
    async def store(ctx: Any) -> None:
        await asyncio.sleep(0)

    return wf


def check_execution_trace(
    exporter: InMemorySpanExporter, wf: Workflow, execution_id: Any, kind: SpanKind
) -> None:
    spans = by_name(exporter)
    [execution] = spans[f"durably.execution {wf.name}"]
    assert execution.kind is kind
    assert execution.parent is None
    assert execution.attributes is not None
    assert execution.attributes["durably.execution_id"] == str(execution_id)
    trace_id, execution_span = ids(execution)
    fetches = sorted(spans["durably.task fetch"], key=lambda s: s.start_time or 0)
    [store] = spans["durably.task store"]
    for span in [*fetches, store]:
        assert ids(span)[0] == trace_id
        assert parent_id(span) == execution_span
        assert span.attributes is not None
        assert span.attributes["durably.execution_id"] == str(execution_id)
        assert span.attributes["durably.workflow"] == wf.name
    assert [s.attributes["durably.attempt"] for s in fetches if s.attributes] == [1, 2]
    assert fetches[0].status.status_code is StatusCode.ERROR
    assert "RuntimeError: flaky" in (fetches[0].status.description or "")
    assert fetches[0].events[0].name == "exception"
    assert fetches[1].status.status_code is StatusCode.UNSET
    # The task's own spans nest under its attempt's.
    inside = spans["app.inside"]
    assert sorted(parent_id(s) or 0 for s in inside) == sorted(ids(s)[1] for s in fetches)


def test_an_in_process_run_is_one_trace(spans: InMemorySpanExporter, engine: Engine) -> None:
    wf = traced_workflow()
    result = engine.run(wf)
    assert result.status == "completed", result.error
    check_execution_trace(spans, wf, result.execution_id, SpanKind.INTERNAL)


def test_a_workers_attempts_join_the_trace_that_started_the_execution(
    spans: InMemorySpanExporter, store_url: str
) -> None:
    wf = traced_workflow()
    with Engine(store_url, workflows=[wf]) as starter, Engine(store_url, workflows=[wf]) as other:
        execution_id = starter.start(wf)
        with starter.store.read() as tx:
            record = starter.runtime.repo.execution(tx, str(execution_id))
        assert record is not None
        assert record.trace_context is not None
        assert "traceparent" in record.trace_context
        worker = other.worker(concurrency=2, poll_interval=0.05)  # another engine: the row
        thread = threading.Thread(target=worker.run, daemon=True)  # carries the context
        thread.start()
        try:
            result = starter.wait(execution_id, timeout=30)
        finally:
            worker.stop()
            if other.store.dialect == "postgres":
                with other.store.transaction() as tx:
                    other.runtime.repo.notify_work(tx)
            thread.join(timeout=15)
    assert result.status == "completed", result.error
    check_execution_trace(spans, wf, execution_id, SpanKind.PRODUCER)


def test_a_sub_workflow_joins_its_parents_trace(
    spans: InMemorySpanExporter, engine: Engine
) -> None:
    child = Workflow(unique("child"))

    @child.task()
    def pay(ctx: Any) -> None:
        ctx["paid"] = True

    parent = Workflow(unique("parent"))

    @parent.task()
    def checkout(ctx: Any) -> None:
        ctx["total"] = 3

    parent.subworkflow("payment", child, dependencies=[checkout])
    result = engine.run(parent)
    assert result.status == "completed", result.error
    found = by_name(spans)
    [execution] = found[f"durably.execution {parent.name}"]
    [paid] = found["durably.task pay"]
    [checked] = found["durably.task checkout"]
    assert ids(paid)[0] == ids(checked)[0] == ids(execution)[0]
    assert parent_id(paid) == ids(execution)[1]


def reserve(ctx: SagaContext) -> SagaRequest:
    return SagaRequest("stock", {"n": ctx.n})


def reserved(ctx: SagaContext, response: SagaResponse) -> None:
    ctx.reserved = response.content()["ok"]


def note(ctx: SagaContext) -> None:
    ctx.noted = True


def test_a_participants_span_joins_its_sagas_trace(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    saga = Saga(unique("saga")).local_step(note).remote_step(reserve).on_success(reserved).commit()
    broker = InMemoryBroker()
    seen: dict[str, str] = {}

    @broker.service("stock")
    def stock(content: dict[str, Any]) -> dict[str, Any]:
        seen.update({"trace": format(trace.get_current_span().get_span_context().trace_id)})
        return {"ok": True}

    async def main() -> Any:
        repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/s.db")
        async with SagaManager(storage=repo, broker_pool=broker) as manager:
            execution = await manager.run(definition=saga, context={"n": 1})
        repo.close()
        return execution

    execution = asyncio.run(main())
    assert execution.context["reserved"] is True
    found = by_name(spans)
    [run] = found[f"durably.saga {saga.name}"]
    [local] = found[f"durably.saga_step {saga.name} 0"]
    [remote] = found[f"durably.saga_step {saga.name} 1"]
    [served] = found["durably.participant stock"]
    trace_id, run_id = ids(run)
    assert run.parent is None
    assert run.attributes is not None
    assert run.attributes["durably.execution_id"] == str(execution.uuid)
    assert parent_id(local) == parent_id(remote) == run_id
    assert served.kind is SpanKind.CONSUMER
    assert ids(served)[0] == trace_id == ids(remote)[0]
    assert parent_id(served) == ids(remote)[1]  # through the request's headers
    assert served.parent is not None
    assert served.parent.is_remote
    assert seen["trace"] == format(trace_id)  # the participant's code runs inside it
    assert served.attributes is not None
    assert served.attributes["durably.task"] == "1"


def test_a_request_carries_the_trace_context_in_its_headers(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    saga = Saga(unique("saga")).remote_step(reserve).on_success(reserved).commit()
    broker = InMemoryBroker()  # nobody serves "stock": the request stays queued

    async def main() -> None:
        repo = SagaExecutionRepository(f"sqlite:///{tmp_path}/s.db")
        manager = SagaManager(storage=repo, broker_pool=broker)
        await manager.run(definition=saga, context={"n": 1}, pause_on_disk=True)
        await manager.close()
        repo.close()

    asyncio.run(main())
    [message] = broker.sent
    [step] = by_name(spans)[f"durably.saga_step {saga.name} 0"]
    trace_id, span_id = ids(step)
    assert message.headers["traceparent"].startswith(f"00-{trace_id:032x}-{span_id:016x}-")
    assert step.status.status_code is StatusCode.UNSET  # pausing is not an error


def test_a_saga_resumed_in_another_process_stays_in_its_trace(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """The first run's span context is saved with the execution: the run a reply resumes,
    with a new manager and repository as in another process, is its child."""
    saga = Saga(unique("saga")).remote_step(reserve).on_success(reserved).commit()
    url = f"sqlite:///{tmp_path}/s.db"

    async def first() -> Any:
        repo = SagaExecutionRepository(url)
        manager = SagaManager(storage=repo, broker_pool=InMemoryBroker())
        uuid = await manager.run(
            definition=saga, context={"n": 1}, pause_on_disk=True, return_execution=False
        )
        await manager.close()
        repo.close()
        return uuid

    async def second(uuid: Any) -> Any:
        repo = SagaExecutionRepository(url)
        manager = SagaManager(storage=repo, broker_pool=InMemoryBroker())
        reply = SagaResponse({"ok": True}, uuid=uuid)
        execution = await manager.run(response=reply, pause_on_disk=True)
        await manager.close()
        repo.close()
        return execution

    uuid = asyncio.run(first())
    execution = asyncio.run(second(uuid))
    assert execution.context["reserved"] is True
    opened, resumed = sorted(
        by_name(spans)[f"durably.saga {saga.name}"], key=lambda span: span.start_time or 0
    )
    assert opened.parent is None
    assert ids(resumed)[0] == ids(opened)[0]
    assert parent_id(resumed) == ids(opened)[1]
    steps = by_name(spans)[f"durably.saga_step {saga.name} 0"]  # the pause, then the reply
    assert [ids(step)[0] for step in steps] == [ids(opened)[0]] * 2


def test_without_a_tracer_provider_nothing_is_traced_or_stored(engine: Engine) -> None:
    assert tracing.tracer() is None  # the SDK is imported, but no provider is configured
    wf = traced_workflow()
    result = engine.run(wf)
    queued = engine.start(wf)
    with engine.store.read() as tx:
        for execution_id in (result.execution_id, queued):
            record = engine.runtime.repo.execution(tx, str(execution_id))
            assert record is not None
            assert record.trace_context is None
    assert tracing.carrier() is None
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}


def test_durably_imports_neither_opentelemetry_nor_prometheus(tmp_path: Path) -> None:
    script = f"""
import sys
from durably import Engine, Workflow
wf = Workflow("plain")
@wf.task()
def step(ctx, handle):
    handle.logger.info("x")
with Engine("sqlite:///{tmp_path}/p.db") as engine:
    assert engine.run(wf).status == "completed"
    loaded = [m for m in sys.modules if m.startswith(("opentelemetry", "prometheus_client"))]
    assert not loaded, loaded
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
