"""The host-network override of the Compose test: every service on the host's network stack,
loopback only, on high free ports.

The engine here runs without a bridge (no docker0, no iptables), so containers cannot get their
own network namespace with service-name DNS. This module reads the resolved stack
(``docker compose config``) and writes an override file that, for EVERY service (one left out
would make Compose create a bridge network):

* sets ``network_mode: host`` and ``ports: !reset []`` (nothing is published);
* points every in-network address at 127.0.0.1: URLs such as ``http://minio:9000`` or
  ``...@postgres:5432/...``, and ``<X>_HOST: <service>`` / ``<X>_PORT`` pairs;
* moves every port a service listens on to a block of free high ports (the native stack and other
  tests may hold 5432, 6379, 8080, 8793, 8794, 8800, 8974, 9000 ...), through the service's own
  conventions (``PGPORT``, ``--port``, ``--address``, ``AIRFLOW__API__PORT`` ...), and binds it to
  127.0.0.1 instead of 0.0.0.0;
* rewrites the healthchecks only where a port is written in them; with ``grace`` > 1 it also
  multiplies their timeout, start period and retries (a machine shared with other jobs starts
  Airflow in minutes), never their commands or the ``depends_on`` graph.

``LISTENS`` lists every port of every service; a service that is missing from it, or a
``service:port`` reference that is left pointing at a service name, is an error that names it.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = "127.0.0.1"
# service -> the ports it listens on inside its container (empty: it listens on nothing).
LISTENS: dict[str, tuple[int, ...]] = {
    "postgres": (5432,),
    "valkey": (6379,),
    "minio": (9000, 9001),
    "minio-init": (),
    "mlflow": (5000,),
    "airflow-init": (),
    "airflow-apiserver": (8080,),
    "airflow-scheduler": (8974,),
    "airflow-dag-processor": (),
    "airflow-triggerer": (8794,),
    "airflow-worker": (8793,),
    "airflow-cli": (),
    "fastapi": (8800,),
    "replay": (8765,),
    "jupyter": (8888,),
    # profile monitoring (not started by the Compose test: no Grafana image offline)
    "otlp-bridge": (4318,),
    "pushgateway": (9091,),
    "prometheus": (9090,),
    "grafana": (3000,),
}
# Offsets from the base port. The MinIO stand-in derives SeaweedFS's internal ports from the S3
# port (+10 .. +24), hence the gap after it.
OFFSETS: dict[tuple[str, int], int] = {
    ("postgres", 5432): 0, ("valkey", 6379): 1, ("mlflow", 5000): 2,
    ("airflow-apiserver", 8080): 3, ("airflow-scheduler", 8974): 4,
    ("airflow-worker", 8793): 5, ("airflow-triggerer", 8794): 6, ("fastapi", 8800): 7,
    ("replay", 8765): 8, ("jupyter", 8888): 9,
    ("otlp-bridge", 4318): 10, ("pushgateway", 9091): 11, ("prometheus", 9090): 12,
    ("grafana", 3000): 13,
    ("minio", 9000): 20, ("minio", 9001): 21,
}
BLOCK = 50  # ports base .. base+49 (MinIO's derived ports end at base+44)


class OverrideError(RuntimeError):
    """The stack cannot be moved onto the host network as it is; the message says where."""


class Reset(list):
    """``!reset []``: drop the base file's value (Compose >= 2.24)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Reset, lambda d, v: d.represent_sequence("!reset", list(v)))


