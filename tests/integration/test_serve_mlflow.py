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


def register(uri: str, name: str, model: Pipeline, threshold: float) -> str:
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        mlflow.set_experiment(f"serve-integration-{name}")
        with mlflow.start_run():
            mlflow.log_metrics({"threshold": threshold, "test_roc_auc": 0.8})
            mlflow.log_params({"window_start": "2018-01-01", "window_end": "2018-01-31"})
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name,
                                            pip_requirements=["scikit-learn"])
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
        "model_poll_seconds": poll, "api_key": API_KEY,
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
            v1 = register(uri, name, m1, 0.3)
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

            v2 = register(uri, name, m2, 0.25)
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


@pytest.fixture
def private_mlflow(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private MLflow server (sqlite + served artifacts) the test may stop."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--serve-artifacts",
         "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{uri}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, timeout=120), "private MLflow server did not start"
        yield uri, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_mlflow_stopped_mid_way_keeps_serving(stack_settings, data, private_mlflow) -> None:
    uri, proc = private_mlflow
    name = "it_serve_stop"
    model = fit(data["train"], 1.0)
    set_champion(uri, name, register(uri, name, model, 0.3))
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
