"""No code execution from artifacts, refusals with reasons, backoff, and the local copy that
serves while the registry is down (in-process sqlite MLflow, real toy models, real data)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator, ClassifierMixin
from test_serve import API_KEY, Registry, build_registry, server_settings

from chicago_crime.model import artifact, registry
from chicago_crime.model.artifact import ModelRefused
from chicago_crime.serve import model_cache
from chicago_crime.serve.app import create_app
from chicago_crime.serve.model_store import ModelStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Payload:
    """Unpickling this creates ``path``: the stand-in for any code an attacker runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


class Gadget(BaseEstimator, ClassifierMixin):
    """A classifier type the server never declared trusted."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def fit(self, X: Any, y: Any) -> Gadget:
        self.classes_ = np.array([False, True])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.tile([1 - self.p, self.p], (len(X), 1))


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Registry:
    return build_registry(tmp_path_factory.mktemp("safety"), shared_data, name="safety_arrest")


def log_version(reg: Registry, model: Any, *, check: dict[str, Any] | None = None,
                **kwargs: Any) -> str:
    """Register ``model`` as a new version of ``reg.name`` (``kwargs`` to log_model)."""
    mlflow.set_tracking_uri(reg.uri)
    mlflow.set_registry_uri(reg.uri)
    try:
        with mlflow.start_run(experiment_id=reg.client().get_experiment_by_name(
                "serve-tests").experiment_id):
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=reg.name,
                                            pip_requirements=[], **kwargs)
            if check is not None:
                mlflow.log_dict(check, artifact.SERVING_CHECK_ARTIFACT)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return str(info.registered_model_version)


def a_check(reg: Registry, version: str = "1") -> dict[str, Any]:
    """A valid serving check of ``version``'s model (for attackers who copy one)."""
    return artifact.serving_check(reg.models[version], reg.records[:20])


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "model-cache"


def started(reg: Registry, cache_dir: Path, **overrides: Any) -> ModelStore:
    store = ModelStore(server_settings(reg, model_cache_dir=str(cache_dir), **overrides))
    store.start()
    return store


# -- A: nothing from an artifact runs -----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["cloudpickle", "pickle"])
def test_a_pickled_champion_never_runs_and_the_previous_one_keeps_serving(
        reg, tmp_path, cache_dir, fmt, monkeypatch) -> None:
    marker = tmp_path / f"pwned-{fmt}"
    crafted = log_version(reg, Payload(marker), serialization_format=fmt, check=a_check(reg))
    # positive control: MLflow's own loader, allowed to unpickle, runs the payload
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    mlflow.set_registry_uri(reg.uri)
    (tmp_path / "ctl").mkdir()
    mlflow.sklearn.load_model(f"models:/{reg.name}/{crafted}", dst_path=str(tmp_path / "ctl"))
    mlflow.set_registry_uri(None)
    assert marker.exists()
    marker.unlink()
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")

    reg.set_champion("1")
    store = ModelStore(server_settings(reg, model_cache_dir=str(cache_dir)))
    with TestClient(create_app(store.settings, store=store)) as c:
        assert c.get("/ready").json()["status"] == "ready"
        reg.set_champion(crafted)
        fetches: list[str] = []
        real_fetch = artifact.fetch
        monkeypatch.setattr(artifact, "fetch",
                            lambda *a, **k: fetches.append(a[2]) or real_fetch(*a, **k))
        for _ in range(3):  # polls and forced reloads: refused once, never fetched again
            c.post("/model/reload", headers={"X-API-Key": API_KEY})
            store.refresh()
        assert fetches == [crafted]
        assert not marker.exists()
        ready = c.get("/ready")
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded"
        assert body["model"]["version"] == "1"
        refused = body["champion_refused"]
        assert refused["version"] == crafted and refused["refused"] is True
        assert fmt in refused["reason"] and "only skops" in refused["reason"]
        assert f"version {crafted}" in body["message"] and fmt in body["message"]
        info = c.get("/model").json()
        assert info["version"] == "1" and info["champion_refused"]["version"] == crafted
        predict = c.post("/predict", json=reg.records[0])
        assert predict.status_code == 200 and predict.json()["model"]["version"] == "1"
        assert "model_champion_refused 1.0" in c.get("/metrics").text
        assert list((cache_dir / "downloads").iterdir()) == []  # its download was removed
    reg.set_champion("1")
    assert not marker.exists()


