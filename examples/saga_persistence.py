"""Seed 001's "Context Persistence and Recovery": a saga paused on disk at its remote step,
reloaded from the repository, then continued by a response.

The snippet's code is kept as written, apart from the import line. What it uses without
defining (``repo``, ``broker``, ``long_running_saga``, ``some_response``) comes after it,
marked as such.

    PYTHONPATH=src python examples/saga_persistence.py
"""

# The snippets keep the seed's own style; only what this file adds follows ours.
# ruff: noqa: F841

import asyncio

from durably import (
    InMemoryBroker,
    Saga,
    SagaContext,
    SagaExecutionRepository,
    SagaManager,
    SagaRequest,
    SagaResponse,
)


# --- snippet: "Context Persistence and Recovery" ------------------------------------------------
# fmt: off
# Context is automatically persisted with execution state
async def demonstrate_persistence():
    # Initial context
    context = SagaContext(
        process_id="proc_123",
        data={"key": "value"},
        step_count=0
    )

    # Execute saga with pause capability
    manager = SagaManager(storage=repo, broker_pool=broker)
    execution_uuid = await manager.run(
        definition=long_running_saga,
        context=context,
        pause_on_disk=True,  # Context saved to disk
        return_execution=False
    )

    # Later - reload execution and context
    execution = await repo.load(execution_uuid)
    recovered_context = execution.context

    # Context is fully restored
    print(f"Process ID: {recovered_context.process_id}")
    print(f"Data: {recovered_context.data}")
    print(f"Step count: {recovered_context.step_count}")

    # Continue execution with recovered context
    final_result = await manager.run(
        response=some_response,
        pause_on_disk=True
    )


# fmt: on

# --- what the snippet leaves out ------------------------------------------------------------------

repo = SagaExecutionRepository("sqlite://:memory:")
broker = InMemoryBroker()
some_response = None  # the reply the long-running process will send, set by the saga's request


def count_step(context):
    context.step_count += 1


def start_processing(context):
    """Asks the long-running process to start. Its reply, when it comes, resumes the saga; this
    demo writes that reply itself, addressed to the execution the step belongs to."""
    global some_response
    some_response = SagaResponse({"result": "processed"}, uuid=context.scope.execution_id)
    return SagaRequest("processing-service", {"process_id": context.process_id})


def processing_done(context, response):
    context.result = response.content()["result"]


long_running_saga = (
    Saga()
    .local_step(count_step)
    .remote_step(start_processing)
    .on_success(processing_done)
    .local_step(count_step)
    .commit()
)


if __name__ == "__main__":
    asyncio.run(demonstrate_persistence())
    [latest] = repo.list_executions(limit=1)
    print(latest.status.value, dict(latest.context))
