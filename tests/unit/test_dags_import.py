"""The DAG files import cleanly in Airflow (what the dag-processor does), without services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
print(json.dumps({{"errors": {{k: str(v)[:500] for k, v in bag.import_errors.items()}},
                  "dags": {{d: [t.task_id for t in bag.dags[d].tasks] for d in bag.dags}}}}))
"""


def test_dag_folder_imports_without_errors(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow" / "dags"),
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(folder=str(REPO / "airflow" / "dags"))],
        env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    etl = result["dags"]["etl_with_taskflow"]
    assert etl == ["setup_s3", "download_data", "build_window", "enrich_data", "split_data",
                   "process_outliers", "encode_data", "scale_data", "balance_data",
                   "extract_features", "publish_dataset"]
    assert result["dags"]["train_model"] == ["resolve_month", "train_and_register", "notify_api"]
    assert "platform_smoke" in result["dags"]
