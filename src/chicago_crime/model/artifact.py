"""A registered model version read without executing anything it contains.

MLflow's own loader lets the artifact choose how it is deserialised: its ``MLmodel`` names the
format (pickle, cloudpickle or skops) and, for skops, the types to trust. A crafted version
is then code execution in whatever process loads it (the model server, the training gate).
This module is the platform's only way to load a registered model instead:

* **skops only**: :func:`read_model` reads ``MLmodel`` as plain YAML and refuses any other
  ``serialization_format``, before a byte of the model file is read;
* **trusted types from the package's code**: the bytes are loaded by
  :func:`chicago_crime.serialization.loads` (``chicago_crime.serialization.trusted_types``);
  ``skops_trusted_types`` in the artifact is ignored;
* **its own serving check reproduced**: the trainer logs the probabilities it computed for
  raw test records (:func:`log_serving_check`, ``serving_check.json`` in the training run);
  :func:`verify` recomputes them with the loaded object before anyone serves it.

A version that fails one of these raises :class:`ModelRefused` (permanent: the artifact is
what it is); a download or registry error is raised as is (transient). Downloads go to a
temporary folder that is always removed (MLflow leaves its own ``mkdtemp`` folders behind,
mlflow/mlflow#12140).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The run artifact holding the serving check (records and the trainer's probabilities).
SERVING_CHECK_ARTIFACT = "serving_check.json"
#: Largest difference allowed between the logged and the reproduced probabilities.
CHECK_TOLERANCE = 1e-6
#: The only serialisation format loaded (MLflow's sklearn flavour names it so).
SAFE_FORMAT = "skops"
#: Largest model file read (the platform's models are a few MB).
MAX_MODEL_BYTES = 512 * 1024 * 1024


class ModelRefused(RuntimeError):
    """This version must not be served: not skops, untrusted types, or no/failed check."""


@dataclass(frozen=True)
class VersionArtifact:
    """What a version is made of, as bytes and data (nothing deserialised yet)."""

    model_bytes: bytes
    check: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_bytes).hexdigest()


# -- the serving check ---------------------------------------------------------------------
def serving_check(model: Any, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Raw records (SODA JSON form) and ``model``'s probabilities for them."""
    from chicago_crime.record import model_frame

    return {"records": [dict(r) for r in records],
            "probabilities": [float(p) for p in model.predict_proba(model_frame(records))[:, 1]]}


def log_serving_check(model: Any, records: Sequence[Mapping[str, Any]]) -> None:
    """Log :func:`serving_check` to the active MLflow run (the trainer calls this)."""
    import mlflow

    mlflow.log_dict(serving_check(model, records), SERVING_CHECK_ARTIFACT)


