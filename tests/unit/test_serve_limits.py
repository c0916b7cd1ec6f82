"""API hardening in-process: hostile JSON gets 422s naming the field (never a 500), foreign
Hosts get 400, bodies are bounded by the largest legal batch while they stream, errors are
capped, load is limited with Retry-After, requests time out, dependencies stay off the thread
pool."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_serve import fit_toy_model, portal_records

from chicago_crime.config import load_settings
from chicago_crime.model.predict import make_predictor
from chicago_crime.model.registry import ModelCard
from chicago_crime.serve import deps
from chicago_crime.serve.app import MAX_ERRORS, create_app
from chicago_crime.serve.limits import RECORD_JSON_BYTES, allowed_hosts, batch_body_limit
from chicago_crime.serve.model_store import LoadedModel, ModelStore, RefreshOutcome

GOOD = {"date": "2018-03-01T13:00:00.000", "primary_type": "THEFT"}


class StaticStore(ModelStore):
    """A store holding one in-memory model; the registry is never contacted."""

    def refresh(self, *, force: bool = False) -> RefreshOutcome:
        self.registry_reachable = True
        return RefreshOutcome(False, "static model")


class SlowPredictor:
    kind = "pandas"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict_proba_records(self, records: Any) -> list[float]:
        time.sleep(self.seconds)
        return [0.5] * len(records)


@pytest.fixture(scope="module")
def toy(shared_data: Path) -> Any:
    return fit_toy_model(portal_records(shared_data, "2018-01", 2000), c=1.0)


def settings_for(**overrides: Any) -> Any:
    values = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
              "mlflow_tracking_uri": "http://127.0.0.1:9", "model_poll_seconds": 0,
              "api_key": "k", "max_batch_records": 200, "api_allowed_hosts": "testserver",
              "model_cache_dir": ""}
    return load_settings(**{**values, **overrides})


def app_for(model: Any, predictor: Any = None, **overrides: Any) -> Any:
    settings = settings_for(**overrides)
    store = StaticStore(settings)
    store._current = LoadedModel(
        card=ModelCard(name="toy", version="1", run_id="r1", threshold=0.3), source="memory",
        model=model, predictor=predictor or make_predictor(model), version_tags={})
    return create_app(settings, store=store)


@pytest.fixture
def client(toy: Any) -> Iterator[TestClient]:
    with TestClient(app_for(toy)) as c:
        yield c


def post_raw(c: TestClient, path: str, body: bytes | str) -> Any:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return c.post(path, content=data, headers={"content-type": "application/json"})


# -- B: hostile JSON ------------------------------------------------------------------------------
BASE = '{"date": "2018-03-01T13:00:00", "primary_type": "THEFT"'
HOSTILE_FIELDS = [  # (raw JSON of one record, the field the 422 must name)
    (BASE + ', "ward": NaN}', "ward"),
    (BASE + ', "ward": Infinity}', "ward"),
    (BASE + ', "beat": -Infinity}', "beat"),
    (BASE + ', "ward": 1e999}', "ward"),
    (BASE + ', "latitude": -1e999, "longitude": -87.6}', "latitude"),
    (BASE + ', "latitude": NaN, "longitude": NaN}', "latitude"),
    (BASE + ', "x_coordinate": Infinity, "y_coordinate": 1900000}', "x_coordinate"),
    (BASE + ', "domestic": NaN}', "domestic"),
    (BASE + ', "description": NaN}', "description"),
    ('{"date": "\\ud800", "primary_type": "THEFT"}', "date"),
    ('{"date": "2018-03-01T13:00:00", "primary_type": "\\udfff\\ud800"}', "primary_type"),
    (BASE + ', "description": "a\\udc80b"}', "description"),
    (BASE + ', "ward": ' + "9" * 5000 + "}", "ward"),
    (BASE + ', "beat": -' + "1" * 4400 + "}", "beat"),
    (BASE + ', "community_area": 100000000000000000000000000000}', "community_area"),
    (BASE + ', "iucr": 1e999}', "iucr"),
    (BASE + ', "ward": [1, 2]}', "ward"),
    (BASE + ', "ward": {"$gt": 1}}', "ward"),
    (BASE + ', "domestic": {"a": [[[[{}]]]]}}', "domestic"),
    (BASE + ', "fbi_code": true}', "fbi_code"),
    ('{"date": {"nested": ["junk", {"x": null}]}, "primary_type": "THEFT"}', "date"),
    ('{"date": 1e999, "primary_type": "THEFT"}', "date"),
    ('{"date": "2018-03-01T13:00:00", "primary_type": ["THEFT"]}', "primary_type"),
    ('{"date": "2018-03-01T13:00:00", "primary_type": Infinity}', "primary_type"),
]


@pytest.mark.parametrize(("raw", "field"), HOSTILE_FIELDS)
def test_hostile_values_get_a_422_naming_the_field(client, raw: str, field: str) -> None:
    response = post_raw(client, "/predict", raw)
    assert response.status_code == 422, response.text
    body = response.json()
    assert any(e["field"] == field for e in body["detail"]), body
    assert field in body["message"]
    batch = post_raw(client, "/predict/batch", f'{{"records": [{json.dumps(GOOD)}, {raw}]}}')
    assert batch.status_code == 422, batch.text
    assert f"records[1].{field}" in batch.json()["message"]


@pytest.mark.parametrize("raw", [
    b"{", b"[]", b"null", b'"text"', b"NaN", b"1e999", b"\xff\xfe\x00", b'{"date": "\xc3"}',
    b"[" * 7_000 + b"]" * 7_000, b'{"a":' * 2_500 + b"1" + b"}" * 2_500,
    b'{"records": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", b"\x00" * 100,
    b'{"date": "2018-03-01T13:00:00", "primary_type": "X"', b"{} {}",
])
def test_malformed_bodies_get_422_never_400_or_500(client, raw: bytes) -> None:
    for path in ("/predict", "/predict/batch"):
        response = post_raw(client, path, raw)
        assert response.status_code == 422, (path, raw[:40], response.text[:300])
        assert response.json()["detail"][0]["field"] in ("body", "records")


def test_valid_records_still_score_with_every_form(client) -> None:
    record = {**GOOD, "ward": "29", "beat": 1533, "latitude": "41.87", "longitude": -87.74,
              "domestic": "true", "description": "", "unknown": float("nan")}
    response = client.post("/predict", content=json.dumps(record),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text  # NaN in an ignored field is ignored


def test_error_list_is_capped_with_a_count(client) -> None:
    records = [{"date": "bad", "primary_type": ""} for _ in range(150)]
    response = client.post("/predict/batch", json={"records": records})
    assert response.status_code == 422
    body = response.json()
    assert len(body["detail"]) == MAX_ERRORS and body["error_count"] == 300
    assert "... 290 more" in body["message"]
    assert len(response.content) < 10_000


# -- B: hosts -------------------------------------------------------------------------------------
def test_a_foreign_host_gets_400(client) -> None:
    for host in ("rebind.evil.example", "evil.example:8800", "127.0.0.1.nip.io", ""):
        for method, path in (("GET", "/model"), ("GET", "/ready"), ("POST", "/predict")):
            response = client.request(method, path, headers={"host": host}, json=GOOD)
            assert response.status_code == 400, (host, path, response.status_code)
    for host in ("localhost:8800", "127.0.0.1", "testserver"):
        assert client.get("/model", headers={"host": host}).status_code == 200, host


def test_allowed_hosts_come_from_the_configuration() -> None:
    local = allowed_hosts(settings_for(api_allowed_hosts=""))
    assert {"localhost", "127.0.0.1"} <= set(local) and "testserver" not in local
    composed = allowed_hosts(settings_for(api_allowed_hosts="").model_copy(
        update={"api_url": "http://fastapi:8800", "bind_host": "10.1.2.3"}))
    assert {"fastapi", "10.1.2.3"} <= set(composed)
    extra = allowed_hosts(settings_for(api_allowed_hosts=" api.example.org, *.corp.example "))
    assert {"api.example.org", "*.corp.example"} <= set(extra)
    assert allowed_hosts(settings_for(api_allowed_hosts="*")) == ["*"]


# -- B: body size ---------------------------------------------------------------------------------
def test_the_largest_legal_batch_passes_and_more_is_refused_while_streaming(toy) -> None:
    settings = settings_for(max_batch_records=100)
    limit = batch_body_limit(settings)
    assert limit == 100 * RECORD_JSON_BYTES + 4_096
    with TestClient(app_for(toy, max_batch_records=100)) as c:
        widest = {**GOOD, "description": "D" * 200, "location_description": "L" * 200,
                  "block": "B" * 60, "case_number": "JB515687", "id": "11507074"}
        full = json.dumps({"records": [widest] * 100}).encode()
        assert len(full) <= limit
        assert post_raw(c, "/predict/batch", full).status_code == 200
        padded = b'{"records": [' + b",".join([b"{}"] * (limit // 3)) + b"]}"
        assert len(padded) > limit
        assert post_raw(c, "/predict/batch", padded).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            for start in range(0, len(padded), 8_192):
                yield padded[start:start + 8_192]

        response = c.post("/predict/batch", content=chunks(),
                          headers={"content-type": "application/json"})
        assert response.status_code == 413
        single = json.dumps({**GOOD, "junk": "x" * 20_000}).encode()
        assert post_raw(c, "/predict", single).status_code == 413  # one record's worth only
        assert post_raw(c, "/predict", json.dumps(widest)).status_code == 200


# -- B: load --------------------------------------------------------------------------------------
def _parallel(c: TestClient, n: int) -> list[Any]:
    out: list[Any] = [None] * n

    def call(i: int) -> None:
        out[i] = c.post("/predict", json=GOOD)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    return out


def test_over_the_concurrency_limit_requests_get_503_with_retry_after(toy) -> None:
    app = app_for(toy, SlowPredictor(1.0), api_max_concurrency=1, api_max_queue=0)
    with TestClient(app) as c:
        first, second = _parallel(c, 2)
        assert first.status_code == 200
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert "busy" in second.json()["detail"]
        assert c.get("/health").status_code == 200  # probes are never shed
    queued = app_for(toy, SlowPredictor(0.5), api_max_concurrency=1, api_max_queue=4,
                     api_queue_seconds=10)
    with TestClient(queued) as c:
        assert [r.status_code for r in _parallel(c, 3)] == [200, 200, 200]  # waited their turn


def test_a_request_over_the_time_limit_gets_503(toy) -> None:
    app = app_for(toy, SlowPredictor(1.5), api_request_timeout_seconds=0.3)
    with TestClient(app) as c:
        response = c.post("/predict", json=GOOD)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "API_REQUEST_TIMEOUT_SECONDS" in response.json()["detail"]
        assert c.get("/ready").status_code == 200


# -- D: no dependency in the thread pool ----------------------------------------------------------
def test_every_dependency_of_the_request_path_is_async(toy) -> None:
    app = app_for(toy)
    seen = []

    def walk(dependant: Any) -> None:
        for sub in dependant.dependencies:
            if sub.call is not None and getattr(sub.call, "__module__", "") == deps.__name__:
                seen.append(sub.call.__name__)
                assert inspect.iscoroutinefunction(sub.call), sub.call.__name__
            walk(sub)

    for route in app.routes:
        if getattr(route, "dependant", None) is not None:
            walk(route.dependant)
    assert {"_store", "_model", "_metrics", "_batch", "require_api_key"} <= set(seen)


def test_a_fast_prediction_never_touches_the_thread_pool(toy, monkeypatch) -> None:
    import anyio.to_thread

    class Fast:
        kind = "fast"

        def predict_proba_records(self, records: Any) -> list[float]:
            return [0.25] * len(records)

    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__name__", str(func)))
        return await real(func, *args, **kwargs)

    with TestClient(app_for(toy, Fast())) as c:
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
        for _ in range(5):
            assert c.post("/predict", json=GOOD).json()["arrest_probability"] == 0.25
    assert calls == [], calls
    assert asyncio.iscoroutinefunction(deps._model)


def test_an_artifacts_text_in_a_refusal_cannot_break_ready_or_model(toy) -> None:
    from chicago_crime.model.artifact import ModelRefused

    app = app_for(toy)
    store = app.state.store
    with TestClient(app) as c:
        store.champion_failure = store._remember_failure(
            "9", ModelRefused("it is logged as \ud800\x00" + "x" * 5000))
        for path in ("/ready", "/model"):
            response = c.get(path)
            assert response.status_code == 200, response.text
            refused = response.json()["champion_refused"]
            assert refused["version"] == "9" and "\\ud800" in refused["reason"]
            assert len(refused["reason"]) <= 500
