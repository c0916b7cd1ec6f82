#!/usr/bin/env python3
"""``make test-compose``: build the Compose stack's images, start the whole stack on a real engine
and walk the users' journey through the containers, then ``down -v``.

    python scripts/compose_test/run.py [--workers 2] [--data ../shared/data/chicago]
                                       [--month 2018-06] [--keep]

Needs a Docker engine at DOCKER_HOST (``scripts/compose_test/run.sh`` starts a loopback-only
dockerd and stops it on every exit path). Phases, each timed:

1. stand-in base images (the official names, built from the Debian mirror; see images.py)
2. the project's images from ``dockerfiles/`` (cached by a hash of their inputs)
3. the host-network override (every service on 127.0.0.1, high free ports; see hostnet.py)
4. ``up --wait`` of ``--profile all`` + ``replay`` + ``notebooks``, ``airflow-worker`` scaled
5. the journey: DAGs listed through Airflow's REST API (pipeline DAGs unpaused at creation),
   ``etl_with_taskflow`` triggered for a month as the UI's Trigger button does, the ETL run by the
   Celery worker containers, ``monitor_model`` run by the dataset's asset event (no champion yet:
   it requests retraining), ``train_model`` run by that request, the champion loaded by the API
   container, ``/predict`` on a real record, the lake's objects, ``make champion`` through Compose,
   MLflow reachable from the LAN (BIND_HOST=0.0.0.0) and closed to other hosts, the hostile
   subset (MLflow's accounts, the lake's least-privilege users and MinIO's admin API, the
   broker's and the database's passwords), JupyterLab's token
6. ``down -v``

The last line is ``compose journey ok: <seconds> s, arrest_probability=<p>``. Any failure
prints what broke (the image and build step, or the service and its health/log) and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from chicago_crime.devtools.demo import EXAMPLE_RECORD as RECORD  # a real 2018-06 record
from chicago_crime.stages import STAGES

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import diagnose  # noqa: E402
import hostnet  # noqa: E402
import images  # noqa: E402

REPO = HERE.parents[1]
PROJECT = "chicago-crime-ci"
PROFILES = ("all", "replay", "notebooks")
ETL_DAG, MONITOR_DAG, TRAIN_DAG = "etl_with_taskflow", "monitor_model", "train_model"
PIPELINE_DAGS = (ETL_DAG, MONITOR_DAG, TRAIN_DAG)
# The DAG's tasks: ingestion, one task per row of the stage table, publication.
ETL_TASKS = ("setup_s3", "download_data", "build_window", *(s.task_id for s in STAGES),
             "publish_dataset")


class JourneyError(RuntimeError):
    """A step of the journey did not do what users are told it does."""


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[compose-test {time.monotonic() - STARTED:6.0f}s] {message}", flush=True)


@contextlib.contextmanager
def phase(name: str, timings: dict[str, float]) -> Iterator[None]:
    say(f"--- {name}")
    started = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - started
        say(f"--- {name}: {timings[name]:.0f} s")


# --- Compose ---------------------------------------------------------------------------------
def compose_binary() -> list[str]:
    local = Path(sys.executable).parent / "docker-compose"
    if local.exists():
        return [str(local)]
    found = shutil.which("docker-compose")
    if found:
        return [found]
    return ["docker", "compose"]


@dataclass
class Compose:
    """The Compose CLI on the repository with the CI env file (and, once made, the override)."""

    env_file: Path
    files: list[Path]

    def cmd(self, *args: str) -> list[str]:
        out = [*compose_binary(), "--project-name", PROJECT, "--project-directory", str(REPO),
               "--env-file", str(self.env_file)]
        for f in self.files:
            out += ["--file", str(f)]
        return [*out, *args]

    def env(self) -> dict[str, str]:
        # Isolated from the caller's environment: interpolation reads the env file only.
        keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG")
        return {k: os.environ[k] for k in keep if k in os.environ}

    def run(self, *args: str, check: bool = True, capture: bool = True,
            timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cmd(*args), capture_output=capture, text=True, check=False,
                              env=self.env(), timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise JourneyError(f"docker compose {' '.join(args)} failed (exit {proc.returncode})"
                               f":\n{(proc.stderr or '').strip()[-3000:]}")
        return proc

    def config(self, *profiles: str) -> dict[str, Any]:
        flags = [x for p in profiles for x in ("--profile", p)]
        return json.loads(self.run(*flags, "config", "--format", "json").stdout)

    def make_vars(self) -> list[str]:
        """Makefile variables that point its compose-aware targets at this stack."""
        files = " ".join(str(f) for f in self.files)
        binary = " ".join(compose_binary())
        return [f"COMPOSE={binary} --env-file {self.env_file}", f"COMPOSE_PROJECT={PROJECT}",
                f"COMPOSE_FILES={files}"]


def ci_env_file(workdir: Path, data: Path) -> Path:
    """``.env`` from ``.env.example`` with its secrets generated (as ``make install``) and the
    CI's choices: BIND_HOST=0.0.0.0 (remote access mode, loopback-only anyway on the host
    network), the replay service serving ``data`` and the platform pointed at it."""
    gen = images.cc._load_sibling("gen_secrets")
    text, _ = gen.fill_secrets((REPO / ".env.example").read_text(encoding="utf-8"), overrides={
        "BIND_HOST": "0.0.0.0",
        "REPLAY_DATA_DIR": str(data),
        "SOCRATA_BASE_URL": "http://replay:8765",
    })
    target = workdir / ".env"
    target.write_text(text, encoding="utf-8")
    target.chmod(0o600)
    return target


def read_env(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(path).items()}


# --- the journey -------------------------------------------------------------------------------
class Airflow:
    """Airflow's REST API v2 as the UI uses it (JWT from /auth/token)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.session = requests.Session()
        resp = requests.post(f"{url}/auth/token", json={"username": user, "password": password},
                             timeout=30)
        if resp.status_code >= 400:
            raise JourneyError(f"Airflow login failed ({resp.status_code}): {resp.text[:300]}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        if resp.status_code >= 400:
            raise JourneyError(f"{method} /api/v2{path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else None

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            run = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            tis = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
            done = sum(ti["state"] in {"success", "skipped"} for ti in tis)
            running = [ti["task_id"] for ti in tis if ti["state"] == "running"]
            line = f"{dag_id}: {run['state']}, {done}/{len(tis)} tasks done" + (
                f", running {', '.join(running)}" if running else "")
            if line != last:
                say(line)
                last = line
            if run["state"] in {"success", "failed"}:
                break
            if time.monotonic() > deadline:
                raise JourneyError(f"{dag_id} run {run_id} still {run['state']} after "
                                   f"{timeout:.0f} s")
            time.sleep(3)
        if run["state"] != "success":
            failed = [ti["task_id"] for ti in tis if ti["state"] in {"failed", "upstream_failed"}]
            raise JourneyError(f"{dag_id} run {run_id} failed; failed tasks: {failed}")
        return run


def follow_asset(af: Airflow, dag_id: str, after: str, timeout: float) -> dict[str, Any]:
    """The run of ``dag_id`` an asset event started after ``after``, waited to success."""
    deadline = time.monotonic() + 600
    while True:
        runs = af("GET", f"/dags/{dag_id}/dagRuns",
                  params={"order_by": "-run_after", "limit": 10})["dag_runs"]
        runs = [r for r in runs if r.get("run_type") == "asset_triggered"
                and (r.get("run_after") or "") >= after]
        if runs:
            return af.wait_run(dag_id, runs[0]["dag_run_id"], timeout=timeout)
        if time.monotonic() > deadline:
            raise JourneyError(f"no asset-triggered {dag_id} run within 600 s of {after}")
        time.sleep(3)


def month_end(month: str) -> str:
    year, mon = (int(x) for x in month.split("-"))
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return f"{year:04d}-{mon:02d}-01T00:00:00.000Z"


def journey(compose: Compose, ports: hostnet.PortMap, env: dict[str, str], month: str,
            timings: dict[str, float]) -> float:
    """The users' journey through the containers; returns the served arrest probability."""
    airflow_url = ports.url("airflow-apiserver", 8080)
    api = ports.url("fastapi", 8800)

    with phase("journey: DAGs listed through Airflow's REST API", timings):
        af = Airflow(airflow_url, env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"])
        deadline = time.monotonic() + 600
        while True:
            dags = {d["dag_id"]: d for d in af("GET", "/dags", params={"limit": 100})["dags"]}
            if set(PIPELINE_DAGS) <= set(dags):
                break
            if time.monotonic() > deadline:
                errors = af("GET", "/importErrors")["import_errors"]
                detail = "; ".join(f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}"
                                   for e in errors) or "no import error recorded"
                raise JourneyError(f"DAGs {', '.join(PIPELINE_DAGS)} not listed within 600 s "
                                   f"(listed: {sorted(dags)}); import errors: {detail}")
            time.sleep(5)
        say(f"DAGs: {', '.join(sorted(dags))}")
        paused = [d for d in PIPELINE_DAGS if dags[d]["is_paused"]]
        if paused:
            raise JourneyError(f"{', '.join(paused)} paused at creation: a UI trigger of "
                               f"{ETL_DAG} would train nothing (is_paused_upon_creation)")

    with phase(f"journey: {ETL_DAG} for {month} (triggered as the UI does) on the workers",
               timings):
        # The UI's Trigger button: unpause this DAG if paused (it is not), then POST the run with
        # the logical date, empty conf, no run id (Airflow generates manual__<date>).
        body = {"conf": {}, "logical_date": month_end(month), "data_interval_start": None,
                "data_interval_end": None}
        run = af("POST", f"/dags/{ETL_DAG}/dagRuns", json=body)
        say(f"triggered {ETL_DAG} run {run['dag_run_id']}")
        etl = af.wait_run(ETL_DAG, run["dag_run_id"], timeout=1800)
        workers = worker_logs(compose)
        missing = [t for t in ETL_TASKS if not re.search(
            rf"task_id='?{t}'?.*{re.escape(run['dag_run_id'])}|"
            rf"{re.escape(run['dag_run_id'])}.*task_id='?{t}'?", workers)]
        if missing:
            raise JourneyError(f"no airflow-worker container logged these ETL tasks: {missing}")
        say(f"all {len(ETL_TASKS)} ETL tasks ran on the airflow-worker containers")

    with phase(f"journey: {MONITOR_DAG} follows through the asset, requests retraining",
               timings):
        monitor = follow_asset(af, MONITOR_DAG, etl["start_date"], timeout=900)
        branch = af("GET", f"/dags/{MONITOR_DAG}/dagRuns/{monitor['dag_run_id']}"
                    "/taskInstances/request_retraining")
        if branch.get("state") != "success":  # a fresh stack has no champion
            raise JourneyError(f"{MONITOR_DAG} did not request retraining on a fresh stack "
                               f"(request_retraining {branch.get('state')})")

    with phase(f"journey: {TRAIN_DAG} follows the retraining request (no unpause)", timings):
        follow_asset(af, TRAIN_DAG, monitor["start_date"], timeout=1800)

    with phase("journey: the API container loads the champion, /predict answers", timings):
        poll = float(env.get("MODEL_POLL_SECONDS") or 30)
        deadline = time.monotonic() + poll + 90
        while requests.get(f"{api}/ready", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise JourneyError(f"the API served no champion within {poll + 90:.0f} s "
                                   f"(it polls the registry every {poll:.0f} s)")
            time.sleep(2)
        model = requests.get(f"{api}/model", timeout=10).json()
        resp = requests.post(f"{api}/predict", json=RECORD, timeout=30)
        if resp.status_code != 200:
            raise JourneyError(f"POST /predict -> {resp.status_code}: {resp.text[:300]}")
        probability = float(resp.json()["arrest_probability"])
        if not 0.0 <= probability <= 1.0:
            raise JourneyError(f"arrest_probability {probability} outside [0, 1]")
        say(f"model {model.get('name')} v{model.get('version')}: arrest_probability="
            f"{probability:.4f}")

    with phase("journey: the lake holds the month's objects", timings):
        check_lake(ports, env, month)

    with phase("journey: make champion through Compose", timings):
        proc = subprocess.run(["make", "--no-print-directory", "champion",
                               *compose.make_vars()], cwd=REPO, capture_output=True, text=True,
                              check=False, timeout=300)
        out = proc.stdout
        if proc.returncode != 0 or "exec -T airflow-worker chicago-crime champion" not in out \
                or f'"version": "{model.get("version")}"' not in out:
            raise JourneyError(f"make champion through Compose failed (exit {proc.returncode}):"
                               f"\n{out[-1500:]}\n{proc.stderr[-1500:]}")
        say(f"make champion (in the airflow-worker container): version {model.get('version')}")

    with phase("journey: MLflow from the LAN (BIND_HOST=0.0.0.0), not from elsewhere", timings):
        check_mlflow_hosts(ports, env)

    with phase("hostile: MLflow refuses anonymous and read-only writes", timings):
        check_mlflow_auth(ports, env, model)

    with phase("hostile: the lake's users stay in their bucket, MinIO's root is no one's",
               timings):
        check_lake_users(compose, ports, env)

    with phase("hostile: the broker and the database without their passwords", timings):
        check_store_locks(compose, ports, env)

    with phase("journey: JupyterLab behind its token", timings):
        jupyter = ports.url("jupyter", 8888)
        token = env["JUPYTER_TOKEN"]
        anon = requests.get(f"{jupyter}/api/status", timeout=10)
        ok = requests.get(f"{jupyter}/api/status", timeout=10,
                          headers={"Authorization": f"token {token}"})
        if anon.status_code != 403 or ok.status_code != 200:
            raise JourneyError(f"JupyterLab: /api/status without token -> {anon.status_code} "
                               f"(want 403), with token -> {ok.status_code} (want 200)")
        kernels = requests.get(f"{jupyter}/api/kernelspecs", timeout=10,
                               headers={"Authorization": f"token {token}"}).json()
        say(f"JupyterLab answers with its token only; kernels: {sorted(kernels['kernelspecs'])}")
        proc = subprocess.run(["make", "--no-print-directory", "notebooks",
                               "COMPOSE_BUILD=--no-build", *compose.make_vars()], cwd=REPO,
                              capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0 or "JupyterLab: http" not in proc.stdout \
                or "install-native" in proc.stdout + proc.stderr:
            raise JourneyError(f"make notebooks with the Compose stack up failed (exit "
                               f"{proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
        say("make notebooks: JupyterLab in the jupyter container, nothing installed on the host")
    return probability


def worker_logs(compose: Compose) -> str:
    ids = compose.run("ps", "--quiet", "airflow-worker").stdout.split()
    if not ids:
        raise JourneyError("no airflow-worker container is running")
    out = []
    for cid in ids:
        proc = subprocess.run([images.DOCKER, "logs", cid], capture_output=True, text=True,
                              check=False)
        out.append(proc.stdout + proc.stderr)
    return "\n".join(out)


def check_lake(ports: hostnet.PortMap, env: dict[str, str], month: str) -> None:
    import boto3

    sys.path.insert(0, str(REPO / "src"))
    from chicago_crime import layout, stages

    s3 = boto3.client("s3", endpoint_url=ports.url("minio", 9000), region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=env["DATA_REPO_BUCKET_NAME"]):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    expected = [layout.raw_crimes_key(month), layout.raw_stations_key(month),
                layout.window_key(month), layout.enriched_key(month)]
    # Every stage's report; from the split on, its train/test data too (enrich writes the CSV).
    expected += [layout.report_key(month, stage.name) for stage in stages.STAGES]
    expected += [layout.data_key(month, stage.name, part) for stage in stages.STAGES
                 if stage.name != stages.ENRICH for part in ("train", "test")]
    missing = [k for k in expected if k not in keys]
    if missing:
        raise JourneyError(f"the lake lacks {missing} (it holds {len(keys)} objects)")
    # the artifact bucket is MLflow's own (its S3 user); the platform's user cannot list it
    mlflow_s3 = boto3.client("s3", endpoint_url=ports.url("minio", 9000), region_name="us-east-1",
                             aws_access_key_id=env["MLFLOW_S3_ACCESS_KEY_ID"],
                             aws_secret_access_key=env["MLFLOW_S3_SECRET_ACCESS_KEY"])
    artifacts = mlflow_s3.list_objects_v2(Bucket=env["MLFLOW_BUCKET_NAME"]).get("KeyCount", 0)
    if not artifacts:
        raise JourneyError(f"bucket {env['MLFLOW_BUCKET_NAME']} holds no MLflow artifact")
    say(f"bucket {env['DATA_REPO_BUCKET_NAME']}: {len(keys)} objects, all {len(expected)} "
        f"expected for {month}; bucket {env['MLFLOW_BUCKET_NAME']}: artifacts present")


def _s3_denied(call: Any) -> str | None:
    """None when S3 refuses ``call`` with AccessDenied, else what happened."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        return None if code == "AccessDenied" else f"{code or exc}"
    return "allowed"


#: mc run inside a one-off minio-init container (the image's own client, in-network address):
#: the platform's and MLflow's keys try MinIO's admin API; the root login shows the platform's
#: policy (positive control). Each refused attempt prints "refused <n>".
_ADMIN_ATTACKS = r"""
set -u
d="/tmp/hostile.$$"; mkdir -m 700 "$d"; trap 'rm -rf "$d"' EXIT
mc() { command mc --config-dir "$d" "$@"; }
url="$AWS_ENDPOINT_URL_S3"
mc alias set root "$url" "$S3_ADMIN_ACCESS_KEY_ID" "$S3_ADMIN_SECRET_ACCESS_KEY" >/dev/null \
  || exit 3
mc alias set platform "$url" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null || exit 4
mc alias set mlflow "$url" "$MLFLOW_S3_ACCESS_KEY_ID" "$MLFLOW_S3_SECRET_ACCESS_KEY" >/dev/null \
  || exit 5
mc admin user info root "$AWS_ACCESS_KEY_ID" || exit 6
n=0
for attack in \
  "admin user add platform hostile-user hostile-secret-1" \
  "admin policy attach platform chicago-crime-mlflow --user $AWS_ACCESS_KEY_ID" \
  "admin user info platform $MLFLOW_S3_ACCESS_KEY_ID" \
  "admin user add mlflow hostile-user hostile-secret-1" \
  "admin policy attach mlflow chicago-crime-platform --user $MLFLOW_S3_ACCESS_KEY_ID"; do
  n=$((n + 1))
  # shellcheck disable=SC2086
  if mc $attack >/dev/null 2>&1; then echo "allowed $n: mc $attack"; else echo "refused $n"; fi
done
"""


def check_lake_users(compose: Compose, ports: hostnet.PortMap, env: dict[str, str]) -> None:
    """MinIO's root login is the set-up identity only: the platform's user (the old root login,
    ``AWS_*``) reads and writes the data bucket and nothing else, MLflow's user the artifact
    bucket only, and neither may create buckets or use the admin API (users, policies)."""
    import boto3

    def client(key: str, secret: str) -> Any:
        return boto3.client("s3", endpoint_url=ports.url("minio", 9000), region_name="us-east-1",
                            aws_access_key_id=env[key], aws_secret_access_key=env[secret])

    platform = client("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    mlflow = client("MLFLOW_S3_ACCESS_KEY_ID", "MLFLOW_S3_SECRET_ACCESS_KEY")
    data, artifacts = env["DATA_REPO_BUCKET_NAME"], env["MLFLOW_BUCKET_NAME"]
    key = f"hostile/{os.getpid()}.txt"
    # positive controls: each user works in its own bucket
    platform.list_objects_v2(Bucket=data, MaxKeys=1)
    mlflow.list_objects_v2(Bucket=artifacts, MaxKeys=1)
    attacks = {
        "platform lists the MLflow bucket": lambda: platform.list_objects_v2(Bucket=artifacts),
        "platform writes the MLflow bucket": lambda: platform.put_object(
            Bucket=artifacts, Key=key, Body=b"x"),
        "platform creates a bucket": lambda: platform.create_bucket(Bucket="hostile-bucket"),
        "platform deletes a bucket policy": lambda: platform.delete_bucket_policy(Bucket=data),
        "MLflow's user lists the data bucket": lambda: mlflow.list_objects_v2(Bucket=data),
        "MLflow's user reads the data bucket": lambda: mlflow.get_object(
            Bucket=data, Key="0-raw-data/monthly-data/2018-06/crimes.csv"),
        "MLflow's user writes the data bucket": lambda: mlflow.put_object(
            Bucket=data, Key=key, Body=b"x"),
    }
    broken = {what: got for what, call in attacks.items() if (got := _s3_denied(call))}
    if broken:
        raise JourneyError("S3 least privilege broken (want AccessDenied): " + "; ".join(
            f"{what} -> {got}" for what, got in broken.items()))
    proc = compose.run("run", "--rm", "--no-deps", "--entrypoint", "/bin/sh", "minio-init",
                       "-c", _ADMIN_ATTACKS, check=False, timeout=600)
    out = proc.stdout
    if proc.returncode != 0 or "PolicyName: chicago-crime-platform" not in out:
        raise JourneyError(f"mc with MinIO's root login (exit {proc.returncode}) did not show "
                           f"the platform user's policy chicago-crime-platform:\n{out[-1500:]}"
                           f"\n{proc.stderr[-1500:]}")
    allowed = [line for line in out.splitlines() if line.startswith("allowed")]
    refused = [line for line in out.splitlines() if line.startswith("refused")]
    if allowed or len(refused) != 5:
        raise JourneyError("MinIO's admin API answered a user that is not root: "
                           + "; ".join(allowed or [out[-1500:]]))
    say(f"S3: the platform's user stays in {data}, MLflow's in {artifacts} ({len(attacks)} "
        f"attempts AccessDenied); the admin API refuses both ({len(refused)} mc admin "
        f"attempts), the root login shows policy chicago-crime-platform")


def check_mlflow_hosts(ports: hostnet.PortMap, env: dict[str, str]) -> None:
    """What a browser on the LAN sends (Host + Origin of the server's LAN address) is accepted;
    another host name or origin (DNS rebinding, a foreign page) is refused."""
    url = f"{ports.url('mlflow', 5000)}/ajax-api/2.0/mlflow/experiments/search"
    lan = "192.168.10.20:5001"
    login = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    cases = [
        ({"Host": lan, "Origin": f"http://{lan}"}, 200, "a browser on the LAN"),
        ({"Host": "attacker.example:5001"}, 403, "another host name"),
        ({"Host": lan, "Origin": "http://attacker.example"}, 403, "a foreign page's origin"),
    ]
    for headers, want, who in cases:
        got = requests.post(url, json={"max_results": 5}, headers=headers, auth=login,
                            timeout=30).status_code
        if got != want:
            raise JourneyError(f"MLflow answered {got} to {who} ({headers}); expected {want}")
    say("MLflow: LAN browser 200, other host 403, foreign origin 403")


def check_mlflow_auth(ports: hostnet.PortMap, env: dict[str, str], model: dict[str, Any]) -> None:
    """The security suite's MLflow points, on the Compose stack: no anonymous write (the
    review's repro), no default login, the model server's account cannot move the alias."""
    api = f"{ports.url('mlflow', 5000)}/api/2.0/mlflow"
    name = f"hostile-{os.getpid()}"
    anonymous = requests.post(f"{api}/registered-models/create", json={"name": name}, timeout=30)
    default = requests.post(f"{api}/registered-models/create", json={"name": name},
                            auth=("admin", "password1234"), timeout=30)
    serving = (env["MLFLOW_SERVING_USERNAME"], env["MLFLOW_SERVING_PASSWORD"])
    alias = requests.post(f"{api}/registered-models/alias", auth=serving, timeout=30, json={
        "name": model["name"], "alias": "champion", "version": str(model["version"])})
    read = requests.get(f"{api}/registered-models/get", params={"name": model["name"]},
                        auth=serving, timeout=30)
    got = (anonymous.status_code, default.status_code, alias.status_code, read.status_code)
    if got != (401, 401, 403, 200):
        raise JourneyError(f"MLflow auth: anonymous create -> {got[0]} (want 401), MLflow's "
                           f"default admin login -> {got[1]} (want 401), the model server's "
                           f"account moving the alias -> {got[2]} (want 403), reading -> "
                           f"{got[3]} (want 200)")
    say("MLflow: anonymous write 401, default login 401, read-only account cannot move the "
        "alias (403) but reads (200)")


def check_store_locks(compose: Compose, ports: hostnet.PortMap, env: dict[str, str]) -> None:
    """Valkey refuses a client without its password; the platform's database role is not a
    superuser (the superuser is postgres, with its own password)."""
    with socket.create_connection(("127.0.0.1", ports("valkey", 6379)), timeout=10) as conn:
        conn.sendall(b"PING\r\n")
        answer = conn.recv(200).decode(errors="replace").strip()
    if not answer.startswith("-NOAUTH"):
        raise JourneyError(f"Valkey answered {answer!r} to a client without its password "
                           "(want -NOAUTH)")
    query = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    out = compose.run("exec", "-T", "postgres", "psql", "-U", env["PG_USER"], "-d",
                      env["PG_AIRFLOW_DB"], "-tAc", query).stdout.strip()
    if out != "f":
        raise JourneyError(f"PostgreSQL: the platform's role {env['PG_USER']} is a superuser "
                           f"({out!r}); it must not be")
    say(f"Valkey: no password -> {answer.split()[0]}; PostgreSQL: {env['PG_USER']} is not a "
        "superuser")


# --- main --------------------------------------------------------------------------------------
def image_cmds(names: list[str]) -> dict[str, list[str]]:
    out = {}
    for name in names:
        proc = images.docker("image", "inspect", "--format", "{{json .Config.Cmd}}", name,
                             check=False)
        if proc.returncode == 0:
            out[name] = json.loads(proc.stdout.strip() or "null") or []
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chicago")
    parser.add_argument("--month", default="2018-06")
    parser.add_argument("--workers", type=int, default=2, help="airflow-worker replicas")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    parser.add_argument("--health-grace", type=float, default=1.0,
                        help="multiply healthcheck timeouts, start periods and retries (a "
                             "machine shared with other jobs); commands are never changed")
    parser.add_argument("--images-only", action="store_true")
    parser.add_argument("--up-only", action="store_true",
                        help="stop after the stack is healthy (no journey)")
    parser.add_argument("--profiles", default=",".join(PROFILES),
                        help="Compose profiles to start (comma-separated)")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, kill) runs the same clean-up as a failure: down -v, then the engine
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = args.data.resolve()
    if not (data / "crimes").is_dir():
        print(f"error: {data} has no crimes/ folder of portal exports (--data)", file=sys.stderr)
        return 2
    timings: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="compose-test-"))
    env_file = ci_env_file(workdir, data)
    env = read_env(env_file)
    compose = Compose(env_file, [REPO / "docker-compose.yaml"])
    project = images.load_project(env_file)
    probability = None
    started_stack = False
    failure = ""
    try:
        with phase("stand-in base images", timings):
            images.standins(project)
        with phase("project images", timings):
            built = images.project_images(project)
            images.docker("image", "prune", "--force", check=False)
        if args.images_only:
            return 0
        with phase("host-network override", timings):
            ports = hostnet.PortMap.at(hostnet.find_base())
            resolved = compose.config("*")
            override = hostnet.build_override(resolved, ports, image_cmds(built),
                                              grace=args.health_grace)
            path = workdir / "docker-compose.hostnet.yaml"
            hostnet.write_override(path, override, ports)
            compose.files.append(path)
            problems = hostnet.verify(compose.config("*"), ports)
            if problems:
                raise JourneyError("host-network override incomplete:\n  " + "\n  ".join(problems))
            say(f"override {path}: {len(override['services'])} services on 127.0.0.1, ports "
                f"{ports.base}..{ports.base + hostnet.BLOCK - 1}")
        profiles = [p for p in args.profiles.split(",") if p]
        with phase(f"stack healthy (--profile {' --profile '.join(profiles)}, "
                   f"airflow-worker x{args.workers})", timings):
            started_stack = True
            # what an interrupted earlier run left (containers, volumes) never leaks in
            compose.run("--profile", "*", "down", "--volumes", "--remove-orphans", check=False,
                        timeout=600)
            flags = [x for p in profiles for x in ("--profile", p)]
            scale = (["--scale", f"airflow-worker={args.workers}"]
                     if {"all", "airflow"} & set(profiles) else [])
            proc = compose.run(*flags, "up", "--detach", "--no-build", "--wait",
                               "--wait-timeout", str(int(900 * args.health_grace)), *scale,
                               check=False, capture=True)
            if proc.returncode != 0:
                raise JourneyError("the stack did not become healthy:\n"
                                   + diagnose.explain(compose, proc.stderr))
            say(diagnose.resources(compose))
        if args.up_only:
            return 0
        probability = journey(compose, ports, env, args.month, timings)
        say(diagnose.resources(compose))
    except (JourneyError, images.BuildError, hostnet.OverrideError) as exc:
        failure = f"compose test FAILED: {exc}"
        if started_stack and "did not become healthy" not in str(exc):
            failure += "\nstate of the stack:\n  " + diagnose.explain(compose, "")
        return 1
    finally:
        if started_stack and not args.keep:
            with phase("down -v", timings):
                compose.run("--profile", "*", "down", "--volumes", "--remove-orphans",
                            check=False, timeout=600)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"stack left up; compose files and env in {workdir}")
        say("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        if failure:  # last, so CI logs end with what broke
            print(f"\n{failure}", file=sys.stderr, flush=True)
    print(f"compose journey ok: {time.monotonic() - STARTED:.0f} s, "
          f"arrest_probability={probability:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