def test_the_gates_loader_refuses_a_pickled_version_too(reg, tmp_path) -> None:
    marker = tmp_path / "pwned-gate"
    crafted = log_version(reg, Payload(marker), serialization_format="cloudpickle",
                          check=a_check(reg))
    with pytest.raises(ModelRefused, match="cloudpickle"):
        registry.load_version(reg.name, crafted, tracking_uri=reg.uri)
    assert not marker.exists()
    good = registry.load_version(reg.name, "1", tracking_uri=reg.uri)
    np.testing.assert_allclose(artifact.serving_check(good, reg.records[:5])["probabilities"],
                               reg.expected("1", reg.records[:5]), atol=1e-12)


def test_the_artifacts_own_trusted_types_are_ignored(reg, cache_dir) -> None:
    gadget = Gadget(0.9).fit(None, None)
    name = f"{Gadget.__module__}.Gadget"
    version = log_version(reg, gadget, serialization_format="skops", skops_trusted_types=[name],
                          check=artifact.serving_check(gadget, reg.records[:5]))
    with pytest.raises(ModelRefused, match="does not trust"):
        registry.load_version(reg.name, version, tracking_uri=reg.uri)
    reg.set_champion(version)
    try:
        store = started(reg, cache_dir)
        assert store.current is None and store.champion_failure is not None
        assert "Gadget" in store.champion_failure.reason
        assert "no model loaded" in (store.status_message() or "")
    finally:
        reg.set_champion("1")


def test_a_version_must_reproduce_its_own_serving_check(reg, cache_dir) -> None:
    model = reg.models["2"]
    wrong = a_check(reg, "1")  # version 1's probabilities for version 2's model
    mismatched = log_version(reg, model, serialization_format="skops", check=wrong)
    unchecked = log_version(reg, model, serialization_format="skops", check=None)
    with pytest.raises(ModelRefused, match="does not reproduce its serving check"):
        registry.load_version(reg.name, mismatched, tracking_uri=reg.uri)
    with pytest.raises(ModelRefused, match=r"logged no serving_check\.json"):
        registry.load_version(reg.name, unchecked, tracking_uri=reg.uri)
    reg.set_champion("1")
    store = started(reg, cache_dir)
    try:
        for version in (mismatched, unchecked):
            reg.set_champion(version)
            outcome = store.refresh()
            assert not outcome.changed and store.current.version == "1"
            assert store.champion_failure.version == version and store.champion_failure.refused
    finally:
        reg.set_champion("1")


def test_a_failed_load_is_retried_with_backoff_not_on_every_poll(reg, cache_dir,
                                                                  monkeypatch) -> None:
    reg.set_champion("1")
    store = started(reg, cache_dir, model_poll_seconds=0)
    calls: list[str] = []

    def flaky(client: Any, name: str, version: str, **kwargs: Any) -> Any:
        calls.append(version)
        (Path(kwargs["download_dir"]) / "model-partial").mkdir(parents=True, exist_ok=True)
        raise ConnectionError("artifact store down")

    monkeypatch.setattr(artifact, "fetch", flaky)
    reg.set_champion("2")
    try:
        for _ in range(3):
            store.refresh()
        assert calls == ["2"]  # backed off: one attempt, not one per poll
        failure = store.champion_failure
        assert failure is not None and not failure.refused and failure.attempts == 1
        assert "artifact store down" in failure.reason and store.current.version == "1"
        store.refresh(force=True)  # POST /model/reload retries a transient failure now
        assert calls == ["2", "2"] and store.champion_failure.attempts == 2
        monkeypatch.undo()
        assert store.refresh(force=True).changed and store.current.version == "2"
        assert store.champion_failure is None and "2" not in store.failures
    finally:
        reg.set_champion("1")