def check_records(check: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The raw records of a serving check (validated shape)."""
    records, expected = check.get("records"), check.get("probabilities")
    if (not isinstance(records, list) or not isinstance(expected, list) or not records
            or len(records) != len(expected) or not all(isinstance(r, dict) for r in records)):
        raise ModelRefused("its serving check is malformed (records and probabilities)")
    return records


def verify(model: Any, check: Mapping[str, Any], tolerance: float = CHECK_TOLERANCE) -> float:
    """Recompute the serving check with ``model``; the largest difference, or ModelRefused."""
    from chicago_crime.record import model_frame

    records = check_records(check)
    try:
        expected = [float(p) for p in check["probabilities"]]
        got = [float(p) for p in model.predict_proba(model_frame(records))[:, 1]]
    except Exception as exc:
        raise ModelRefused(f"it cannot score its own serving check: {type(exc).__name__}: "
                           f"{str(exc)[:200]}") from exc
    diff = max((abs(a - b) for a, b in zip(got, expected, strict=True)), default=0.0)
    if not math.isfinite(diff) or diff > tolerance:
        raise ModelRefused(f"it does not reproduce its serving check (max difference "
                           f"{diff:.3g} > {tolerance:g} on {len(records)} records)")
    return diff


# -- reading ---------------------------------------------------------------------------------
def model_file(mlmodel_text: str) -> str:
    """The model file named by ``MLmodel`` when it is skops, else ModelRefused (the reason)."""
    import yaml

    try:
        conf = yaml.safe_load(mlmodel_text) or {}
        sklearn = conf["flavors"]["sklearn"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelRefused("its MLmodel has no sklearn flavour") from exc
    fmt = sklearn.get("serialization_format", "pickle")  # MLflow's default for old models
    if fmt != SAFE_FORMAT:
        raise ModelRefused(f"it is logged as {fmt!s:.40}: only skops is loaded (pickle and "
                           "cloudpickle execute code when loaded)")
    name = str(sklearn.get("pickled_model") or "")
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ModelRefused(f"its MLmodel names an invalid model file {name!r:.80}")
    return name


def _text(path: Path) -> str:
    """A small text file of the artifact (``MLmodel``); refused when it is not one."""
    if path.stat().st_size > 1_000_000:
        raise ModelRefused(f"its {path.name} is larger than 1 MB")
    return path.read_bytes().decode("utf-8", "replace")


def read_model(folder: Path) -> bytes:
    """The skops bytes of a downloaded model folder (refused unless skops)."""
    path = folder / model_file(_text(folder / "MLmodel"))
    if not path.is_file():
        raise ModelRefused(f"its model file {path.name} is missing")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelRefused(f"its model file is larger than {MAX_MODEL_BYTES} bytes")
    return path.read_bytes()


def load_bytes(data: bytes) -> Any:
    """The object in skops ``data``, trusting only the package's types (ModelRefused else)."""
    from chicago_crime import serialization

    unexpected = serialization.untrusted(data)
    if unexpected:
        raise ModelRefused(f"it holds types the server does not trust: {unexpected[:5]}")
    try:
        return serialization.loads(data)
    except Exception as exc:
        raise ModelRefused(f"its skops file cannot be loaded: {type(exc).__name__}: "
                           f"{str(exc)[:200]}") from exc


def _download(artifact_uri: str, dst: Path, tracking_uri: str | None) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri,
                                                    dst_path=str(dst),
                                                    tracking_uri=tracking_uri))


def fetch(client: Any, name: str, version: str, *, download_dir: str | Path | None = None,
          ) -> VersionArtifact:
    """Download a version's ``MLmodel``, its skops file and its run's serving check.

    Only those files are downloaded, into a temporary folder under ``download_dir`` that is
    removed whatever happens. Nothing is deserialised.
    """
    tracking_uri = getattr(client, "tracking_uri", None) or getattr(
        getattr(client, "_tracking_client", None), "tracking_uri", None)
    meta = client.get_model_version(name, str(version))
    base = str(client.get_model_version_download_uri(name, str(version))).rstrip("/")
    if download_dir is not None:
        Path(download_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="model-", dir=download_dir) as tmp:
        folder = Path(tmp)
        mlmodel = _download(f"{base}/MLmodel", folder / "m", tracking_uri)
        file_name = model_file(_text(mlmodel))
        _download(f"{base}/{file_name}", folder / "m", tracking_uri)
        data = read_model(folder / "m")
        if not meta.run_id:
            raise ModelRefused("it has no training run, so no serving check")
        listed = {Path(f.path).name for f in client.list_artifacts(meta.run_id)}
        if SERVING_CHECK_ARTIFACT not in listed:
            raise ModelRefused(f"its run {meta.run_id} logged no {SERVING_CHECK_ARTIFACT}")
        path = client.download_artifacts(meta.run_id, SERVING_CHECK_ARTIFACT, str(folder))
        try:
            check = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise ModelRefused(f"its {SERVING_CHECK_ARTIFACT} is not JSON") from exc
    if not isinstance(check, dict):
        raise ModelRefused(f"its {SERVING_CHECK_ARTIFACT} is not an object")
    check_records(check)
    return VersionArtifact(model_bytes=data, check=check)


def load(artifact: VersionArtifact) -> Any:
    """Deserialise (skops, package's trusted types) and verify the serving check."""
    model = load_bytes(artifact.model_bytes)
    verify(model, artifact.check)
    return model
