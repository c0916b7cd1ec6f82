"""Training on the native stack: real S3 (SeaweedFS), the MLflow server and its registry.

A month's ETL outputs are prepared in a throwaway bucket of the real S3 with the ETL's own
stage functions, a short search trains and registers a model under a throwaway name, and a
fresh Python process that loads ``models:/<name>@champion`` must reproduce the trainer's
probabilities for the same raw records.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from chicago_crime import etl
from chicago_crime.devtools.seed import seed_window_from_exports
from chicago_crime.lake import Lake
from chicago_crime.model import registry, train

pytestmark = pytest.mark.integration
MONTH = "2018-06"

FRESH_PROCESS = """
import json, os, sys
from chicago_crime.model import registry
from chicago_crime.record import model_frame
name, version, records_path = sys.argv[1:4]
model = registry.load_version(name, version, os.environ["MLFLOW_TRACKING_URI"])
records = json.load(open(records_path))
print(json.dumps(model.predict_proba(model_frame(records))[:, 1].tolist()))
"""


@pytest.fixture(scope="module")
def trained(stack_settings: Any, shared_data: Path) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    # The platform's S3 identity is limited to its own bucket: a throwaway bucket is the S3
    # admin's (as the stack creates the platform's buckets).
    settings = stack_settings.model_copy(update={
        "data_repo_bucket_name": f"it-train-{tag}", "model_name": f"it_train_{tag}",
        "search_experiment": "integration_train_search",
        "aws_access_key_id": stack_settings.s3_admin_access_key_id,
        "aws_secret_access_key": stack_settings.s3_admin_secret_access_key,
    })
    lake = Lake(settings=settings)
    lake.ensure_bucket()
    client = registry.client_for(settings)
    try:
        seed_window_from_exports(lake, shared_data, MONTH, months=1, max_rows=8000)
        results = etl.run_all(MONTH, lake, settings)
        assert all(r["status"] == etl.OK for r in results.values()), results
        result = train.run_training(MONTH, settings, lake, trials=2, timeout=120)
        yield {"settings": settings, "lake": lake, "result": result, "client": client}
    finally:
        # nothing is registered when training failed early
        with contextlib.suppress(Exception):
            client.delete_registered_model(settings.model_name)
        lake.delete_prefix("0-raw-data/")
        lake.delete_prefix("1-enriched-data/")
        lake.delete_prefix("2-processed-data/")
        lake.client.delete_bucket(Bucket=lake.bucket)


def test_short_search_registers_the_champion(trained: dict[str, Any]) -> None:
    settings, result, client = trained["settings"], trained["result"], trained["client"]
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(champion.version) == result["version"] and result["promoted"]
    assert champion.run_id == result["run_id"]
    run = client.get_run(result["run_id"])
    assert run.data.metrics["test_roc_auc"] > 0.8
    card = registry.ModelCard.from_version(settings.model_name, champion)
    assert 0 < card.threshold < 1 and card.features and card.month == MONTH
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == result["trials"]


def test_fresh_process_reproduces_the_trainers_probabilities(trained: dict[str, Any],
                                                             tmp_path: Path) -> None:
    settings, result = trained["settings"], trained["result"]
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    check = mlflow.artifacts.load_dict(f"runs:/{result['run_id']}/{train.SERVING_CHECK_ARTIFACT}")
    records_path = tmp_path / "records.json"
    records_path.write_text(json.dumps(check["records"]))
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    champion = trained["client"].get_model_version_by_alias(settings.model_name, "champion")
    out = subprocess.run(  # the package's loader: skops, trusted types, its serving check
        [sys.executable, "-c", FRESH_PROCESS, settings.model_name, str(champion.version),
         str(records_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    fresh = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    assert len(fresh) == len(check["probabilities"]) == train.SERVING_CHECK_RECORDS
    np.testing.assert_allclose(fresh, check["probabilities"], rtol=0, atol=1e-12)
