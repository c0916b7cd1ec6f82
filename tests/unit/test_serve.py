"""The model server in-process, against a real (sqlite) MLflow registry and a small real model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from chicago_crime.config import Settings, load_settings
from chicago_crime.model import artifact
from chicago_crime.model.registry import ModelCard
from chicago_crime.portal import crimes_export_path, read_export
from chicago_crime.serve.app import create_app
from chicago_crime.serve.model_store import ModelStore

API_KEY = "unit-test-key"


# -- a tiny real model in a real registry -----------------------------------------------------
def portal_records(shared_data: Path, month: str, n: int) -> list[dict[str, Any]]:
    """``n`` records of one month exactly as the SODA API returns them (strings, no NaN)."""
    raw = read_export(crimes_export_path(shared_data, month)).head(n)
    raw = raw.astype(object).where(raw.notna(), None)
    out = raw.to_dict("records")
    for rec in out:  # the API sends booleans as JSON booleans and omits missing fields
        rec["arrest"] = rec["arrest"] == "true"
        rec["domestic"] = rec["domestic"] == "true"
        for key in [k for k, v in rec.items() if v is None]:
            del rec[key]
    return out


def toy_features(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The two columns the toy model reads, typed as the server passes them."""
    return pd.DataFrame({
        "primary_type": [r.get("primary_type") for r in records],
        "domestic": [r.get("domestic") for r in records],
    })


def fit_toy_model(records: list[dict[str, Any]], c: float) -> Pipeline:
    """One-hot(primary_type, domestic) + logistic regression; accepts the raw record frame."""
    y = np.array([r["arrest"] for r in records])
    model = Pipeline([
        ("encode", ColumnTransformer([
            ("onehot", OneHotEncoder(handle_unknown="ignore"), ["primary_type", "domestic"]),
        ])),
        ("classify", LogisticRegression(C=c, max_iter=500)),
    ])
    return model.fit(toy_features(records), y)


@dataclass
class Registry:
    uri: str
    name: str
    models: dict[str, Pipeline]  # version -> the fitted model
    records: list[dict[str, Any]]  # held-out portal records

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.uri, self.uri)

    def set_champion(self, version: str) -> None:
        self.client().set_registered_model_alias(self.name, "champion", version)

    def expected(self, version: str, records: list[dict[str, Any]]) -> np.ndarray:
        typed = [{"primary_type": r["primary_type"],
                  "domestic": (str(r["domestic"]).lower() == "true")
                  if r.get("domestic") is not None else None} for r in records]
        return self.models[version].predict_proba(toy_features(typed))[:, 1]


def build_registry(root: Path, shared_data: Path, name: str = "toy_arrest") -> Registry:
    """Two registered versions of the toy model; version 1 is champion."""
    import mlflow
    import mlflow.sklearn

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("serve-tests", artifact_location=(root / "art").as_uri())
    train = portal_records(shared_data, "2018-01", 3000)
    check_records = portal_records(shared_data, "2018-03", 50)
    models: dict[str, Pipeline] = {}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        for c, with_card in ((1.0, True), (0.01, False)):
            model = fit_toy_model(train, c)
            with mlflow.start_run(experiment_id=experiment):
                info = mlflow.sklearn.log_model(
                    model, name="model", registered_model_name=name,
                    pip_requirements=["scikit-learn"],
                )
                artifact.log_serving_check(model, check_records)
            version = str(info.registered_model_version)
            if with_card:  # version 1 has a model card, version 2 (registered by hand) none
                card = ModelCard(name=name, threshold=0.3, features=("primary_type", "domestic"),
                                 month="2018-01", window_start="2018-01-01",
                                 window_end="2018-01-31", metrics={"roc_auc": 0.8})
                for key, value in card.tags().items():
                    client.set_model_version_tag(name, version, key, value)
            models[version] = model
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    registry = Registry(uri, name, models, portal_records(shared_data, "2018-02", 200))
    registry.set_champion("1")
    return registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Registry:
    return build_registry(tmp_path_factory.mktemp("registry"), shared_data)


