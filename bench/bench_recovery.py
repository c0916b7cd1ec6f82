"""Benchmark of the model server's availability on the running native stack (not a test; prints
figures): requests lost per API restart, the plain way (stop + start, what `stack restart`
did before) and the rolling way (each uvicorn worker replaced after its successor serves), the
recovery time after a SIGKILL of the API, and the latency at concurrency 64.

Needs `make local-up` with a champion served (`make demo` first). Every client opens a new
connection per request (independent clients). The Celery-worker recovery (kill -> task retried
-> run success) is measured by tests/integration/test_self_healing.py, which prints it.

    .venv/bin/python bench/bench_recovery.py [--concurrency 8] [--steady-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from chicago_crime.devtools import demo, stack
from chicago_crime.devtools.loadgen import Load


def api_pid() -> int:
    out = stack._ctl("pid", "api").stdout.strip()
    return int(out) if out.isdigit() else 0


def wait_ready(settings, since: float, timeout: float = 300) -> float:
    while time.monotonic() - since < timeout:
        ready, _, detail = stack.api_readiness(settings)
        if ready and detail.startswith("ready"):
            return time.monotonic() - since
        time.sleep(0.2)
    raise SystemExit(f"the API was not ready within {timeout:.0f}s")


def line(title: str, **figures: object) -> None:
    print(f"{title:<44} " + "  ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--steady-seconds", type=float, default=30)
    args = parser.parse_args()
    settings = stack.stack_settings()
    if not stack.api_readiness(settings)[2].startswith("ready"):
        raise SystemExit("no champion served: run `make demo` first")
    url, body = f"{settings.api_url}/predict", demo.EXAMPLE_RECORD
    print(f"model API {url}, {settings.api_workers} uvicorn workers, concurrency "
          f"{args.concurrency}, new connection per request\n", flush=True)

    with Load(url, body, args.concurrency) as load:
        started = time.monotonic()
        stack._ctl("restart", "api")
        took = wait_ready(settings, started)
        time.sleep(2)
    line("plain restart (stop + start)", restart_to_ready_s=round(took, 1), **load.summary())

    with Load(url, body, args.concurrency) as load:
        took = stack.rolling_restart_api(settings)
        time.sleep(2)
    line("rolling restart (stack restart api)", restart_s=round(took, 1), **load.summary())

    with Load(url, body, args.concurrency) as load:
        master = api_pid()
        killed = time.monotonic()
        os.kill(master, signal.SIGKILL)
        while api_pid() in {0, master}:
            time.sleep(0.1)
        took = wait_ready(settings, killed)
        time.sleep(2)
    line("SIGKILL of the API manager", kill_to_ready_s=round(took, 1), **load.summary())

    for concurrency in (16, 64):
        with Load(url, body, concurrency) as load:
            time.sleep(args.steady_seconds)
        rate = len(load.results) / (args.steady_seconds + 2)
        line(f"steady load, concurrency {concurrency}", req_per_s=round(rate), **load.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
