"""The DAG files import cleanly in Airflow (what the dag-processor does), without services,
without settings and without the heavy libraries; the stage table drives the ETL's tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from chicago_crime import stages

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "airflow" / "dags"
HEAVY = ("pandas", "sklearn", "geopandas", "imblearn", "mlflow", "pyarrow", "boto3",
         "chicago_crime.features", "chicago_crime.etl", "chicago_crime.lake",
         "chicago_crime.config", "chicago_crime.model")

SCRIPT = """
import json, sys
{prelude}
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={folder!r})
print(json.dumps({{"errors": {{k: str(v)[:500] for k, v in bag.import_errors.items()}},
                  "dags": {{d: [t.task_id for t in bag.dags[d].tasks] for d in bag.dags}},
                  "modules": sorted(sys.modules)}}))
"""


def parse(tmp_path: Path, prelude: str = "") -> dict:
    """Parse the DAG folder in a fresh process with no platform settings at all."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "DATA_REPO_"))}
    env.update({"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "CHICAGO_CRIME_ENV_FILE": str(empty)})
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(prelude=prelude, folder=str(DAGS))],
        env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_folder_imports_without_settings_or_heavy_libraries(tmp_path):
    result = parse(tmp_path)
    assert result["errors"] == {}
    assert result["dags"]["etl_with_taskflow"] == [
        "setup_s3", "download_data", "build_window",
        *[s.task_id for s in stages.STAGES], "publish_dataset"]
    assert [s.task_id for s in stages.STAGES] == [
        "enrich", "split", "outliers", "encode", "scale", "balance", "select"]
    assert sorted(result["dags"]["train_model"]) == sorted([
        "resolve_month", "open_search", "search_trials", "train_and_register", "notify_api"])
    assert sorted(result["dags"]["monitor_model"]) == sorted([
        "resolve_month", "assess", "decide", "report", "act", "request_retraining",
        "no_action"])
    assert "platform_smoke" in result["dags"]
    loaded = [m for m in result["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == [], f"parsing the DAGs imported {loaded[:10]}"


def test_a_new_row_of_the_stage_table_is_a_new_task(tmp_path):
    prelude = (
        "from chicago_crime import stages\n"
        "stages.STAGES = (*stages.STAGES, stages.Stage('audit', 'OutlierHandler', served=False,"
        " description='a stage added by the test'))\n")
    result = parse(tmp_path, prelude)
    assert result["errors"] == {}
    tasks = result["dags"]["etl_with_taskflow"]
    assert tasks[-3:] == ["select", "audit", "publish_dataset"]
