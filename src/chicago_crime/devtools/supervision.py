"""The native stack's watchdog: a supervisord event listener that makes crashes loud.

supervisord already restarts a program that dies (``autorestart``), retries one that fails to
start with a growing delay (``startretries``, 1 s more per attempt) and marks it ``FATAL`` when
it gives up. Two things it does not do, and this listener adds:

* **say so**: every crash, every give-up and every recovery is one line in ``alerts.log``
  (``make local-status`` shows the recent ones), with what to do next;
* **stop a crash loop**: a program that starts fine and then dies over and over is restarted
  forever by supervisord (each run outlives ``startsecs``, so its retry counter resets). After
  ``--max-crashes`` crashes within ``--window`` seconds the listener stops it and records that
  it gave up (``gave-up.json``), which ``make local-status`` reports until ``make local-up``
  starts it again.

Only supervisord's documented event protocol and XML-RPC interface are used (``supervisor.
childutils``); the listener holds no secret and runs as supervisord's own user (it needs the
control socket).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict, deque
from datetime import datetime
from pathlib import Path
from typing import Any

GAVE_UP_FILE = "gave-up.json"


def read_gave_up(state: Path) -> dict[str, dict[str, Any]]:
    """Programs the watchdog (or supervisord) gave up on: name -> {at, reason}."""
    try:
        return json.loads((state / GAVE_UP_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_gave_up(state: Path, data: dict[str, dict[str, Any]]) -> None:
    tmp = state / (GAVE_UP_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, state / GAVE_UP_FILE)


def forget_gave_up(state: Path, names: list[str]) -> None:
    """``up`` starts these again: clear their give-up records."""
    data = read_gave_up(state)
    if any(n in data for n in names):
        write_gave_up(state, {k: v for k, v in data.items() if k not in names})


class Watchdog:
    """Turns PROCESS_STATE events into alert lines and crash-loop decisions."""

    def __init__(self, state: Path, alerts: Path, max_crashes: int, window: float,
                 rpc: Any = None) -> None:
        self.state, self.alerts = state, alerts
        self.max_crashes, self.window = max_crashes, window
        self.rpc = rpc
        self.crashes: dict[str, deque[float]] = defaultdict(deque)
        self.down_since: dict[str, float] = {}

    def alert(self, message: str) -> None:
        line = f"{datetime.now():%Y-%m-%d %H:%M:%S} {message}"
        with self.alerts.open("a") as fh:
            fh.write(line + "\n")
        print(line, file=sys.stderr, flush=True)

    def give_up(self, name: str, reason: str) -> None:
        data = read_gave_up(self.state)
        data[name] = {"at": datetime.now().isoformat(timespec="seconds"), "reason": reason}
        write_gave_up(self.state, data)
        self.alert(f"GAVE UP on {name}: {reason}. See .local/logs/{name}.log, fix the cause, then "
                   "run `make local-up` to start it again.")

    def handle(self, event: str, payload: dict[str, str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        name = payload.get("processname", "?")
        if event == "PROCESS_STATE_EXITED" and payload.get("expected") == "0":
            crashes = self.crashes[name]
            crashes.append(now)
            while crashes and now - crashes[0] > self.window:
                crashes.popleft()
            self.down_since.setdefault(name, now)
            if len(crashes) >= self.max_crashes:
                self.give_up(name, f"crashed {len(crashes)} times within "
                                   f"{self.window / 60:.0f} min (last from state "
                                   f"{payload.get('from_state')})")
                crashes.clear()
                if self.rpc is not None:
                    try:
                        self.rpc.supervisor.stopProcess(name, False)
                    except Exception as exc:  # already stopped, or supervisord shutting down
                        self.alert(f"could not stop {name}: {exc}")
            else:
                self.alert(f"{name} crashed (pid {payload.get('pid')}); supervisord restarts it "
                           f"(crash {len(crashes)} of {self.max_crashes} allowed within "
                           f"{self.window / 60:.0f} min)")
        elif event == "PROCESS_STATE_FATAL":
            self.give_up(name, "could not start: it exited too quickly on every retry "
                               "(supervisord state FATAL)")
        elif event == "PROCESS_STATE_RUNNING" and name in self.down_since:
            self.alert(f"{name} is running again, {now - self.down_since.pop(name):.1f}s after "
                       "it crashed")


def main(argv: list[str] | None = None) -> int:
    from supervisor import childutils

    parser = argparse.ArgumentParser(prog="chicago_crime.devtools.supervision")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--alerts", type=Path, required=True)
    parser.add_argument("--max-crashes", type=int, default=5)
    parser.add_argument("--window", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        rpc = childutils.getRPCInterface(os.environ)
    except KeyError:  # not started by supervisord (e.g. a manual run)
        rpc = None
    dog = Watchdog(args.state, args.alerts, args.max_crashes, args.window, rpc)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            fields, _ = childutils.eventdata(payload + "\n")
            dog.handle(headers.get("eventname", ""), fields)
        except Exception as exc:  # never let one odd event kill the watchdog
            print(f"watchdog: could not handle {headers}: {exc}", file=sys.stderr, flush=True)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
