"""train_model on the native stack: manual trigger for a processed month, gate on a tie."""

from __future__ import annotations

import uuid

import pytest

from chicago_crime import layout
from chicago_crime.devtools.airflow_client import AirflowClient
from chicago_crime.devtools.demo import run_etl
from chicago_crime.lake import Lake
from chicago_crime.model import registry

pytestmark = pytest.mark.integration

MONTH = "2018-06"


@pytest.fixture(scope="module")
def processed_month(stack_settings):
    """Make sure the month went through the ETL (the ETL DAG test usually did it)."""
    client = AirflowClient(stack_settings)
    if not Lake(settings=stack_settings).exists(
            layout.fitted_key(MONTH, "select")):
        client.wait_for_dag("etl_with_taskflow")
        client.set_paused("etl_with_taskflow", False)
        run_etl(client, MONTH)
    return client


def test_manual_training_of_a_processed_month(processed_month, stack_settings):
    client = processed_month
    client.wait_for_dag("train_model")
    client.set_paused("train_model", False)
    mlflow_client = registry.client_for(stack_settings)
    name = stack_settings.model_name
    run_id = f"manual__test_{uuid.uuid4().hex[:8]}"
    client.trigger("train_model", run_id=run_id, conf={"month": MONTH})
    client.wait_for_run("train_model", run_id, timeout=1500)
    result = client.request(
        "GET", f"/dags/train_model/dagRuns/{run_id}/taskInstances/train_and_register"
        "/xcomEntries/return_value")["value"]
    assert result["version"]
    version = mlflow_client.get_model_version(name, str(result["version"]))
    assert "challenger" in version.aliases or result["promoted"]
    assert version.tags["gate_decision"] in {"promoted", "kept_champion"}
    champion = registry.version_by_alias(mlflow_client, name, "champion")
    assert champion is not None
    if not result["promoted"]:
        # Same month, same data: the challenger scores what the champion scores (a tie or
        # a gain within the margin) and the champion does not move.
        assert champion.version != version.version
        gain = (float(version.tags["gate_challenger_score"])
                - float(version.tags["gate_champion_score"]))
        assert gain <= stack_settings.promotion_margin
