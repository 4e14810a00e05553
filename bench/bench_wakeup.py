"""Wake-up latency of an event wait on a PostgreSQL worker: the time from `engine.send` to the
waiting task's body starting, with a worker whose poll interval (5 s) cannot explain a fast
wake (it is woken by NOTIFY). Prints the median and p95 over --sends executions.

    .venv/bin/python bench/bench_wakeup.py [--postgres URL] [--sends 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import _common

from durably import Context, Engine, Workflow, event

DEFAULT_URL = os.environ.get("DURABLY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=DEFAULT_URL, metavar="URL")
    parser.add_argument("--sends", type=int, default=30)
    args = parser.parse_args()
    started: dict[str, float] = {}
    wf = Workflow("bench_wakeup")

    @wf.task(wait=event("go"))
    def woken(ctx: Context, handle: object) -> None:
        started[str(getattr(handle, "execution_id", ""))] = time.perf_counter()

    try:
        database = _common.temp_postgres_database(args.postgres)
        url = database.__enter__()
    except Exception as exc:  # no server: say so, measure nothing
        print(f"wake-up latency: skipped, PostgreSQL unreachable ({' '.join(str(exc).split())})")
        return 0
    try:
        with Engine(url, workflows=[wf]) as queue, Engine(url, workflows=[wf]) as serving:
            worker = serving.worker(concurrency=2, poll_interval=5.0)
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            latencies = []
            for _ in range(args.sends):
                execution_id = queue.start(wf, {})
                deadline = time.monotonic() + 10
                while queue.get(execution_id).tasks["woken"].status != "waiting":
                    if time.monotonic() > deadline:
                        raise SystemExit("the task never started waiting")
                    time.sleep(0.005)
                sent = time.perf_counter()
                queue.send(execution_id, "go", {"n": 1})
                queue.wait(execution_id, timeout=10)
                latencies.append((started[str(execution_id)] - sent) * 1000)
            worker.stop()
            thread.join(timeout=10)  # an idle worker notices stop() within its poll interval
    finally:
        database.__exit__(None, None, None)
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"wake-up latency, send -> task start on a PostgreSQL worker (poll 5 s), "
        f"{len(latencies)} sends: p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
