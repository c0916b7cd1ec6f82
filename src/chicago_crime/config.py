"""One configuration object read from environment variables (and ``.env``).

The field names are the environment variable names (case-insensitive) used by ``.env``,
``docker-compose.yaml`` and the native runner, so the two ways of running read one contract.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(RuntimeError):
    """A required setting is missing or invalid."""


def _env_file() -> Path | None:
    explicit = os.environ.get("CHICAGO_CRIME_ENV_FILE")
    if explicit:
        return Path(explicit)
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidate = folder / ".env"
        if candidate.is_file() and (folder / "pyproject.toml").is_file():
            return candidate
    return None


#: Passwords that ship with the tools or the course template (and the template's own .env).
#: A service bound beyond loopback refuses them (see ``Settings._no_default_when_exposed``).
WELL_KNOWN_PASSWORDS = frozenset({
    "", "airflow", "minio", "minio123", "minioadmin", "password", "password1234", "admin",
    "postgres", "mlflow", "changeme", "secret", "redis", "valkey",
})
#: Secret settings checked against ``WELL_KNOWN_PASSWORDS`` when ``BIND_HOST`` is not loopback.
EXPOSED_SECRETS = (
    "pg_password", "pg_admin_password", "valkey_password", "aws_secret_access_key",
    "s3_admin_secret_access_key", "mlflow_s3_secret_access_key", "airflow_admin_password",
    "mlflow_admin_password", "mlflow_tracking_password", "mlflow_serving_password", "api_key",
    "pg_monitoring_password",
    "grafana_admin_password",
)


def _secret_text(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Platform settings. Every field maps to the upper-case environment variable."""

    model_config = SettingsConfigDict(
        env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # network
    bind_host: str = "127.0.0.1"

    # PostgreSQL (``pg_user`` is the platform's role, not a superuser; ``pg_admin_password`` is
    # the superuser ``postgres``'s, used only to set the platform up)
    pg_user: str = "airflow"
    pg_password: SecretStr = SecretStr("airflow")
    pg_admin_password: SecretStr | None = None
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_airflow_db: str = "airflow"
    pg_mlflow_db: str = "mlflow_db"
    pg_mlflow_auth_db: str = "mlflow_auth"
    # The prediction log's database and its writer login (the model server's only database
    # access: it can reach this database alone; the platform's role reads it).
    pg_monitoring_db: str = "monitoring"
    pg_monitoring_user: str = "monitoring_writer"
    pg_monitoring_password: SecretStr | None = None
    # The shared Optuna study of the training DAG's mapped search tasks (owned by PG_USER).
    pg_search_db: str = "optuna"

    # broker
    valkey_host: str = "127.0.0.1"
    valkey_port: int = 6379
    valkey_password: SecretStr | None = None

    # S3 data lake (credentials are required: no silent anonymous access)
    aws_access_key_id: str = Field(min_length=1)
    aws_secret_access_key: SecretStr
    aws_default_region: str = "us-east-1"
    aws_endpoint_url_s3: str | None = "http://127.0.0.1:9000"
    minio_port: int = 9000
    minio_port_ui: int = 9001
    data_repo_bucket_name: str = "data"
    mlflow_bucket_name: str = "mlflow"
    # The S3 server's admin (creates the buckets at setup; no service holds it) and the MLflow
    # server's own S3 identity (its artifact bucket only). AWS_* above is the platform's.
    s3_admin_access_key_id: str = "lake-admin"
    s3_admin_secret_access_key: SecretStr | None = None
    mlflow_s3_access_key_id: str = "mlflow"
    mlflow_s3_secret_access_key: SecretStr | None = None
    # Native stack only (SeaweedFS ``weed mini``): its internal ports, all on loopback.
    seaweedfs_master_port: int = 9333
    seaweedfs_master_grpc_port: int = 19333
    seaweedfs_volume_port: int = 9340
    seaweedfs_volume_grpc_port: int = 19340
    seaweedfs_filer_port: int = 9888
    seaweedfs_filer_grpc_port: int = 19888
    seaweedfs_s3_grpc_port: int = 19000
    # its admin server's HTTP port; the gRPC port is always this + 10000 (weed's convention)
    seaweedfs_admin_port: int = 23646

    # MLflow
    mlflow_port: int = 5001
    mlflow_tracking_uri: str = "http://127.0.0.1:5001"
    mlflow_s3_endpoint_url: str | None = "http://127.0.0.1:9000"
    model_name: str = "chicago_arrest"
    #: The registry alias of the version the API serves (the gate moves it, rollback too).
    champion_alias: str = "champion"
    # MLflow's own client variables: the account every platform client (Airflow tasks, CLI,
    # tests, demo) signs in with. The model server gets the read-only serving account instead.
    mlflow_tracking_username: str | None = None
    mlflow_tracking_password: SecretStr | None = None
    mlflow_admin_username: str = "admin"
    mlflow_admin_password: SecretStr | None = None
    mlflow_serving_username: str = "model-api"
    mlflow_serving_password: SecretStr | None = None
    mlflow_flask_server_secret_key: SecretStr | None = None
    etl_experiment: str = "etl"
    search_experiment: str = "chicago_arrest_search"

    # Airflow
    airflow_port: int = 8080
    airflow_admin_user: str = "airflow"
    airflow_admin_password: SecretStr = SecretStr("airflow")
    airflow_jwt_secret: SecretStr | None = None
    airflow_fernet_key: SecretStr | None = None
    airflow_worker_concurrency: int = 2
    # Native stack only: Celery worker processes (each its own Celery hostname); Compose
    # scales with `--scale airflow-worker=N`, other hosts add workers of their own.
    airflow_workers: int = Field(default=2, ge=1)
    # Native stack only: listeners of Airflow's helper servers, all on loopback.
    airflow_worker_log_port: int = 8793
    airflow_triggerer_log_port: int = 8794
    airflow_scheduler_health_port: int = 8974
    # seconds without a heartbeat before a task on a dead worker is failed (and retried)
    airflow_task_heartbeat_timeout: int = Field(default=30, ge=10)

    # Socrata / Chicago Data Portal
    socrata_base_url: str = "https://data.cityofchicago.org"
    socrata_app_token: SecretStr | None = None
    socrata_crimes_dataset: str = "ijzp-q8t2"
    socrata_stations_dataset: str = "z8bn-74gv"
    socrata_page_size: int = Field(default=50_000, gt=0)
    socrata_timeout_seconds: float = Field(default=60.0, gt=0)
    socrata_max_attempts: int = Field(default=5, ge=1)
    socrata_backoff_seconds: float = Field(default=1.0, ge=0)
    # Native stack only: the Socrata replay server (``make local-up DATA=folder``).
    replay_port: int = 8765

    # ETL
    etl_first_run_months: int = Field(default=12, ge=1)
    etl_max_invalid_fraction: float = Field(default=0.05, ge=0, le=1)
    etl_temp_prefix: str = "tmp/"
    etl_temp_expiry_days: int = Field(default=60, ge=1)
    random_seed: int = 42
    test_size: float = Field(default=0.2, gt=0, lt=1)

    # training
    search_trials: int = Field(default=12, ge=1)
    search_timeout_seconds: int = Field(default=240, ge=10)
    #: Mapped search tasks of ``train_model`` (each runs its share of SEARCH_TRIALS on whatever
    #: Celery worker takes it, all in one Optuna study in PG_SEARCH_DB).
    search_parallel_tasks: int = Field(default=2, ge=1)
    #: Optuna RDB URL of that study; empty: PG_SEARCH_DB on the platform's PostgreSQL.
    search_storage_url: SecretStr | None = None
    cv_folds: int = Field(default=3, ge=2)
    promotion_margin: float = Field(default=0.002, ge=0)
    primary_metric: str = "roc_auc"

    # monitoring (monitor_model: drift and decay of the champion, month by month)
    monitor_experiment: str = "chicago_arrest_monitoring"
    #: A feature drifts when its PSI reaches this AND its KS/chi-squared p-value is below
    #: MONITOR_P_VALUE (large samples make any difference "significant": PSI sizes it).
    monitor_psi_threshold: float = Field(default=0.2, gt=0)
    monitor_p_value: float = Field(default=0.01, gt=0, lt=1)
    #: Retrain when the month's ROC AUC is this much below the champion's own test figure, or
    #: its ECE this much above it.
    monitor_auc_drop: float = Field(default=0.03, ge=0)
    monitor_ece_rise: float = Field(default=0.05, ge=0)
    #: Records of the champion's training window sampled as the drift reference.
    monitor_reference_rows: int = Field(default=50_000, ge=1_000)

    # model server
    fastapi_port: int = 8800
    api_url: str = "http://127.0.0.1:8800"
    api_key: SecretStr | None = None
    # uvicorn worker processes of the model server (each loads the model: ~400 MB each)
    api_workers: int = Field(default=2, ge=1)
    model_poll_seconds: float = Field(default=30.0, ge=0)
    # The last good champion is kept here (served at start when MLflow is down); "" disables.
    model_cache_dir: str = "~/.cache/chicago-crime/models"
    max_batch_records: int = Field(default=10_000, ge=1)
    # Request body limit; unset: sized to the largest legal batch (serve.limits.body_limit).
    max_body_bytes: int | None = Field(default=None, ge=1024)
    # Host names the API answers besides the ones derived from BIND_HOST and API_URL (comma
    # separated; "*" turns the check off, e.g. behind a proxy that checks Host itself).
    api_allowed_hosts: str = ""
    # Requests (per worker process) scored at once; more wait in a queue of API_MAX_QUEUE for
    # up to API_QUEUE_SECONDS, then get 503 + Retry-After. Every request has a time limit.
    api_max_concurrency: int = Field(default=32, ge=1)
    api_max_queue: int = Field(default=256, ge=0)
    api_queue_seconds: float = Field(default=5.0, ge=0)
    api_request_timeout_seconds: float = Field(default=30.0, gt=0)

    # prediction log (monitoring.prediction_log): every prediction served, written to
    # PG_MONITORING_DB off the request path, in batches; rows queued beyond the queue are dropped
    # (counted), rows older than the retention deleted hourly (0 keeps them).
    prediction_log_enabled: bool = True
    prediction_log_retention_days: int = Field(default=90, ge=0)
    prediction_log_queue_size: int = Field(default=100_000, ge=1)
    prediction_log_batch_size: int = Field(default=1_000, ge=1)
    prediction_log_flush_seconds: float = Field(default=1.0, gt=0)
    prediction_log_shutdown_seconds: float = Field(default=10.0, ge=0)
    # monitoring (docs/monitoring.md): Prometheus scrapes the API, the Pushgateway and the OTLP
    # bridge that receives Airflow's OpenTelemetry metrics; Grafana runs in Compose only.
    prometheus_port: int = 9090
    pushgateway_port: int = 9091
    # where monitor_model pushes its gauges; empty: nothing is pushed
    pushgateway_url: str = "http://127.0.0.1:9091"
    otlp_bridge_port: int = 4318
    grafana_port: int = 3000
    grafana_admin_password: SecretStr | None = None

    @model_validator(mode="after")
    def _no_default_when_exposed(self) -> Settings:
        """Beyond loopback, a well-known (or empty) password would let anyone in: refuse it.

        Only the secrets this process was given are checked: each service gets the ones it uses
        (the model server holds no database or S3 password), and an unset one is never used.
        """
        if is_loopback(self.bind_host):
            return self
        weak = []
        for name in EXPOSED_SECRETS:
            if name not in self.model_fields_set:
                continue
            value = getattr(self, name)
            secret = value.get_secret_value() if isinstance(value, SecretStr) else (value or "")
            if secret.strip().lower() in WELL_KNOWN_PASSWORDS:
                weak.append(name.upper())
        if weak:
            raise ValueError(f"{', '.join(weak)}: empty or a well-known default while "
                             f"BIND_HOST={self.bind_host} exposes the platform: generate it "
                             "(make install) or set a strong value in .env")
        return self

    def mlflow_client_env(self) -> dict[str, str]:
        """MLflow's own client variables for this configuration (its client reads only
        ``os.environ``, never ``.env``)."""
        env = {}
        if self.mlflow_tracking_username and self.mlflow_tracking_password:
            env["MLFLOW_TRACKING_USERNAME"] = self.mlflow_tracking_username
            env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_tracking_password.get_secret_value()
        return env

    @property
    def airflow_url(self) -> str:
        return f"http://{self.bind_host}:{self.airflow_port}"

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of one database on the platform's PostgreSQL."""
        return (
            f"{driver}://{self.pg_user}:{self.pg_password.get_secret_value()}"
            f"@{self.pg_host}:{self.pg_port}/{database}"
        )

    def pg_monitoring_url(self, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of the monitoring database with the prediction log's writer login."""
        password = quote(_secret_text(self.pg_monitoring_password), safe="")
        return (f"{driver}://{quote(self.pg_monitoring_user, safe='')}:{password}"
                f"@{self.pg_host}:{self.pg_port}/{self.pg_monitoring_db}")

    def search_storage(self) -> str:
        """Optuna's RDB URL of the shared search study (SEARCH_STORAGE_URL, else PG_SEARCH_DB
        with the platform's role)."""
        explicit = _secret_text(self.search_storage_url).strip()
        return explicit or self.pg_url(self.pg_search_db, "postgresql+psycopg2")

    @property
    def broker_url(self) -> str:
        """Celery's broker URL; it carries the broker password when there is one."""
        auth = ""
        if self.valkey_password and self.valkey_password.get_secret_value():
            auth = f":{quote(self.valkey_password.get_secret_value(), safe='')}@"
        return f"redis://{auth}{self.valkey_host}:{self.valkey_port}/0"


def export_mlflow_credentials(settings: Settings) -> None:
    """Give MLflow's client the platform account from the settings (``.env`` included).

    MLflow reads ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` from ``os.environ`` only, so a value
    that lives in ``.env`` would never reach it. A variable already in the environment wins
    (the model server's process gets the read-only serving account that way).
    """
    for key, value in settings.mlflow_client_env().items():
        os.environ.setdefault(key, value)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; fail fast naming the variable that is wrong."""
    try:
        return Settings(_env_file=_env_file(), **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else ""
            problems.append(f"{name}: {err['msg']}" if name else err["msg"])
        raise ConfigError(
            "invalid configuration (set these environment variables or add them to .env): "
            + "; ".join(problems)
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached), with MLflow's client signed in (see
    ``export_mlflow_credentials``). Use ``load_settings`` for a fresh read."""
    settings = load_settings()
    export_mlflow_credentials(settings)
    return settings