def _free(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def find_base(start: int = 41000, stop: int = 60000) -> int:
    """First block of BLOCK free ports at or above ``start``."""
    for base in range(start, stop, 100):
        if all(_free(base + i) for i in range(BLOCK)):
            return base
    raise OverrideError(f"no block of {BLOCK} free ports between {start} and {stop}")


@dataclass
class PortMap:
    """Where each (service, internal port) lives on the host."""

    base: int
    ports: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def at(cls, base: int) -> PortMap:
        return cls(base, {key: base + off for key, off in OFFSETS.items()})

    def __call__(self, service: str, port: int) -> int:
        try:
            return self.ports[(service, port)]
        except KeyError:
            raise OverrideError(f"{service}:{port} is referenced but {service} does not listen "
                                f"on {port} (LISTENS in scripts/compose_test/hostnet.py)") from None

    def url(self, service: str, port: int) -> str:
        return f"http://{LOOPBACK}:{self(service, port)}"

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "ports": {f"{s}:{p}": v for (s, p), v in self.ports.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortMap:
        ports = {}
        for key, value in data["ports"].items():
            service, _, port = key.rpartition(":")
            ports[(service, int(port))] = value
        return cls(data["base"], ports)


# --- rewriting strings ---------------------------------------------------------------------------
# URL schemes whose authority is a network address (s3://<bucket> names a bucket, not a host).
NETWORK_SCHEMES = r"(?:https?|redis|rediss|amqp|postgres(?:ql)?(?:\+\w+)?|db\+postgres(?:ql)?)"


def _service_pattern(services: list[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(s) for s in sorted(services, key=len, reverse=True))
    # scheme://[user:password@]service[:port], the host ending at a delimiter.
    return re.compile(rf"(?P<pre>{NETWORK_SCHEMES}://(?:[^@/\s\"']*@)?)(?P<host>{names})"
                      rf"(?::(?P<port>\d+))?(?=[/\s\"',;?]|$)")


def rewrite_urls(value: str, services: list[str], ports: PortMap, where: str) -> str:
    """``http://minio:9000`` -> ``http://127.0.0.1:<port>`` for every service name."""
    def sub(m: re.Match[str]) -> str:
        if not m["port"]:
            raise OverrideError(f"{where}: {m[0]!r} names no port; write it explicitly")
        return f"{m['pre']}{LOOPBACK}:{ports(m['host'], int(m['port']))}"

    return _service_pattern(services).sub(sub, value)


def rewrite_loopback(value: str, service: str, ports: PortMap) -> str:
    """``localhost:8080`` in a service's own healthcheck -> its moved port."""
    def sub(m: re.Match[str]) -> str:
        port = int(m[2])
        if port in LISTENS.get(service, ()):
            return f"{LOOPBACK}:{ports(service, port)}"
        return m[0]

    return re.sub(r"\b(localhost|127\.0\.0\.1|0\.0\.0\.0):(\d+)\b", sub, value)


def set_flag(args: list[str], flag: str, value: str, *, add: bool = True) -> list[str]:
    """Set ``--flag=value`` / ``--flag value`` in an argument list (append when missing)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if arg.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    if not add:
        raise OverrideError(f"{flag} not found in {shlex.join(args)}")
    return [*out, flag, value]


# --- per-service port moves ---------------------------------------------------------------------
@dataclass
class Service:
    """One service being moved: its resolved config and the override being built for it."""

    name: str
    config: dict[str, Any]
    image_cmd: list[str] | None
    override: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        cmd = self.override.get("command", self.config.get("command"))
        if cmd is None:
            if self.image_cmd is None:
                raise OverrideError(f"service {self.name}: no command in the compose file and "
                                    f"its image's CMD is unknown")
            cmd = self.image_cmd
        return list(cmd) if isinstance(cmd, list) else shlex.split(cmd)

    @command.setter
    def command(self, value: list[str]) -> None:
        self.override["command"] = value

    def env(self, **values: str) -> None:
        self.override.setdefault("environment", {}).update(values)

    def healthcheck(self, fn: Callable[[list[str]], list[str]]) -> None:
        hc = self.override.get("healthcheck") or self.config.get("healthcheck") or {}
        test = hc.get("test")
        if not test:
            raise OverrideError(f"service {self.name}: no healthcheck to move")
        self.override.setdefault("healthcheck", {})["test"] = [test[0], *fn(list(test[1:]))]


def _move_postgres(s: Service, ports: PortMap) -> None:
    s.env(PGPORT=str(ports("postgres", 5432)))  # server, pg_isready and the init scripts read it
    if s.config.get("command") not in (None, ["postgres"]):
        raise OverrideError("service postgres: a custom command; extend _move_postgres")
    s.command = ["postgres", "-c", f"listen_addresses={LOOPBACK}"]


def _move_valkey(s: Service, ports: PortMap) -> None:
    port = str(ports("valkey", 6379))
    s.command = [*s.command, "--port", port, "--bind", LOOPBACK]

    def cli(test: list[str]) -> list[str]:
        joined = " ".join(test)
        if "valkey-cli" not in joined:
            raise OverrideError("service valkey: healthcheck does not use valkey-cli")
        if len(test) == 1:  # CMD-SHELL
            return [joined.replace("valkey-cli", f"valkey-cli -p {port}", 1)]
        i = test.index("valkey-cli")
        return [*test[: i + 1], "-p", port, *test[i + 1:]]

    s.healthcheck(cli)


def _move_minio(s: Service, ports: PortMap) -> None:
    cmd = set_flag(s.command, "--address", f"{LOOPBACK}:{ports('minio', 9000)}")
    s.command = set_flag(cmd, "--console-address", f"{LOOPBACK}:{ports('minio', 9001)}")
    # `mc ready local` (the healthcheck) reads the alias from MC_HOST_local, as the real mc does.
    s.env(MC_HOST_local=ports.url("minio", 9000))


def _move_flags(service: str, port: int, host_flag: str = "--host",
                port_flag: str = "--port") -> Callable[[Service, PortMap], None]:
    def move(s: Service, ports: PortMap) -> None:
        cmd = set_flag(s.command, host_flag, LOOPBACK, add=False)
        s.command = set_flag(cmd, port_flag, str(ports(service, port)), add=False)
    return move


def _move_jupyter(s: Service, ports: PortMap) -> None:
    cmd = set_flag(s.command, "--ServerApp.ip", LOOPBACK, add=False)
    s.command = set_flag(cmd, "--ServerApp.port", str(ports("jupyter", 8888)), add=False)


def _move_listen_address(service: str, port: int) -> Callable[[Service, PortMap], None]:
    """Prometheus and the Pushgateway: ``--web.listen-address=host:port``."""
    def move(s: Service, ports: PortMap) -> None:
        s.command = set_flag(s.command, "--web.listen-address",
                             f"{LOOPBACK}:{ports(service, port)}")
    return move


def _move_grafana(s: Service, ports: PortMap) -> None:
    s.env(GF_SERVER_HTTP_ADDR=LOOPBACK, GF_SERVER_HTTP_PORT=str(ports("grafana", 3000)))


def _move_airflow(s: Service, ports: PortMap) -> None:
    # Every Airflow component knows where the others listen (log servers, api-server).
    s.env(
        AIRFLOW__API__HOST=LOOPBACK,
        AIRFLOW__API__PORT=str(ports("airflow-apiserver", 8080)),
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=LOOPBACK,
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(
            ports("airflow-scheduler", 8974)),
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(ports("airflow-worker", 8793)),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(ports("airflow-triggerer", 8794)),
    )


MOVES: dict[str, Callable[[Service, PortMap], None]] = {
    "postgres": _move_postgres,
    "valkey": _move_valkey,
    "minio": _move_minio,
    "mlflow": _move_flags("mlflow", 5000),
    "fastapi": _move_flags("fastapi", 8800),
    "replay": _move_flags("replay", 8765),
    "jupyter": _move_jupyter,
    "otlp-bridge": _move_flags("otlp-bridge", 4318),
    "pushgateway": _move_listen_address("pushgateway", 9091),
    "prometheus": _move_listen_address("prometheus", 9090),
    "grafana": _move_grafana,
}


# --- the override ------------------------------------------------------------------------------
def seconds(duration: str) -> float:
    """A Compose duration (``1m30s``, ``500ms``, ``20s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([\d.]+)(h|ms|us|m|s)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration.strip():
        raise OverrideError(f"cannot read the duration {duration!r}")
    return sum(float(n) * units[u] for n, u in parts)


def widen(healthcheck: dict[str, Any], grace: float) -> dict[str, Any]:
    """Timeout, start period and retries of a healthcheck multiplied by ``grace``."""
    out: dict[str, Any] = {}
    for key in ("timeout", "start_period"):
        if healthcheck.get(key):
            out[key] = f"{seconds(str(healthcheck[key])) * grace:.0f}s"
    if healthcheck.get("retries"):
        out["retries"] = int(healthcheck["retries"] * grace)
    return out


def build_override(resolved: dict[str, Any], ports: PortMap,
                   image_cmds: dict[str, list[str]] | None = None,
                   grace: float = 1.0) -> dict[str, Any]:
    """The override document for every service of ``resolved`` (docker compose config JSON)."""
    services = resolved.get("services") or {}
    names = list(services)
    missing = [n for n in names if n not in LISTENS]
    if missing:
        raise OverrideError(f"service(s) {', '.join(missing)} not covered by the host-network "
                            f"override: add their ports to LISTENS in "
                            f"scripts/compose_test/hostnet.py")
    out: dict[str, Any] = {}
    for name, config in services.items():
        s = Service(name, config, (image_cmds or {}).get(config.get("image", "")))
        if name.startswith("airflow-"):
            _move_airflow(s, ports)
        if name in MOVES:
            MOVES[name](s, ports)
        env = {k: "" if v is None else str(v) for k, v in (config.get("environment") or {}).items()}
        env.update(s.override.get("environment", {}))
        changed = {}
        for key, value in env.items():
            new = rewrite_urls(value, names, ports, f"service {name}: {key}")
            if key.endswith("_HOST") and value in names:
                new = LOOPBACK
                port_key = key[: -len("_HOST")] + "_PORT"
                if port_key in env:
                    changed[port_key] = str(ports(value, int(env[port_key])))
            if new != value or key in s.override.get("environment", {}):
                changed[key] = new
        s.override["environment"] = changed
        for part in ("command", "entrypoint"):
            value = s.override.get(part, config.get(part))
            if value is None:
                continue
            items = value if isinstance(value, list) else shlex.split(value)
            new = [rewrite_urls(v, names, ports, f"service {name}: {part}") for v in items]
            if new != items or part in s.override:
                s.override[part] = new
        hc = config.get("healthcheck") or {}
        test = (s.override.get("healthcheck") or {}).get("test") or hc.get("test")
        if test:
            new = [test[0], *(rewrite_loopback(rewrite_urls(t, names, ports,
                                                            f"service {name}: healthcheck"),
                                               name, ports) for t in test[1:])]
            if new != test:
                s.override.setdefault("healthcheck", {})["test"] = new
            if grace > 1 and hc:
                s.override.setdefault("healthcheck", {}).update(widen(hc, grace))
        s.override["network_mode"] = "host"
        s.override["ports"] = Reset()
        out[name] = s.override
    return {"services": out}


def verify(merged: dict[str, Any], ports: PortMap) -> list[str]:
    """Problems left in the merged stack: a bridge network, published ports, in-network names."""
    problems = []
    services = merged.get("services") or {}
    names = list(services)
    pattern = _service_pattern(names)
    default_ports = {p for listens in LISTENS.values() for p in listens}
    for name, svc in services.items():
        if svc.get("network_mode") != "host":
            problems.append(f"service {name}: network_mode is {svc.get('network_mode')!r}, "
                            f"not host")
        if svc.get("networks"):
            problems.append(f"service {name}: joins networks {sorted(svc['networks'])}")
        if svc.get("ports"):
            problems.append(f"service {name}: still publishes ports")
        strings = [f"{k}={v}" for k, v in (svc.get("environment") or {}).items()]
        for part in ("command", "entrypoint"):
            strings += [str(x) for x in (svc.get(part) or [])]
        strings += [str(x) for x in ((svc.get("healthcheck") or {}).get("test") or [])]
        for text in strings:
            m = pattern.search(text)
            if m:
                problems.append(f"service {name}: {text[:120]!r} still points at service "
                                f"`{m['host']}`")
            for lm in re.finditer(r"\b(?:localhost|127\.0\.0\.1):(\d+)\b", text):
                if int(lm[1]) in default_ports:
                    problems.append(f"service {name}: {text[:120]!r} uses port {lm[1]} on the "
                                    f"host (not moved: it may reach another stack)")
        for key, value in (svc.get("environment") or {}).items():
            if key.endswith("_HOST") and value in names:
                problems.append(f"service {name}: {key}={value} is an in-network name")
    if merged.get("networks"):
        problems.append(f"the stack defines networks {sorted(merged['networks'])}")
    return problems


def write_override(path: Path, override: dict[str, Any], ports: PortMap) -> None:
    header = ("# Generated by scripts/compose_test/hostnet.py for `make test-compose`: every\n"
              "# service on the host network (loopback), ports moved to "
              f"{ports.base}..{ports.base + BLOCK - 1}. Do not commit.\n")
    path.write_text(header + yaml.dump(override, Dumper=_Dumper, sort_keys=True,
                                       default_flow_style=False, width=100), encoding="utf-8")
    path.chmod(0o600)
    path.with_suffix(".ports.json").write_text(json.dumps(ports.to_json(), indent=2))
