"""The model server with real MLflow servers: the stack's registry and a private one we stop.

Models are registered under unique throwaway names (never the platform's ``chicago_arrest``)
and deleted afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from chicago_crime.model.registry import ModelCard
from chicago_crime.portal import crimes_export_path, read_export
from chicago_crime.serve.app import create_app

pytestmark = pytest.mark.integration
API_KEY = "integration-key"


def records(shared_data: Path, month: str, n: int) -> list[dict[str, Any]]:
    raw = read_export(crimes_export_path(shared_data, month)).head(n)
    raw = raw.astype(object).where(raw.notna(), None)
    out = []
    for rec in raw.to_dict("records"):
        rec["arrest"], rec["domestic"] = rec["arrest"] == "true", rec["domestic"] == "true"
        out.append({k: v for k, v in rec.items() if v is not None})
    return out


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({"primary_type": [r["primary_type"] for r in recs],
                         "iucr": [r["iucr"] for r in recs],
                         "domestic": [r["domestic"] for r in recs]})


def fit(recs: list[dict[str, Any]], c: float) -> Pipeline:
    model = Pipeline([
        ("encode", ColumnTransformer([("onehot", OneHotEncoder(handle_unknown="ignore"),
                                       ["primary_type", "iucr", "domestic"])])),
        ("classify", LogisticRegression(C=c, max_iter=1000)),
    ])
    return model.fit(frame(recs), np.array([r["arrest"] for r in recs]))


def register(uri: str, name: str, model: Pipeline, threshold: float,
             check: list[dict[str, Any]]) -> str:
    """Log (skops) and register ``model`` with its serving check on ``check`` records."""
    import mlflow
    import mlflow.sklearn

    from chicago_crime.model import artifact

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        mlflow.set_experiment(f"serve-integration-{name}")
        with mlflow.start_run():
            mlflow.log_metrics({"threshold": threshold, "test_roc_auc": 0.8})
            mlflow.log_params({"window_start": "2018-01-01", "window_end": "2018-01-31"})
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                            pip_requirements=["scikit-learn"])
            artifact.log_serving_check(model, check)
        card = ModelCard(name=name, threshold=threshold, window_start="2018-01-01",
                         window_end="2018-01-31", metrics={"roc_auc": 0.8})
        client = mlflow.MlflowClient(uri, uri)
        for key, value in card.tags().items():
            client.set_model_version_tag(name, str(info.registered_model_version), key, value)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return str(info.registered_model_version)


def set_champion(uri: str, name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(uri, uri).set_registered_model_alias(name, "champion", version)


def settings_for(base: Any, uri: str, name: str, poll: float) -> Any:
    """The stack's settings with this test's registry, model name and poll interval."""
    from chicago_crime.config import load_settings

    return load_settings(**{
        **base.model_dump(), "mlflow_tracking_uri": uri, "model_name": name,
        "model_poll_seconds": poll, "api_key": API_KEY, "api_allowed_hosts": "testserver",
        "model_cache_dir": "",
    })


def wait_for(predicate: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


@pytest.fixture(scope="module")
def data(shared_data: Path) -> dict[str, Any]:
    train = records(shared_data, "2018-01", 3000)
    return {"train": train, "test": records(shared_data, "2018-02", 50)}


def test_stack_registry_no_champion_then_load_then_hot_swap(stack_settings, data) -> None:
    uri = stack_settings.mlflow_tracking_uri
    name = f"it_serve_{uuid.uuid4().hex[:8]}"
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    try:
        with TestClient(create_app(settings_for(stack_settings, uri, name, poll=1.0))) as c:
            ready = c.get("/ready")
            assert ready.status_code == 503 and "champion" in ready.json()["message"]
            assert c.post("/predict", json=data["test"][0]).status_code == 503

            m1, m2 = fit(data["train"], 1.0), fit(data["train"], 0.01)
            v1 = register(uri, name, m1, 0.3, data["test"])
            set_champion(uri, name, v1)
            reload = c.post("/model/reload", headers={"X-API-Key": API_KEY})
            assert reload.status_code == 200 and reload.json()["model"]["version"] == v1
            batch = c.post("/predict/batch", json={"records": data["test"]}).json()
            got = [p["arrest_probability"] for p in batch["predictions"]]
            np.testing.assert_allclose(got, m1.predict_proba(frame(data["test"]))[:, 1],
                                       atol=1e-12)
            info = c.get("/model").json()
            assert info["threshold"] == pytest.approx(0.3)
            assert info["training_window"]["start"] == "2018-01-01"

            v2 = register(uri, name, m2, 0.25, data["test"])
            set_champion(uri, name, v2)  # the poller (1 s) must pick it up: no reload call
            assert wait_for(lambda: c.get("/model").json()["version"] == v2)
            one = c.post("/predict", json=data["test"][0]).json()
            assert one["model"]["version"] == v2
            assert one["arrest_probability"] == pytest.approx(
                m2.predict_proba(frame(data["test"][:1]))[0, 1], abs=1e-12)
    finally:
        client.delete_registered_model(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMlflow:
    """A private MLflow server (sqlite + served artifacts) a test may stop and start again
    (same port, same stores)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> None:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", (self.root / "artifacts").as_uri(), "--serve-artifacts",
             "--workers", "1"],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        assert wait_for(self.up, timeout=120), "private MLflow server did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[PrivateMlflow]:
    server = PrivateMlflow(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_mlflow(mlflow_server: PrivateMlflow) -> tuple[str, subprocess.Popen[bytes]]:
    assert mlflow_server.proc is not None
    return mlflow_server.uri, mlflow_server.proc


def test_mlflow_stopped_mid_way_keeps_serving(stack_settings, data, private_mlflow) -> None:
    uri, proc = private_mlflow
    name = "it_serve_stop"
    model = fit(data["train"], 1.0)
    set_champion(uri, name, register(uri, name, model, 0.3, data["test"]))
    with TestClient(create_app(settings_for(stack_settings, uri, name, poll=0.5))) as c:
        assert c.get("/ready").json()["status"] == "ready"
        proc.terminate()
        proc.wait(timeout=30)
        assert wait_for(lambda: c.get("/ready").json()["status"] == "degraded", timeout=60)
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["registry_reachable"] is False
        assert ready.json()["last_error"]
        response = c.post("/predict", json=data["test"][0])
        assert response.status_code == 200
        assert response.json()["arrest_probability"] == pytest.approx(
            model.predict_proba(frame(data["test"][:1]))[0, 1], abs=1e-12)
        reload = c.post("/model/reload", headers={"X-API-Key": API_KEY})
        assert reload.status_code == 503
        assert "model_registry_reachable 0.0" in c.get("/metrics").text


def test_restarted_while_mlflow_is_down_serves_the_verified_local_copy(
        stack_settings, data, mlflow_server, tmp_path) -> None:
    """Cold start without the registry (issue 17.3): the local copy the last run kept is
    verified and served (degraded); when MLflow is back the server follows the registry."""
    uri, name = mlflow_server.uri, "it_serve_cold"
    m1, m2 = fit(data["train"], 1.0), fit(data["train"], 0.01)
    set_champion(uri, name, register(uri, name, m1, 0.3, data["test"]))
    settings = settings_for(stack_settings, uri, name, poll=0.5).model_copy(
        update={"model_cache_dir": str(tmp_path / "cache")})
    with TestClient(create_app(settings)) as c:
        assert c.get("/ready").json()["status"] == "ready"
    mlflow_server.stop()
    started = time.monotonic()
    with TestClient(create_app(settings)) as c:  # a restart while MLflow is down
        ready = c.get("/ready")
        print(f"\n[figures] cold start without MLflow: ready in "
              f"{time.monotonic() - started:.1f}s")
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded", body
        assert body["origin"] == "cache" and body["registry_reachable"] is False
        got = c.post("/predict/batch", json={"records": data["test"]}).json()
        np.testing.assert_allclose([p["arrest_probability"] for p in got["predictions"]],
                                   m1.predict_proba(frame(data["test"]))[:, 1], atol=1e-12)
        mlflow_server.start()  # the registry answers again: confirmed, then followed
        assert wait_for(lambda: c.get("/ready").json()["status"] == "ready", timeout=60)
        assert c.get("/ready").json()["origin"] == "registry"
        v2 = register(uri, name, m2, 0.25, data["test"])
        set_champion(uri, name, v2)
        assert wait_for(lambda: c.get("/model").json()["version"] == v2)
