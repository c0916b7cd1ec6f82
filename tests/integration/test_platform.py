"""The native stack's services, each proven for real (run `make local-up` first)."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
import psycopg2
import pytest
import redis
from airflow_client.client import DAGPatchBody, TriggerDAGRunPostBody
from botocore.exceptions import ClientError
from pydantic import SecretStr

from chicago_crime.devtools.airflow_api import connect, wait_for_dag, wait_for_run
from chicago_crime.lake import Lake

pytestmark = pytest.mark.integration


def test_both_databases_answer(stack_settings):
    for db in (stack_settings.pg_airflow_db, stack_settings.pg_mlflow_db):
        with psycopg2.connect(stack_settings.pg_url(db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone()[0] == db


def test_broker_answers(stack_settings):
    client = redis.Redis(host=stack_settings.valkey_host, port=stack_settings.valkey_port,
                         password=stack_settings.valkey_password.get_secret_value())
    key = f"test:{uuid.uuid4().hex}"
    client.set(key, "1", ex=30)
    assert client.get(key) == b"1"


def test_lake_roundtrip_on_the_real_s3_server(stack_settings):
    lake = Lake(settings=stack_settings)
    key = f"tmp/tests/{uuid.uuid4().hex}.parquet"
    df = pd.DataFrame({"id": [1, 2], "arrest": [True, False]})
    lake.write_parquet(key, df)
    try:
        pd.testing.assert_frame_equal(lake.read_parquet(key), df)
        # the platform's identity sees its own bucket only (MLflow's is MLflow's)
        assert {b["Name"] for b in lake.client.list_buckets()["Buckets"]} == {
            stack_settings.data_repo_bucket_name}
    finally:
        lake.delete(key)


def test_s3_server_rejects_a_wrong_secret(stack_settings):
    bad = stack_settings.model_copy(
        update={"aws_secret_access_key": SecretStr("not-the-secret")})
    with pytest.raises(ClientError) as err:
        Lake(settings=bad).client.list_objects_v2(Bucket=stack_settings.data_repo_bucket_name)
    assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied",
                                                     "InvalidAccessKeyId"}


def test_mlflow_logs_a_run_and_an_artifact(stack_settings, tmp_path):
    mlflow.set_tracking_uri(stack_settings.mlflow_tracking_uri)
    mlflow.set_experiment("platform-tests")
    note = tmp_path / "note.txt"
    note.write_text("hello lake")
    with mlflow.start_run() as run:
        mlflow.log_metric("answer", 42)
        mlflow.log_artifact(str(note))
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["answer"] == 42
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="note.txt",
                                                dst_path=str(tmp_path / "dl"))
    assert Path(local).read_text() == "hello lake"
    # The artifact really lives in the S3 bucket behind the proxied artifact store (readable
    # with the MLflow server's own S3 identity only).
    mlflow_identity = stack_settings.model_copy(update={
        "aws_access_key_id": stack_settings.mlflow_s3_access_key_id,
        "aws_secret_access_key": stack_settings.mlflow_s3_secret_access_key})
    keys = Lake(bucket=stack_settings.mlflow_bucket_name, settings=mlflow_identity).list_keys()
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys)


def test_taskflow_dag_runs_on_a_celery_worker(stack_settings):
    af = connect(stack_settings)
    wait_for_dag(af, "platform_smoke")
    af.dags.patch_dag("platform_smoke", DAGPatchBody(is_paused=False))
    run = af.dag_runs.trigger_dag_run("platform_smoke", TriggerDAGRunPostBody(
        dag_run_id=f"test__{uuid.uuid4().hex[:12]}"))
    done = wait_for_run(af, "platform_smoke", run.dag_run_id, timeout=180)
    assert done.state == "success"
    tis = af.task_instances.get_task_instances("platform_smoke", run.dag_run_id).task_instances
    assert {ti.task_id: ti.state.value for ti in tis} == {
        "where_am_i": "success", "echo": "success"}
    xcom = af.xcom.get_xcom_entry("platform_smoke", "where_am_i", run.dag_run_id,
                                  "return_value").actual_instance
    assert xcom.value["on_celery_worker"] is True


def _pids() -> dict[str, str]:
    from chicago_crime.devtools import stack

    out = stack._ctl("status").stdout.splitlines()
    return {line.split()[0]: line.split()[3].rstrip(",") for line in out if "RUNNING" in line}


def test_local_up_twice_is_harmless():
    """A second `up` (no DATA: the remembered data source) restarts nothing and reports ready."""
    import subprocess
    import sys

    from chicago_crime.devtools import stack

    before = _pids()
    source = stack.running_env()["REPLAY_DATA_DIR"]
    proc = subprocess.run([sys.executable, "-m", "chicago_crime.devtools.stack", "up"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "restarting" not in proc.stdout and "switching" not in proc.stdout
    assert _pids() == before
    assert stack.running_env()["REPLAY_DATA_DIR"] == source
    assert stack.status() == 0


def test_a_killed_service_comes_back_by_itself_and_alone(capsys):
    """Kill one service for real: supervisord restarts it without any command, the watchdog
    says so, and no other service is restarted."""
    import os
    import signal
    import time

    from chicago_crime.devtools import stack

    before = _pids()
    os.kill(int(before["replay"]), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _pids()
        if now.get("replay") not in {None, before["replay"]}:
            break
        time.sleep(0.5)
    after = _pids()
    assert after["replay"] != before["replay"]
    assert {k: v for k, v in after.items() if k != "replay"} == {
        k: v for k, v in before.items() if k != "replay"}
    stack._wait_ready(["replay"], stack.stack_settings(), 60)
    assert "replay crashed" in stack.ALERTS.read_text()
    capsys.readouterr()
    assert stack.status() == 0
