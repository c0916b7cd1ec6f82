"""The model server under attack on the running native stack: a crafted pickle model aliased
champion, a hostile JSON corpus, foreign Host headers, oversized bodies."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from chicago_crime.devtools import demo, stack
from chicago_crime.model import artifact, registry

pytestmark = [pytest.mark.security, pytest.mark.timeout(2400)]
MONTH = "2018-06"


class Payload:
    """Unpickling this creates ``path`` (any code would run the same way)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def s():
    return stack.stack_settings()


@pytest.fixture(scope="module")
def champion(served_champion) -> dict[str, Any]:
    """The served champion (the demo's path trains one on a fresh stack)."""
    return served_champion


def api(s, path: str) -> str:
    return f"http://127.0.0.1:{s.fastapi_port}{path}"


def until(predicate: Callable[[], bool], timeout: float = 120.0, steady: int = 6) -> bool:
    """``predicate`` true ``steady`` times in a row (each API worker answers some reads)."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        streak = streak + 1 if predicate() else 0
        if streak >= steady:
            return True
        time.sleep(0.5)
    return False


def test_a_pickled_champion_never_runs_and_the_previous_one_keeps_serving(s, champion,
                                                                          tmp_path, monkeypatch):
    import mlflow
    import mlflow.sklearn

    marker = Path(f"/tmp/secprobe-model-rce-{uuid.uuid4().hex[:8]}")
    uri, name, key = s.mlflow_tracking_uri, s.model_name, s.api_key.get_secret_value()
    client = mlflow.MlflowClient(uri, uri)
    previous = str(client.get_model_version_by_alias(name, s.champion_alias).version)
    assert previous == str(champion["version"])
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("secprobe")
    check = client.download_artifacts(champion["run_id"], artifact.SERVING_CHECK_ARTIFACT,
                                      str(tmp_path))
    with mlflow.start_run() as run:  # a faithful copy of the champion's serving check too
        info = mlflow.sklearn.log_model(Payload(str(marker)), name="model",
                                        serialization_format="cloudpickle", pip_requirements=[])
        mlflow.log_artifact(check)
    crafted = client.create_model_version(name, info.model_uri, run_id=run.info.run_id,
                                          model_id=info.model_id).version
    headers = {"X-API-Key": key}

    def refused() -> bool:
        requests.post(api(s, "/model/reload"), headers=headers, timeout=60)
        body = requests.get(api(s, "/ready"), timeout=10).json()
        return (body.get("champion_refused") or {}).get("version") == str(crafted)

    try:
        client.set_registered_model_alias(name, s.champion_alias, crafted)
        assert until(refused), requests.get(api(s, "/ready"), timeout=10).text
        ready = requests.get(api(s, "/ready"), timeout=10)
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded"
        assert body["model"]["version"] == previous
        assert "cloudpickle" in body["champion_refused"]["reason"]
        assert "cloudpickle" in body["message"] and f"version {crafted}" in body["message"]
        model = requests.get(api(s, "/model"), timeout=10).json()
        assert model["version"] == previous and model["champion_refused"]["version"] == crafted
        for _ in range(20):
            one = requests.post(api(s, "/predict"), json=demo.EXAMPLE_RECORD, timeout=30)
            assert one.status_code == 200 and one.json()["model"]["version"] == previous
        # the training gate's loader (the Celery worker's) refuses it too
        with pytest.raises(artifact.ModelRefused, match="cloudpickle"):
            registry.load_version(name, str(crafted), tracking_uri=uri)
        assert not marker.exists(), "the crafted model's payload ran"
    finally:
        client.set_registered_model_alias(name, s.champion_alias, previous)
        assert until(lambda: requests.post(api(s, "/model/reload"), headers=headers, timeout=60)
                     .ok and requests.get(api(s, "/ready"), timeout=10).json()["status"]
                     == "ready")
        # deleting needs MANAGE: the MLflow admin's account (the platform's may only edit)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", s.mlflow_admin_username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", s.mlflow_admin_password.get_secret_value())
        mlflow.MlflowClient(uri, uri).delete_model_version(name, crafted)
    assert not marker.exists()


BASE = '{"date": "2018-03-01T13:00:00", "primary_type": "THEFT"'
HOSTILE = [
    BASE + ', "ward": NaN}', BASE + ', "ward": Infinity}', BASE + ', "beat": -Infinity}',
    BASE + ', "ward": 1e999}', BASE + ', "latitude": -1e999, "longitude": -87.6}',
    '{"date": "\\ud800", "primary_type": "THEFT"}', BASE + ', "description": "\\udfff"}',
    BASE + ', "ward": ' + "9" * 5000 + "}", BASE + ', "ward": {"$gt": ""}}',
    BASE + ', "domestic": [[[[[]]]]]}', '{"date": {"a": [1, {"b": null}]}, "primary_type": 1}',
    "{", "[]", "null", "NaN", '"\\ud800"', "[" * 5000 + "]" * 5000,
    '{"a":' * 2000 + "1" + "}" * 2000, BASE + "}" + "}" * 10,
]


def test_a_hostile_json_corpus_gets_client_errors_only(s, champion):
    statuses: dict[int, int] = {}
    for raw in HOSTILE:
        body = raw.encode("utf-8", "surrogatepass")
        for path, data in (("/predict", body), ("/predict/batch", b'{"records": [' + body
                                                  + b"]}")):
            r = requests.post(api(s, path), data=data, timeout=60,
                              headers={"Content-Type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert 400 <= r.status_code < 500, (path, raw[:60], r.status_code, r.text[:200])
            assert r.status_code == 422, (path, raw[:60], r.text[:200])
            assert r.json()["detail"][0]["field"]
    print(f"\n[figures] hostile corpus: {sum(statuses.values())} requests, statuses {statuses}")
    huge = b'{"records": [' + b",".join([b"{}"] * 8_000_000) + b"]}"  # 24 MB of nothing
    try:
        r = requests.post(api(s, "/predict/batch"), data=huge, timeout=120,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 413
    except requests.ConnectionError:  # answered 413 and closed before the upload ended
        pass
    assert requests.get(api(s, "/health"), timeout=5).status_code == 200
    many = {"records": [{"date": "x", "primary_type": ""}] * 2000}
    r = requests.post(api(s, "/predict/batch"), json=many, timeout=120)
    assert r.status_code == 422 and len(r.json()["detail"]) == 20
    assert r.json()["error_count"] == 4000 and len(r.content) < 20_000
    ok = requests.post(api(s, "/predict"), json=demo.EXAMPLE_RECORD, timeout=30)
    assert ok.status_code == 200  # positive control: the same server scores a real record


def test_a_foreign_host_gets_400(s, champion):
    for host in ("rebind.evil.example", f"evil.example:{s.fastapi_port}", "localhost.evil"):
        for method, path in (("GET", "/model"), ("GET", "/ready"), ("POST", "/predict")):
            r = requests.request(method, api(s, path), headers={"Host": host},
                                 json=demo.EXAMPLE_RECORD, timeout=30)
            assert r.status_code == 400, (host, path, r.status_code)
    for host in (f"localhost:{s.fastapi_port}", f"127.0.0.1:{s.fastapi_port}"):
        r = requests.get(api(s, "/model"), headers={"Host": host}, timeout=30)
        assert r.status_code == 200, host
