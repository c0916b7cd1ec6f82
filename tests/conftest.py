"""Shared fixtures: settings, the real data in ../shared, an in-process S3 (moto) for unit tests."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHICAGO_DATA_DIR", REPO.parent / "shared" / "data" / "chicago"))


def _sign_in_mlflow() -> None:
    """MLflow's client reads its account (MLFLOW_TRACKING_USERNAME/PASSWORD) from os.environ only:
    export the platform's from .env once, before the per-test environment snapshots."""
    from chicago_crime.config import ConfigError, export_mlflow_credentials, load_settings

    # without a usable .env (unit tests pass their own settings) there is nothing to export
    with contextlib.suppress(ConfigError):
        export_mlflow_credentials(load_settings())


_sign_in_mlflow()


def _restore(saved: dict[str, str]) -> None:
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(saved.get("MLFLOW_TRACKING_URI"))
        mlflow.set_registry_uri(saved.get("MLFLOW_REGISTRY_URI"))
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="module")
def _isolate_module_state() -> Iterator[None]:
    """Undo what a test module (its module-scoped fixtures included) leaves in the process.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; left behind, a unit
    test's sqlite store would leak into the settings of the integration tests that follow.
    """
    saved = dict(os.environ)
    yield
    _restore(saved)


@pytest.fixture(autouse=True)
def _isolate_test_state() -> Iterator[None]:
    """The same for each test: environment variables and MLflow's URIs."""
    saved = dict(os.environ)
    yield
    _restore(saved)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real Chicago Data Portal exports (crimes/YYYY-MM.csv.gz, police_stations.csv)."""
    if not (SHARED_DATA / "crimes").is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA} (set CHICAGO_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def replay(shared_data):
    """One Socrata replay server over the real exports for the whole session."""
    from chicago_crime.devtools.replay import ReplayServer

    with ReplayServer(shared_data) as server:
        yield server


@pytest.fixture
def server(replay):
    """The replay server with no faults injected and fresh request counts."""
    replay.clear_faults()
    replay.reset_stats()
    return replay


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An in-process S3 server (moto) for fast unit tests; any credentials are accepted."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def unit_settings(moto_endpoint: str, tmp_path: Path):
    """Settings pointing at the moto S3 server and a fresh bucket per test."""
    from chicago_crime.config import load_settings

    # MLflow 3.17 refuses file:// tracking stores unless this is set (fine for unit tests).
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    bucket = f"test-{os.urandom(4).hex()}"
    return load_settings(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_endpoint_url_s3=moto_endpoint,
        data_repo_bucket_name=bucket,
        mlflow_tracking_uri=f"file://{tmp_path / 'mlruns'}",
    )


@pytest.fixture
def unit_lake(unit_settings):
    """A Lake on a fresh, existing moto bucket."""
    from chicago_crime.lake import Lake

    lake = Lake(settings=unit_settings)
    lake.ensure_bucket()
    return lake


@pytest.fixture(scope="session")
def stack_settings():
    """Settings of the running native stack (.env); integration tests only."""
    from chicago_crime.config import load_settings

    return load_settings()


@pytest.fixture(scope="module")
def served_champion() -> dict[str, Any]:
    """The champion the native stack's API serves (``GET /model``); on a fresh stack it is
    trained first, the demo's way (ETL for 2018-06 through Airflow, then train_model)."""
    from chicago_crime.devtools import demo, stack

    settings = stack.stack_settings()
    if stack.registry_champion(settings)[0] is not True:
        demo.run_demo("2018-06", settings)
    return demo.wait_for_champion(settings, timeout=600)
