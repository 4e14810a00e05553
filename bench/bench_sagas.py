"""Saga throughput and latency: a 3-step saga (local, remote, remote), run to the end.

    python bench/bench_sagas.py [--sagas 300] [--concurrency 16] [--brokers memory,rabbitmq,nats]

- ``memory``: in-process, the participants on the same InMemoryBroker;
- ``rabbitmq`` / ``nats``: the participants in a second process (this script, ``participant``
  mode), so each step crosses the broker twice between processes.

The manager saves to a fresh SQLite file (WAL) and waits for replies in memory (the default).
Every request goes through the outbox. Prints one Markdown row per broker: sagas/s, p50 and
p95 latency of one saga. Nothing asserts on the numbers. A broker whose server is unreachable
is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from durably import (  # noqa: E402
    InMemoryBroker,
    Saga,
    SagaContext,
    SagaExecutionRepository,
    SagaManager,
    SagaRequest,
    SagaResponse,
)
from durably.broker import Broker  # noqa: E402

URLS = {
    "rabbitmq": os.environ.get("DURABLY_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "nats": os.environ.get("DURABLY_BENCH_NATS_URL", "nats://127.0.0.1:4222"),
}


def make_broker(kind: str, stream: str) -> Broker:
    if kind == "rabbitmq":
        from durably import RabbitMQBroker

        return RabbitMQBroker(URLS["rabbitmq"], prefetch=64)
    if kind == "nats":
        from durably import NatsBroker

        return NatsBroker(URLS["nats"], stream=stream, max_ack_pending=256)
    return InMemoryBroker()


def serve(broker: Broker, prefix: str) -> None:
    @broker.service(f"{prefix}-stock")
    def stock(content: Any) -> Any:
        return {"reservation": f"R-{content['order']}"}

    @broker.service(f"{prefix}-pay")
    def pay(content: Any) -> Any:
        return {"payment": f"P-{content['order']}"}


def saga(prefix: str) -> Saga:
    def validate(ctx: SagaContext) -> None:
        ctx["valid"] = True

    def reserved(ctx: SagaContext, response: SagaResponse) -> None:
        ctx["reservation"] = response.content()["reservation"]

    def paid(ctx: SagaContext, response: SagaResponse) -> None:
        ctx["payment"] = response.content()["payment"]

    return (
        Saga(f"bench-{prefix}")
        .local_step(validate)
        .remote_step(lambda ctx: SagaRequest(f"{prefix}-stock", {"order": ctx["order"]}))
        .on_success(reserved)
        .remote_step(lambda ctx: SagaRequest(f"{prefix}-pay", {"order": ctx["order"]}))
        .on_success(paid)
        .commit()
    )


async def participant(kind: str, prefix: str, stream: str) -> None:
    broker = make_broker(kind, stream)
    serve(broker, prefix)
    await broker.start_services()
    print("ready", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    finally:
        await broker.close()


async def drive(kind: str, sagas: int, concurrency: int) -> dict[str, float]:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    stream = f"DURABLY_BENCH_{prefix.upper()}"
    definition = saga(prefix)
    child = None
    broker = make_broker(kind, stream)
    if kind == "memory":
        serve(broker, prefix)
    else:
        child = subprocess.Popen(
            [sys.executable, __file__, "participant", kind, prefix, stream],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the participant process did not start")
    with tempfile.TemporaryDirectory() as tmp:
        repo = SagaExecutionRepository(f"sqlite:///{tmp}/bench.db")
        latencies: list[float] = []
        try:
            async with SagaManager(repo, broker) as manager:
                await manager.run(definition, {"order": -1})  # warm-up: connections, queues
                queue: asyncio.Queue[int] = asyncio.Queue()
                for n in range(sagas):
                    queue.put_nowait(n)

                async def worker() -> None:
                    while not queue.empty():
                        n = queue.get_nowait()
                        started = time.perf_counter()
                        await manager.run(definition, {"order": n}, timeout=60)
                        latencies.append(time.perf_counter() - started)

                began = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed = time.perf_counter() - began
        finally:
            await broker.close()
            repo.close()
            if child is not None:
                assert child.stdin is not None
                child.stdin.close()
                child.wait(30)
            if kind == "nats":
                await _delete_stream(stream)
    latencies.sort()
    return {
        "sagas_per_s": sagas / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
    }


async def _delete_stream(stream: str) -> None:
    import nats

    nc = await nats.connect(URLS["nats"])
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "participant":
        asyncio.run(participant(*sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--brokers", default="memory,rabbitmq,nats")
    args = parser.parse_args()
    print(
        f"\n### Sagas: 3 steps (local, remote, remote), {args.sagas} sagas, "
        f"{args.concurrency} at once, SQLite\n"
    )
    print("| broker | sagas/s | p50 ms | p95 ms |")
    print("| --- | ---: | ---: | ---: |")
    for kind in args.brokers.split(","):
        where = "in-process" if kind == "memory" else "2 processes"
        try:
            result = asyncio.run(drive(kind, args.sagas, args.concurrency))
        except Exception as exc:  # an unreachable server: reported, not fatal
            print(f"| {kind} ({where}) | n/a: {type(exc).__name__}: {exc} | | |")
            continue
        print(
            f"| {kind} ({where}) | {result['sagas_per_s']:.0f} | {result['p50_ms']:.1f} "
            f"| {result['p95_ms']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
