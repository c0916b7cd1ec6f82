"""What broke when the Compose stack does not come up: one line per service that is not healthy,
with the reason users need (its exit code and last log lines, its last healthcheck output, or the
dependency it waited for), plus the resources the running stack uses."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

DOCKER = "/usr/bin/docker"


def _docker(*args: str) -> str:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def parse_ps(text: str) -> list[dict[str, Any]]:
    """``docker compose ps --format json``: a JSON array (old Compose) or one object per line."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def describe(container: dict[str, Any], inspect: dict[str, Any] | None,
             logs: str) -> str | None:
    """One line (plus detail) for a container that is not healthy/running/completed, else None.

    ``inspect`` is ``docker inspect`` of the container, ``logs`` its last log lines."""
    service = container.get("Service", "?")
    name = container.get("Name", "?")
    state = (container.get("State") or "").lower()
    health = (container.get("Health") or "").lower()
    exit_code = container.get("ExitCode", 0)
    state_info = (inspect or {}).get("State") or {}
    tail = "\n      ".join(logs.strip().splitlines()[-12:]) if logs.strip() else "(no output)"
    if state == "exited" and exit_code == 0:
        return None  # a one-shot job that completed
    if state in {"exited", "dead"} or state_info.get("Error"):
        error = state_info.get("Error") or ""
        why = f" ({error})" if error else ""
        return (f"service {service} ({name}): exited with code {exit_code}{why}; "
                f"last log lines:\n      {tail}")
    if state == "restarting":
        return f"service {service} ({name}): keeps restarting; last log lines:\n      {tail}"
    if health in {"unhealthy", "starting"}:
        checks = (state_info.get("Health") or {}).get("Log") or []
        if health == "starting" and not checks:
            return (f"service {service} ({name}): still starting when Compose gave up (no "
                    f"healthcheck result yet)")
        test = ((inspect or {}).get("Config") or {}).get("Healthcheck", {}).get("Test") or []
        last = checks[-1] if checks else {}
        output = (last.get("Output") or "").strip().replace("\n", "\n      ")
        verdict = "unhealthy" if health == "unhealthy" else "never became healthy"
        return (f"service {service} ({name}): {verdict}; healthcheck {test[1:]} last exit "
                f"{last.get('ExitCode', '?')}: {output or '(no output)'}\n"
                f"    last log lines:\n      {tail}")
    if state == "created":
        return f"service {service} ({name}): never started (a dependency failed, see above)"
    return None


def explain(compose: Any, stderr: str) -> str:
    """Why ``up --wait`` failed: Compose's own message and every broken service."""
    lines = []
    compose_errors = [ln.strip() for ln in (stderr or "").splitlines()
                      if re.search(r"error|failed|unhealthy|dependency|exited|not found", ln, re.I)]
    if compose_errors:
        lines.append("compose: " + "\n  compose: ".join(compose_errors[-8:]))
    ps = compose.run("--profile", "*", "ps", "--all", "--format", "json", check=False)
    for container in parse_ps(ps.stdout):
        cid = container.get("ID") or container.get("Name")
        raw = _docker("inspect", cid)
        inspect = json.loads(raw)[0] if raw.strip() else None
        logs = subprocess.run([DOCKER, "logs", "--tail", "40", cid], capture_output=True,
                              text=True, check=False)
        line = describe(container, inspect, logs.stdout + logs.stderr)
        if line:
            lines.append(line)
    return "\n  ".join(lines) if lines else "(no service reported a problem)"


def _bytes(text: str) -> float:
    m = re.match(r"([\d.]+)\s*([KMGT]?i?B)", text.strip())
    if not m:
        return 0.0
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "kB": 1e3,
             "KB": 1e3, "MB": 1e6, "GB": 1e9}
    return float(m[1]) * scale.get(m[2], 1)


def resources(compose: Any) -> str:
    """Memory and CPU of the stack's containers right now, and what the host has left."""
    ids = compose.run("--profile", "*", "ps", "--quiet", check=False).stdout.split()
    if not ids:
        return "resources: no container running"
    out = _docker("stats", "--no-stream", "--format",
                  "{{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}", *ids)
    rows = []
    for line in out.splitlines():
        name, mem, cpu = [*line.split("\t"), "", ""][:3]
        rows.append((name, _bytes(mem.split("/")[0]), cpu))
    total = sum(r[1] for r in rows)
    top = sorted(rows, key=lambda r: -r[1])[:4]
    meminfo = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            meminfo[key] = int(value.split()[0]) * 1024
    return (f"resources: {len(rows)} containers use {total / 2**30:.2f} GiB (largest: "
            + ", ".join(f"{n} {m / 2**20:.0f} MiB {c}" for n, m, c in top)
            + f"); host available {meminfo.get('MemAvailable', 0) / 2**30:.1f} GiB of "
            f"{meminfo.get('MemTotal', 0) / 2**30:.1f} GiB")
