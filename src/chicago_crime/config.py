"""One configuration object read from environment variables (and ``.env``).

The field names are the environment variable names (case-insensitive) used by ``.env``,
``docker-compose.yaml`` and the native runner, so the two ways of running read one contract.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
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


class Settings(BaseSettings):
    """Platform settings. Every field maps to the upper-case environment variable."""

    model_config = SettingsConfigDict(
        env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # network
    bind_host: str = "127.0.0.1"

    # PostgreSQL
    pg_user: str = "airflow"
    pg_password: SecretStr = SecretStr("airflow")
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_airflow_db: str = "airflow"
    pg_mlflow_db: str = "mlflow_db"

    # broker
    valkey_host: str = "127.0.0.1"
    valkey_port: int = 6379

    # S3 data lake (credentials are required: no silent anonymous access)
    aws_access_key_id: str = Field(min_length=1)
    aws_secret_access_key: SecretStr
    aws_default_region: str = "us-east-1"
    aws_endpoint_url_s3: str | None = "http://127.0.0.1:9000"
    minio_port: int = 9000
    minio_port_ui: int = 9001
    data_repo_bucket_name: str = "data"
    mlflow_bucket_name: str = "mlflow"

    # MLflow
    mlflow_port: int = 5001
    mlflow_tracking_uri: str = "http://127.0.0.1:5001"
    mlflow_s3_endpoint_url: str | None = "http://127.0.0.1:9000"
    model_name: str = "chicago_arrest"
    #: The registry alias of the version the API serves (the gate moves it, rollback too).
    champion_alias: str = "champion"
    etl_experiment: str = "etl"
    search_experiment: str = "chicago_arrest_search"

    # Airflow
    airflow_port: int = 8080
    airflow_admin_user: str = "airflow"
    airflow_admin_password: SecretStr = SecretStr("airflow")
    airflow_jwt_secret: SecretStr | None = None
    airflow_fernet_key: SecretStr | None = None
    airflow_worker_concurrency: int = 2

    # Socrata / Chicago Data Portal
    socrata_base_url: str = "https://data.cityofchicago.org"
    socrata_app_token: SecretStr | None = None
    socrata_crimes_dataset: str = "ijzp-q8t2"
    socrata_stations_dataset: str = "z8bn-74gv"
    socrata_page_size: int = Field(default=50_000, gt=0)
    socrata_timeout_seconds: float = Field(default=60.0, gt=0)
    socrata_max_attempts: int = Field(default=5, ge=1)
    socrata_backoff_seconds: float = Field(default=1.0, ge=0)

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
    cv_folds: int = Field(default=3, ge=2)
    promotion_margin: float = Field(default=0.002, ge=0)
    primary_metric: str = "roc_auc"

    # model server
    fastapi_port: int = 8800
    api_url: str = "http://127.0.0.1:8800"
    api_key: SecretStr | None = None
    model_poll_seconds: float = Field(default=30.0, ge=0)
    max_batch_records: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=20_000_000, ge=1024)

    @property
    def airflow_url(self) -> str:
        return f"http://{self.bind_host}:{self.airflow_port}"

    def pg_url(self, database: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of one database on the platform's PostgreSQL."""
        return (
            f"{driver}://{self.pg_user}:{self.pg_password.get_secret_value()}"
            f"@{self.pg_host}:{self.pg_port}/{database}"
        )


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; fail fast naming the variable that is wrong."""
    try:
        return Settings(_env_file=_env_file(), **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "?"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError(
            "invalid configuration (set these environment variables or add them to .env): "
            + "; ".join(problems)
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached). Use ``load_settings`` for a fresh read."""
    return load_settings()