def server_settings(registry: Registry, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "mlflow_tracking_uri": registry.uri, "model_name": registry.name,
        "model_poll_seconds": 0, "api_key": API_KEY, "max_batch_records": 50,
        "api_allowed_hosts": "testserver", "model_cache_dir": "",
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def client(registry: Registry) -> Iterator[TestClient]:
    registry.set_champion("1")
    with TestClient(create_app(server_settings(registry))) as test_client:
        yield test_client
    registry.set_champion("1")


# -- predictions ------------------------------------------------------------------------------
def test_predict_portal_record_matches_the_registered_model(client, registry) -> None:
    record = registry.records[0]
    response = client.post("/predict", json=record)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = registry.expected("1", [record])[0]
    assert body["arrest_probability"] == pytest.approx(expected, abs=1e-12)
    assert body["threshold"] == pytest.approx(0.3)
    assert body["arrest"] is bool(expected >= 0.3)
    assert body["model"]["name"] == registry.name and body["model"]["version"] == "1"
    assert body["model"]["run_id"]


def test_typed_and_string_forms_give_the_same_answer(client, registry) -> None:
    record = dict(registry.records[1])
    typed = {**record, "domestic": bool(record["domestic"]), "beat": int(record["beat"]),
             "latitude": float(record.get("latitude", 41.88)),
             "longitude": float(record.get("longitude", -87.63))}
    as_strings = {**typed, "domestic": str(typed["domestic"]).lower(), "beat": str(typed["beat"]),
                  "latitude": str(typed["latitude"]), "longitude": str(typed["longitude"]),
                  "primary_type": f"  {record['primary_type']} ",
                  "location": {"latitude": "41.8", "human_address": "{}"}, "unknown_field": 1}
    a = client.post("/predict", json=typed).json()
    b = client.post("/predict", json=as_strings).json()
    assert a["arrest_probability"] == pytest.approx(b["arrest_probability"], abs=1e-15)


def test_minimal_record_and_date_forms(client) -> None:
    answers = []
    for date in ("2018-03-01T13:00:00.000", "2018-03-01T13:00:00", "2018-03-01T19:00:00Z",
                 "03/01/2018 01:00:00 PM"):
        response = client.post("/predict", json={"date": date, "primary_type": "NARCOTICS"})
        assert response.status_code == 200, (date, response.text)
        answers.append(response.json()["arrest_probability"])
    assert len(set(answers)) == 1


@pytest.mark.parametrize(("patch", "field"), [
    ({"date": None}, "date"),
    ({"date": "yesterday"}, "date"),
    ({"date": 1519909200}, "date"),
    ({"date": "2018-02-30T00:00:00"}, "date"),
    ({"date": "0001-01-01T00:00:00-05:00"}, "date"),
    ({"primary_type": ""}, "primary_type"),
    ({"latitude": 40.7, "longitude": -74.0}, "latitude"),
    ({"latitude": 41.88}, "latitude and longitude"),
    ({"x_coordinate": "0", "y_coordinate": "0"}, "x_coordinate"),
    ({"domestic": "maybe"}, "domestic"),
    ({"beat": "12a"}, "beat"),
    ({"ward": 99}, "ward"),
    ({"iucr": "04-86"}, "iucr"),
])
def test_invalid_records_get_422_naming_the_field(client, patch, field) -> None:
    record = {"date": "2018-03-01T13:00:00.000", "primary_type": "THEFT", **patch}
    record = {k: v for k, v in record.items() if v is not None}
    response = client.post("/predict", json=record)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


def test_malformed_bodies_are_client_errors(client) -> None:
    for content in (b"{", b"[]", b"null", b'"text"', "{\"date\": \"\u00e9\"}".encode()):
        response = client.post("/predict", content=content,
                               headers={"content-type": "application/json"})
        assert response.status_code == 422, content


def test_batch_keeps_order_and_matches_single_predictions(client, registry) -> None:
    records = registry.records[:40]
    response = client.post("/predict/batch", json={"records": records})
    assert response.status_code == 200, response.text
    got = [p["arrest_probability"] for p in response.json()["predictions"]]
    np.testing.assert_allclose(got, registry.expected("1", records), atol=1e-12)
    single = client.post("/predict", json=records[7]).json()["arrest_probability"]
    assert got[7] == pytest.approx(single, abs=1e-12)


def test_batch_errors_name_index_and_field(client, registry) -> None:
    records = [dict(r) for r in registry.records[:5]]
    records[3]["latitude"], records[3]["longitude"] = "91", "-87.6"
    response = client.post("/predict/batch", json={"records": records})
    assert response.status_code == 422
    assert "records[3].latitude" in response.json()["message"]
    too_many = [{"date": "2018-03-01T13:00:00", "primary_type": "THEFT"}] * 51
    response = client.post("/predict/batch", json={"records": too_many})
    assert response.status_code == 422 and "50" in response.json()["message"]
    assert client.post("/predict/batch", json={"records": []}).status_code == 422


def test_body_size_limit(client) -> None:
    big = {"records": [{"date": "2018-03-01T13:00:00", "primary_type": "THEFT",
                        "description": "X" * 150}] * 2000}
    response = client.post("/predict/batch", json=big)
    assert response.status_code == 413
    payload = json.dumps(big).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is checked
        for start in range(0, len(payload), 50_000):
            yield payload[start:start + 50_000]

    response = client.post("/predict/batch", content=chunks(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


# -- model metadata, readiness, reload ------------------------------------------------------------
def test_health_ready_and_model_info(client, registry) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = client.get("/model").json()
    assert info["version"] == "1" and info["alias"] == "champion"
    assert info["threshold"] == pytest.approx(0.3) and info["threshold_source"] == "model card"
    assert info["metrics"] == {"roc_auc": pytest.approx(0.8)}
    assert info["training_window"] == {"start": "2018-01-01", "end": "2018-01-31"}
    assert info["month"] == "2018-01"
    assert info["predictor"] == "pandas"
    assert info["features"] == ["primary_type", "domestic"]


def test_reload_requires_the_api_key(client, registry) -> None:
    assert client.post("/model/reload").status_code == 401
    assert client.post("/model/reload", headers={"X-API-Key": "wrong"}).status_code == 403
    ok = client.post("/model/reload", headers={"X-API-Key": API_KEY})
    assert ok.status_code == 200 and ok.json()["changed"] is False


def test_reload_disabled_without_a_configured_key(registry) -> None:
    with TestClient(create_app(server_settings(registry, api_key=None))) as c:
        assert c.post("/model/reload", headers={"X-API-Key": "x"}).status_code == 503


def test_alias_move_hot_swaps_on_reload(client, registry) -> None:
    record = registry.records[2]
    before = client.post("/predict", json=record).json()
    registry.set_champion("2")
    response = client.post("/model/reload", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200 and response.json()["changed"] is True
    after = client.post("/predict", json=record).json()
    assert before["model"]["version"] == "1" and after["model"]["version"] == "2"
    assert after["arrest_probability"] == pytest.approx(
        registry.expected("2", [record])[0], abs=1e-12)
    assert after["threshold"] == pytest.approx(0.5)  # version 2 has no model card
    info = client.get("/model").json()
    assert info["threshold_source"] == "default"
    assert info["features"] is None and info["training_window"] == {"start": None, "end": None}


def test_in_flight_requests_survive_hot_swaps(client, registry) -> None:
    records = registry.records[:20]
    expected = {v: registry.expected(v, records) for v in ("1", "2")}
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = client.post("/predict/batch", json={"records": records})
            if r.status_code != 200:
                failures.append(r.text)
                continue
            body = r.json()
            got = [p["arrest_probability"] for p in body["predictions"]]
            if not np.allclose(got, expected[body["model"]["version"]], atol=1e-12):
                failures.append(f"mixed versions in one response: {body['model']}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in ("2", "1", "2", "1"):
            registry.set_champion(version)
            assert client.post("/model/reload", headers={"X-API-Key": API_KEY}).json()["changed"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []


def test_no_champion_answers_503_with_instructions(registry) -> None:
    settings = server_settings(registry, model_name="never_trained")
    with TestClient(create_app(settings)) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert "champion" in ready.json()["message"]
        predict = c.post("/predict", json={"date": "2018-03-01T13:00:00", "primary_type": "X"})
        assert predict.status_code == 503 and "champion" in predict.json()["detail"]
        assert c.get("/model").status_code == 503
        assert c.get("/health").status_code == 200


def test_unreachable_registry_keeps_serving_and_reports_degraded(registry) -> None:
    store = ModelStore(server_settings(registry))
    with TestClient(create_app(store.settings, store=store)) as c:
        assert c.get("/ready").json()["status"] == "ready"

        def broken_client() -> Any:
            raise ConnectionError("registry down")

        store._client = broken_client  # type: ignore[method-assign]
        reload = c.post("/model/reload", headers={"X-API-Key": API_KEY})
        assert reload.status_code == 503 and "unreachable" in reload.json()["detail"]
        ready = c.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert "registry down" in ready.json()["last_error"]
        assert c.post("/predict", json=registry.records[0]).status_code == 200


def test_registry_down_at_startup_is_not_ready(registry) -> None:
    settings = server_settings(registry, mlflow_tracking_uri="http://127.0.0.1:9")
    with TestClient(create_app(settings)) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["registry_reachable"] is False
        assert "could not be read" in ready.json()["message"]


def test_polling_picks_up_alias_moves(registry) -> None:
    import time

    registry.set_champion("1")
    store = ModelStore(server_settings(registry, model_poll_seconds=0.2))
    store.start()
    try:
        assert store.current is not None and store.current.version == "1"
        registry.set_champion("2")
        for _ in range(100):  # wait for the poller (bounded), no timing assertion
            if store.current.version == "2":
                break
            time.sleep(0.1)
        assert store.current.version == "2"
    finally:
        store.stop()
        registry.set_champion("1")


# -- metrics and docs --------------------------------------------------------------------------
def test_prometheus_metrics(client, registry) -> None:
    client.post("/predict", json=registry.records[0])
    client.post("/predict/batch", json={"records": registry.records[:10]})
    client.post("/predict", json={"date": "bad", "primary_type": "X"})
    text = client.get("/metrics").text
    assert 'http_requests_total{handler="/predict",method="POST",status="200"} 1.0' in text
    assert 'http_requests_total{handler="/predict",method="POST",status="422"} 1.0' in text
    assert 'http_request_duration_seconds_count{handler="/predict/batch",method="POST"} 1.0' \
        in text
    counted = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("predictions_total{")
    )
    assert counted == 11
    assert f'model_version{{model_name="{registry.name}"}} 1.0' in text
    assert "model_registry_reachable 1.0" in text and "model_ready 1.0" in text


def test_docs_work_offline(client) -> None:
    html = client.get("/docs").text
    assert "/static/swagger-ui-bundle.js" in html and "/static/swagger-ui.css" in html
    assert "cdn" not in html.lower()
    js = client.get("/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    assert client.get("/static/swagger-ui.css").status_code == 200
    assert b"5." in js.content[:2000] or b"swagger" in js.content[:2000].lower()
    schema = client.get("/openapi.json").json()
    batch = schema["components"]["schemas"]["BatchRequest"]["properties"]["records"]
    assert batch["maxItems"] == 50
    record = schema["components"]["schemas"]["CrimeRecord"]
    assert record["required"] == ["date", "primary_type"]
    assert record["examples"][0]["primary_type"] == "BATTERY"
