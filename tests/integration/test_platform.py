"""The native stack's services, each proven for real (run `make local-up` first)."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pandas as pd
import psycopg2
import pytest
import redis
from botocore.exceptions import ClientError
from pydantic import SecretStr

from chicago_crime.devtools.airflow_client import AirflowClient
from chicago_crime.lake import Lake

pytestmark = pytest.mark.integration


def test_both_databases_answer(stack_settings):
    for db in (stack_settings.pg_airflow_db, stack_settings.pg_mlflow_db):
        with psycopg2.connect(stack_settings.pg_url(db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone()[0] == db


def test_broker_answers(stack_settings):
    client = redis.Redis(host=stack_settings.valkey_host, port=stack_settings.valkey_port)
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
        assert {"data", "mlflow"} <= {
            b["Name"] for b in lake.client.list_buckets()["Buckets"]}
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
    # The artifact really lives in the S3 bucket behind the proxied artifact store.
    keys = Lake(bucket=stack_settings.mlflow_bucket_name, settings=stack_settings).list_keys()
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys)


def test_taskflow_dag_runs_on_a_celery_worker(stack_settings):
    client = AirflowClient(stack_settings)
    client.wait_for_dag("platform_smoke")
    client.set_paused("platform_smoke", False)
    run = client.trigger("platform_smoke", run_id=f"test__{uuid.uuid4().hex[:12]}")
    done = client.wait_for_run("platform_smoke", run["dag_run_id"], timeout=180)
    assert done["state"] == "success"
    tis = client.task_instances("platform_smoke", run["dag_run_id"])
    assert {ti["task_id"]: ti["state"] for ti in tis} == {
        "where_am_i": "success", "echo": "success"}
    xcom = client.request(
        "GET", f"/dags/platform_smoke/dagRuns/{run['dag_run_id']}/taskInstances/where_am_i"
        "/xcomEntries/return_value")
    assert xcom["value"]["on_celery_worker"] is True


def _pids() -> dict[str, str]:
    from chicago_crime.devtools import stack

    out = stack._ctl("status").stdout.splitlines()
    return {line.split()[0]: line.split()[3].rstrip(",") for line in out if "RUNNING" in line}


def test_local_up_twice_is_harmless():
    """A second `up` with the same configuration restarts nothing and reports healthy."""
    import os
    import subprocess
    import sys

    from chicago_crime.devtools import stack

    before = _pids()
    env = {**os.environ,
           "REPLAY_DATA_DIR": stack.running_env().get("REPLAY_DATA_DIR", "")}
    proc = subprocess.run([sys.executable, "-m", "chicago_crime.devtools.stack", "up"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "restarting" not in proc.stdout
    assert _pids() == before
    assert stack.status() == 0


def test_status_names_a_killed_service_and_up_restores_it(capsys):
    """Kill one service for real: `status` says which one is down; `up` brings it back."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from chicago_crime.devtools import stack

    pid = int(stack._ctl("pid", "api").stdout.strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack._states().get("api") == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    capsys.readouterr()
    assert stack.status() == 1
    out = capsys.readouterr().out
    assert "service(s) down: api" in out
    assert [line for line in out.splitlines() if line.startswith("DOWN")] == [
        line for line in out.splitlines() if line.startswith("DOWN") and " api " in line]
    env = {**os.environ,
           "REPLAY_DATA_DIR": stack.running_env().get("REPLAY_DATA_DIR", "")}
    proc = subprocess.run([sys.executable, "-m", "chicago_crime.devtools.stack", "up"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert stack.status() == 0
