"""A small closed-loop load generator for the model API (the self-healing tests and
``bench/bench_recovery.py``): N client threads, each sending the same request in a loop and
recording the outcome (HTTP status or the exception's name) and its latency.

Hand-written because the measurement needs the per-request outcome timeline around a restart
or a kill (which request failed, when, how), not only aggregate rates that load tools report.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class Load:
    """``with Load(url, body, concurrency) as load: ...`` keeps ``concurrency`` requests in
    flight; ``keep_alive=False`` opens a new connection per request (independent clients)."""

    url: str
    body: dict[str, Any]
    concurrency: int
    keep_alive: bool = False
    timeout: float = 60.0
    results: list[tuple[float, str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _worker(self) -> None:
        session = requests.Session() if self.keep_alive else None
        post = session.post if session else requests.post
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome = str(post(self.url, json=self.body, timeout=self.timeout).status_code)
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            self.results.append((started, outcome, time.monotonic() - started))

    def __enter__(self) -> Load:
        for _ in range(self.concurrency):
            thread = threading.Thread(target=self._worker, daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(2)  # warm: every client has requests behind it
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 30)

    @property
    def failures(self) -> Counter[str]:
        return Counter(outcome for _, outcome, _ in self.results if outcome != "200")

    def outage_seconds(self) -> float:
        """From the first failed request's start to the last failed one's end (0: none)."""
        failed = [(t, lat) for t, outcome, lat in self.results if outcome != "200"]
        if not failed:
            return 0.0
        return max(t + lat for t, lat in failed) - min(t for t, _ in failed)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(lat for _, outcome, lat in self.results if outcome == "200")
        p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] if latencies else float("nan")
        return {"requests": len(self.results), "failed": sum(self.failures.values()),
                "failures": dict(self.failures) or "none",
                "outage_s": round(self.outage_seconds(), 1),
                "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else "-",
                "p99_ms": round(p99 * 1000, 1)}
