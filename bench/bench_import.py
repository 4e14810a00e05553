"""What `import durably` costs, and that the optional extras stay out of it: the median wall
time of a fresh interpreter importing durably (and the durably CLI) over --runs runs, against
a bare interpreter, and which extras' modules the import loaded (none should be).

    .venv/bin/python bench/bench_import.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

# The optional extras: the dashboard's, the metrics' and the traces' libraries.
EXTRAS = ("starlette", "uvicorn", "jinja2", "prometheus_client", "opentelemetry")
PROBE = (
    "import sys, json\n"
    "import {module}\n"
    "print(json.dumps(sorted(m for m in {extras} if m in sys.modules)))\n"
)


def timed(code: str, runs: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        out = done.stdout.strip()
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    bare, _ = timed("pass", args.runs)
    print("| import | median ms | over a bare interpreter | extras' modules loaded |")
    print("|---|---|---|---|")
    for module in ("durably", "durably.cli"):
        seconds, loaded = timed(PROBE.format(module=module, extras=EXTRAS), args.runs)
        extras = ", ".join(json.loads(loaded)) or "none"
        print(f"| `{module}` | {seconds * 1000:.0f} | +{(seconds - bare) * 1000:.0f} | {extras} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