# -- C: the local copy of the last good champion ------------------------------------------------
def test_the_last_good_champion_is_kept_and_served_when_the_registry_is_down(
        reg, cache_dir, monkeypatch) -> None:
    monkeypatch.setattr(model_cache, "KEEP_SECONDS", 0)  # old model files go at once
    reg.set_champion("1")
    store = started(reg, cache_dir)
    assert store.current.origin == "registry"
    doc = json.loads((cache_dir / f"{reg.name}.json").read_text())
    blobs = list(cache_dir.glob(f"{reg.name}-*.skops"))
    assert doc["version"] == "1" and [b.name for b in blobs] == [
        f"{reg.name}-{doc['sha256']}.skops"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in [*blobs,
                                                                  cache_dir / f"{reg.name}.json"])
    # a new process while MLflow is down: serves the verified copy, degraded
    down = server_settings(reg, model_cache_dir=str(cache_dir),
                           mlflow_tracking_uri="http://127.0.0.1:9")
    cold = ModelStore(down)
    with TestClient(create_app(down, store=cold)) as c:
        ready = c.get("/ready").json()
        assert ready["status"] == "degraded" and ready["origin"] == "cache"
        assert ready["model"]["version"] == "1" and ready["registry_reachable"] is False
        assert "local copy" in ready["message"]
        got = c.post("/predict/batch", json={"records": reg.records[:30]}).json()
        np.testing.assert_allclose([p["arrest_probability"] for p in got["predictions"]],
                                   reg.expected("1", reg.records[:30]), atol=1e-12)
        assert c.get("/model").json()["threshold"] == pytest.approx(0.3)  # its card came too
        assert "model_from_local_copy 1.0" in c.get("/metrics").text
        # the registry answers again: the copy is confirmed, then an alias move is followed
        cold.settings = server_settings(reg, model_cache_dir=str(cache_dir))
        cold._client = lambda: registry.client_for(cold.settings)  # type: ignore[method-assign]
        assert cold.refresh().changed
        ready = c.get("/ready").json()
        assert ready["status"] == "ready" and ready["origin"] == "registry"
        reg.set_champion("2")
        assert c.post("/model/reload", headers={"X-API-Key": API_KEY}).json()["changed"]
        assert c.get("/model").json()["version"] == "2"
    reg.set_champion("1")
    assert json.loads((cache_dir / f"{reg.name}.json").read_text())["version"] == "2"
    assert len(list(cache_dir.glob(f"{reg.name}-*.skops"))) == 1  # the old bytes are gone


def test_a_damaged_local_copy_is_not_served(reg, cache_dir) -> None:
    reg.set_champion("1")
    started(reg, cache_dir)
    down = server_settings(reg, model_cache_dir=str(cache_dir),
                           mlflow_tracking_uri="http://127.0.0.1:9")
    doc_path = cache_dir / f"{reg.name}.json"
    doc = json.loads(doc_path.read_text())
    blob = cache_dir / f"{reg.name}-{doc['sha256']}.skops"
    original = blob.read_bytes()
    blob.write_bytes(original[:-10] + b"0" * 10)  # tampered bytes: the digest differs
    store = ModelStore(down)
    store.start()
    assert store.current is None and "digest" in (store.cache_error or "")
    assert "local copy" in (store.status_message() or "")
    blob.write_bytes(original)  # right bytes, but a check they do not reproduce
    doc["check"]["probabilities"] = [1 - p for p in doc["check"]["probabilities"]]
    doc_path.write_text(json.dumps(doc))
    store = ModelStore(down)
    store.start()
    assert store.current is None and "serving check" in (store.cache_error or "")


def test_a_refused_champion_at_start_serves_the_local_copy(reg, tmp_path, cache_dir) -> None:
    reg.set_champion("1")
    started(reg, cache_dir)
    marker = tmp_path / "pwned-start"
    crafted = log_version(reg, Payload(marker), serialization_format="cloudpickle",
                          check=a_check(reg))
    reg.set_champion(crafted)
    try:
        store = started(reg, cache_dir)
        assert store.current is not None and store.current.version == "1"
        assert store.current.origin == "cache" and store.degraded
        assert store.champion_failure.version == crafted
        assert not marker.exists()
    finally:
        reg.set_champion("1")


def test_download_folders_never_pile_up(reg, cache_dir) -> None:
    reg.set_champion("1")
    store = started(reg, cache_dir)
    for version in ("2", "1", "2"):
        reg.set_champion(version)
        assert store.refresh().changed
    assert list((cache_dir / "downloads").iterdir()) == []
    reg.set_champion("1")


def test_no_pickle_switch_anywhere_in_the_package() -> None:
    src = Path(artifact.__file__).resolve().parents[1]
    offenders = [str(p) for p in src.rglob("*.py")
                 if "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" in p.read_text()]
    assert offenders == []
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in os.environ


def test_a_restart_serves_the_champions_local_copy_without_downloading_it(
        reg, cache_dir, monkeypatch) -> None:
    reg.set_champion("1")
    started(reg, cache_dir)
    fetches: list[str] = []
    real_fetch = artifact.fetch
    monkeypatch.setattr(artifact, "fetch",
                        lambda *a, **k: fetches.append(a[2]) or real_fetch(*a, **k))
    store = started(reg, cache_dir)
    assert fetches == [] and store.current.version == "1"
    assert store.current.origin == "registry" and not store.degraded
    doc = json.loads((cache_dir / f"{reg.name}.json").read_text())
    doc["check"]["probabilities"][0] += 0.5  # a copy that no longer verifies: downloaded
    (cache_dir / f"{reg.name}.json").write_text(json.dumps(doc))
    store = started(reg, cache_dir)
    assert fetches == ["1"] and store.current.version == "1"
    started(reg, cache_dir)  # the download rewrote the copy: used again
    assert fetches == ["1"]
