"""The static checks of the Compose stack pass on the repository and catch each kind of breakage.

Every "broken copy" test copies the files the stack is built from into a temporary directory,
breaks exactly one thing and asserts that the matching check reports it by name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
COPIED = [
    "docker-compose.yaml", ".env.example", ".dockerignore", "dockerfiles", "secrets",
    "requirements.lock", "pyproject.toml", "README.md", "src", "airflow/dags", "scripts",
    "notebooks", "monitoring",
]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cc = _load("check_compose")
gen = _load("gen_secrets")


@pytest.fixture
def project(tmp_path: Path):
    """A faithful copy of the stack's files; returns (root, break_it)."""
    root = tmp_path / "repo"
    for rel in COPIED:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)

    def break_it(rel: str, old: str, new: str, count: int = 1) -> None:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        assert text.count(old) >= count, f"{old!r} not found in {rel}: update this test"
        path.write_text(text.replace(old, new, count), encoding="utf-8")

    return root, break_it


def run(root: Path, check: str) -> list[str]:
    return cc.run_check(check, cc.Project(root))


def assert_reports(problems: list[str], *fragments: str) -> None:
    joined = "\n".join(problems)
    for fragment in fragments:
        assert fragment in joined, f"{fragment!r} not reported; problems were:\n{joined}"


# --- the real repository -------------------------------------------------------------------------
def test_every_check_passes_on_the_repository():
    results = cc.run_checks(REPO)
    assert set(results) == set(cc.CHECKS)
    assert {name: p for name, p in results.items() if p} == {}


def test_copy_is_faithful(project):
    root, _ = project
    results = cc.run_checks(root, only=["build-sources", "settings-env", "lock-versions"])
    assert {name: p for name, p in results.items() if p} == {}


# --- compose config ------------------------------------------------------------------------------
def test_unknown_key_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "    image: valkey/valkey", "    helthcheck: {}\n"
             "    image: valkey/valkey")
    assert_reports(run(root, "compose-config"), "helthcheck", "config -q failed")


def test_undefined_dependency_is_caught_in_its_profile(project):
    root, break_it = project
    # valkey is not in the `api` profile: only `--profile api` can see the dangling dependency.
    break_it("docker-compose.yaml", "      PROMETHEUS_MULTIPROC_DIR: /tmp/api-metrics\n    ports:",
             "      PROMETHEUS_MULTIPROC_DIR: /tmp/api-metrics\n    links: [valkey]\n    ports:")
    assert_reports(run(root, "compose-config"), "--profile api", "valkey")


def test_compose_warning_on_stderr_is_a_failure(project):
    root, break_it = project
    break_it("docker-compose.yaml", "name: chicago-crime\n",
             "version: \"3.8\"\nname: chicago-crime\n")
    assert_reports(run(root, "compose-config"), "version", "obsolete")


# --- variables -----------------------------------------------------------------------------------
def test_missing_env_var_is_caught(project):
    root, break_it = project
    break_it(".env.example", "MODEL_POLL_SECONDS=", "# MODEL_POLL_SECONDS=")
    assert_reports(run(root, "env-defined"),
                   "uses ${MODEL_POLL_SECONDS} but .env does not define MODEL_POLL_SECONDS")
    # Compose itself only warns (on stderr), which the config check also treats as failure.
    assert_reports(run(root, "compose-config"), "MODEL_POLL_SECONDS")


def test_variables_in_comments_and_escapes_are_ignored():
    text = "# ${NOT_USED}\nservices:\n  a:\n    command: echo $${HOSTNAME} ${USED:-x} $ALSO\n"
    assert cc.compose_variables(text) == {"USED": 4, "ALSO": 4}


def test_settings_name_missing_for_a_service_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "      MODEL_NAME: ${MODEL_NAME}\n      API_URL: http://fastapi",
             "      API_URL: http://fastapi")
    assert_reports(run(root, "settings-env"),
                   "service `fastapi`: environment variable MODEL_NAME (Settings.model_name) "
                   "is not set")


def test_airflow_components_need_the_whole_contract(project):
    root, break_it = project
    break_it("docker-compose.yaml", "    SOCRATA_CRIMES_DATASET: ${SOCRATA_CRIMES_DATASET}\n", "")
    problems = run(root, "settings-env")
    for svc in ("airflow-scheduler", "airflow-worker", "airflow-dag-processor"):
        assert_reports(problems, f"service `{svc}`: environment variable SOCRATA_CRIMES_DATASET")


def test_loopback_value_inside_a_container_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml",
             "      MLFLOW_TRACKING_URI: http://mlflow:5000\n      # Models come",
             "      MLFLOW_TRACKING_URI: ${MLFLOW_TRACKING_URI}\n      # Models come")
    assert_reports(run(root, "settings-env"),
                   "service `fastapi`: MLFLOW_TRACKING_URI=http://127.0.0.1:5001 points at the "
                   "container itself")


def test_hard_coded_value_drifting_from_env_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "      MODEL_NAME: ${MODEL_NAME}\n      API_URL",
             "      MODEL_NAME: other_model\n      API_URL")
    assert_reports(run(root, "settings-env"), "MODEL_NAME='other_model' differs from .env")


def test_s3_admin_keys_outside_minio_are_caught(project):
    """The MinIO root login (S3_ADMIN_*) given to a service, MinIO's root back on the platform's
    keys, or the MLflow server on the platform's S3 user: each is reported."""
    root, break_it = project
    assert run(root, "s3-identities") == []
    # a worker (and every Airflow component sharing its environment) gets the root login
    break_it("docker-compose.yaml", "    MODEL_NAME: ${MODEL_NAME}\n    AIRFLOW_ADMIN_USER",
             "    MODEL_NAME: ${MODEL_NAME}\n    LAKE_ROOT: ${S3_ADMIN_SECRET_ACCESS_KEY}\n"
             "    AIRFLOW_ADMIN_USER")
    # the model server gets MLflow's S3 secret under another name, on its command line
    break_it("docker-compose.yaml", "      OMP_NUM_THREADS: \"1\"",
             "      OMP_NUM_THREADS: \"1\"\n      EXTRA: ${MLFLOW_S3_SECRET_ACCESS_KEY}")
    break_it("docker-compose.yaml",
             "      MINIO_ROOT_USER: ${S3_ADMIN_ACCESS_KEY_ID}\n"
             "      MINIO_ROOT_PASSWORD: ${S3_ADMIN_SECRET_ACCESS_KEY",
             "      MINIO_ROOT_USER: ${AWS_ACCESS_KEY_ID}\n"
             "      MINIO_ROOT_PASSWORD: ${AWS_SECRET_ACCESS_KEY")
    problems = run(root, "s3-identities")
    assert_reports(problems, "service `airflow-worker`: holds S3_ADMIN_SECRET_ACCESS_KEY",
                   "service `airflow-scheduler`: holds S3_ADMIN_SECRET_ACCESS_KEY",
                   "service `fastapi`: holds MLFLOW_S3_SECRET_ACCESS_KEY",
                   "minio: MINIO_ROOT_USER / MINIO_ROOT_PASSWORD must be")
    assert not any(f"`{s}`: holds S3_ADMIN" in m for m in problems for s in ("minio", "minio-init"))
    assert all("<secret" not in m and "=" not in m for m in problems)  # no value printed


def test_mlflow_on_the_platforms_s3_user_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "      AWS_ACCESS_KEY_ID: ${MLFLOW_S3_ACCESS_KEY_ID}",
             "      AWS_ACCESS_KEY_ID: ${AWS_ACCESS_KEY_ID}")
    assert_reports(run(root, "settings-env"), "service `mlflow`: AWS_ACCESS_KEY_ID=",
                   "use ${MLFLOW_S3_ACCESS_KEY_ID}")


def test_misspelt_setting_name_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "      MODEL_POLL_SECONDS: ${MODEL_POLL_SECONDS}\n      OMP",
             "      MODEL_POLL_SECONDS: ${MODEL_POLL_SECONDS}\n      MODEL_POLL_SECOND: \"5\"\n"
             "      OMP")
    assert_reports(run(root, "settings-env"), "MODEL_POLL_SECOND looks like a project setting")


# --- build sources -------------------------------------------------------------------------------
def test_wrong_copy_path_is_caught(project):
    root, break_it = project
    break_it("dockerfiles/fastapi/Dockerfile", "COPY src ./src", "COPY source ./src")
    assert_reports(run(root, "build-sources"), "dockerfiles/fastapi/Dockerfile:",
                   "(COPY source)", "source does not exist in the build context")


def test_copy_source_excluded_by_dockerignore_is_caught(project):
    root, break_it = project
    break_it(".dockerignore", "!README.md\n", "")
    assert_reports(run(root, "build-sources"), "(COPY README.md)",
                   "excluded from the build context by .dockerignore")


def test_missing_build_context_and_bind_source_are_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "dockerfile: dockerfiles/mlflow/Dockerfile",
             "dockerfile: dockerfiles/mlflw/Dockerfile")
    shutil.rmtree(root / "airflow" / "dags")
    problems = run(root, "build-sources")
    assert_reports(problems, "service `mlflow`: Dockerfile dockerfiles/mlflw/Dockerfile does not"
                   " exist", "bind-mount source airflow/dags does not exist")


def test_dockerignore_semantics():
    rules = [(False, cc._ignore_regex("*")), (True, cc._ignore_regex("src")),
             (False, cc._ignore_regex("**/__pycache__"))]
    assert cc.is_ignored(".env", rules)
    assert cc.is_ignored("docs/x.md", rules)
    assert not cc.is_ignored("src/chicago_crime/config.py", rules)
    assert cc.is_ignored("src/chicago_crime/__pycache__/config.cpython-311.pyc", rules)


# --- health --------------------------------------------------------------------------------------
def test_service_healthy_without_healthcheck_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", '      test: ["CMD", "valkey-cli", "ping"]\n',
             '      disable: true\n')
    problems = run(root, "healthchecks")
    assert_reports(problems, "service `airflow-scheduler` waits for `valkey` to be "
                   "service_healthy but `valkey` has no healthcheck",
                   "long-running service `valkey` has no healthcheck")


def test_restarting_init_job_and_sleep_are_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", '        as_airflow airflow version\n    restart: "no"',
             "        sleep 5\n        as_airflow airflow version\n    restart: always")
    assert_reports(run(root, "healthchecks"),
                   "waits for `airflow-init` to complete but `airflow-init` has restart: always",
                   "uses `sleep`")


def test_one_shot_job_nobody_waits_for_is_caught(project):
    root, _ = project
    # In profile `mlflow` only the MLflow server awaits minio-init; without it `up --wait` would
    # report the job's exit as a failure.
    mlflow = root / "docker-compose.yaml"
    text = mlflow.read_text(encoding="utf-8")
    start = text.index("\n  mlflow:\n")
    end = text.index("    healthcheck:", start)  # its depends_on comes before its healthcheck
    block = text[start:end]
    wait = "      minio-init:\n        condition: service_completed_successfully\n"
    assert wait in block, "the mlflow service no longer waits for minio-init: update this test"
    mlflow.write_text(text[:start] + block.replace(wait, "") + text[end:], encoding="utf-8")
    problems = run(root, "healthchecks")
    assert_reports(problems, "profile `mlflow`: no long-running service waits for one-shot "
                   "`minio-init`")
    assert not any("profile `all`" in p for p in problems)


# --- versions ------------------------------------------------------------------------------------
def test_airflow_base_image_must_match_the_lock(project):
    root, break_it = project
    break_it("dockerfiles/airflow/Dockerfile", "FROM apache/airflow:3.3.2-python3.11",
             "FROM apache/airflow:3.3.1-python3.12")
    assert_reports(run(root, "lock-versions"),
                   "base image apache/airflow:3.3.1 but requirements.lock pins "
                   "apache-airflow==3.3.2", "base image Python 3.12 but the project requires "
                   "Python 3.11")


def test_image_locks_must_match_the_lock_and_carry_hashes(project):
    root, break_it = project
    lock = "dockerfiles/mlflow/requirements.lock"
    break_it(lock, "mlflow[auth]==3.17.2 \\", "mlflow[auth]==3.18.0 \\")
    break_it(lock, "boto3==1.44.8 \\", "boto3==1.44.8")
    assert_reports(run(root, "lock-versions"),
                   f"{lock} pins mlflow==3.18.0 but requirements.lock has mlflow==3.17.2",
                   f"{lock}: boto3==1.44.8 has no --hash")


def test_install_without_hashes_is_caught(project):
    root, break_it = project
    break_it("dockerfiles/fastapi/Dockerfile", "--require-hashes ", "")
    break_it("dockerfiles/airflow/Dockerfile", "--no-deps ", "")
    problems = run(root, "lock-versions")
    assert_reports(problems, "dockerfiles/fastapi/Dockerfile:", "dockerfiles/airflow/Dockerfile:",
                   "pip install without --require-hashes")
    assert not any("mlflow/Dockerfile" in p for p in problems)


def test_built_image_tag_must_match_what_it_carries(project):
    root, break_it = project
    break_it("docker-compose.yaml", "image: chicago-crime-mlflow:3.17.2",
             "image: chicago-crime-mlflow:3.16.0")
    assert_reports(run(root, "lock-versions"), "should be tagged 3.17.2")


# --- hardening / wiring / lint -------------------------------------------------------------------
def test_scaling_and_exposure_mistakes_are_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "    command: celery worker\n",
             "    command: celery worker\n    container_name: worker\n")
    break_it("docker-compose.yaml", "\n  valkey:\n    image:",
             "\n  valkey:\n    ports: [\"6379:6379\"]\n    image:")
    break_it("docker-compose.yaml", '"${BIND_HOST:-127.0.0.1}:${FASTAPI_PORT}:8800"',
             '"${FASTAPI_PORT}:8800"')
    assert_reports(run(root, "hardening"), "service `airflow-worker`: container_name",
                   "service `valkey`: publishes port 6379",
                   "service `fastapi`: port 8800 is bound to all interfaces")


def test_root_image_latest_tag_and_baked_secret_are_caught(project):
    root, break_it = project
    break_it("dockerfiles/mlflow/Dockerfile", "USER 10001\n", "")
    break_it("dockerfiles/fastapi/Dockerfile", "    OMP_NUM_THREADS=1\n",
             "    OMP_NUM_THREADS=1 \\\n    API_KEY=abc\n")
    break_it("docker-compose.yaml", "image: valkey/valkey:8.1.4-bookworm",
             "image: valkey/valkey:latest")
    assert_reports(run(root, "hardening"),
                   "dockerfiles/mlflow/Dockerfile: the final stage must switch to a non-root USER",
                   "dockerfiles/fastapi/Dockerfile:", "ENV names a secret",
                   "image 'valkey/valkey:latest' is not pinned")


def test_api_image_with_airflow_is_caught(project):
    root, break_it = project
    break_it("dockerfiles/fastapi/requirements.lock", "# This file is autogenerated",
             "apache-airflow==3.3.2\n# This file is autogenerated")
    assert_reports(run(root, "hardening"), "the API image must not install Airflow",
                   "dockerfiles/fastapi/requirements.lock pins apache-airflow")


def test_wrong_in_network_host_and_jwt_split_are_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "http://airflow-apiserver:8080/execution/",
             "http://airflow-api-server:8080/execution/")
    break_it("docker-compose.yaml", '      DUMB_INIT_SETSID: "0"\n',
             '      DUMB_INIT_SETSID: "0"\n      AIRFLOW__API_AUTH__JWT_SECRET: other\n')
    break_it("docker-compose.yaml", "      - --serve-artifacts\n",
             "      - --serve-artifacts\n      - --allowed-hosts=localhost\n")
    assert_reports(run(root, "wiring"), "points at host `airflow-api-server`",
                   "share one non-empty AIRFLOW__API_AUTH__JWT_SECRET",
                   "Host `mlflow:5000` is not allowed")


def test_mlflow_closed_to_the_network_is_caught(project):
    root, break_it = project
    # The issue this guards: BIND_HOST=0.0.0.0 opened the ports but MLflow still answered 403
    # to http://<server's IP>:5001.
    break_it("dockerfiles/mlflow/entrypoint.sh", '  0.0.0.0) hosts+=(', '  0.0.0.0.x) hosts+=(')
    assert_reports(run(root, "wiring"), "with BIND_HOST=0.0.0.0 a browser on the LAN")
    (root / "dockerfiles/mlflow/entrypoint.sh").unlink()
    assert_reports(run(root, "wiring"),
                   "no --allowed-hosts and no dockerfiles/mlflow/entrypoint.sh")


def test_root_job_with_extra_capabilities_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "cap_add: [CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID]",
             "cap_add: [CHOWN, SYS_ADMIN]")
    break_it("docker-compose.yaml", '  fastapi:\n    build:',
             '  fastapi:\n    user: "0:0"\n    build:')
    assert_reports(run(root, "hardening"), "`airflow-init`: runs as root with extra capabilities "
                   "SYS_ADMIN", "service `fastapi`: runs as root (user: 0:0)")


def test_misspelt_airflow_option_is_caught(project):
    root, break_it = project
    break_it("docker-compose.yaml", "AIRFLOW__CELERY__WORKER_CONCURRENCY:",
             "AIRFLOW__CELERY__WORKER_CONCURENCY:")
    break_it("docker-compose.yaml", "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT",
             "AIRFLOW__WORKER__EXECUTION_API_TIMEOUT")
    assert_reports(run(root, "airflow-config"),
                   "AIRFLOW__CELERY__WORKER_CONCURENCY: Airflow has no option [celery] "
                   "worker_concurency", "Airflow has no section [worker]")


def test_hadolint_findings_fail(project):
    root, break_it = project
    break_it("dockerfiles/mlflow/Dockerfile", "COPY dockerfiles/mlflow/requirements.lock",
             "RUN cd /tmp && echo hi\nCOPY dockerfiles/mlflow/requirements.lock")
    assert_reports(run(root, "hadolint"), "dockerfiles/mlflow/Dockerfile", "DL3003")


def test_profiles_and_secrets_files_are_checked(project):
    root, break_it = project
    break_it("docker-compose.yaml", "    profiles: [all, api]\n", "    profiles: [api]\n")
    (root / "secrets" / "variables.yaml").write_text("# nothing\n")
    break_it("secrets/connections.yaml", "  conn_type: http\n", "  conn_typ: http\n")
    assert_reports(run(root, "profiles"), "service `fastapi` is not in profile `all`")
    assert_reports(run(root, "secrets-files"), "variables.yaml: must be a non-empty mapping",
                   "unknown keys conn_typ", "has no conn_type")


def test_cli_exit_code_and_message(project):
    root, break_it = project
    break_it("dockerfiles/fastapi/Dockerfile", "COPY src ./src", "COPY srcs ./src")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_compose.py"),
                           "--root", str(root), "--only", "build-sources", "env-defined"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "FAIL build-sources" in proc.stdout and "ok   env-defined" in proc.stdout
    assert "srcs does not exist" in proc.stdout


# --- gen_secrets ---------------------------------------------------------------------------------
ENV_SAMPLE = """# comment stays
AIRFLOW_UID=50000
AIRFLOW_JWT_SECRET=
AIRFLOW_FERNET_KEY=""
API_KEY=keep-me
OTHER=x  # trailing
"""


def test_gen_secrets_fills_only_empty_values_and_is_idempotent(tmp_path: Path):
    from cryptography.fernet import Fernet

    env = tmp_path / ".env"
    env.write_text(ENV_SAMPLE)
    os.chmod(env, 0o640)
    assert gen.main([str(env)]) == 0
    first = env.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines() if "=" in line
                  and not line.startswith("#"))
    assert values["API_KEY"] == "keep-me"
    assert len(gen.base64.urlsafe_b64decode(values["AIRFLOW_JWT_SECRET"] + "==")) >= 64
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # raises on an invalid key
    assert first.startswith("# comment stays\nAIRFLOW_UID=50000\n")
    assert "OTHER=x  # trailing\n" in first
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # it holds every password
    assert gen.main([str(env)]) == 0
    assert env.read_text() == first


def test_gen_secrets_appends_missing_names_and_sets_uid(tmp_path: Path):
    env = tmp_path / ".env"
    env.write_text("PG_USER=airflow")
    assert gen.main([str(env), "--airflow-uid", "1234"]) == 0
    text = env.read_text()
    assert text.startswith("PG_USER=airflow\n")
    assert "AIRFLOW_UID=1234\n" in text
    for name in gen.GENERATORS:
        assert f"\n{name}=" in text
    assert gen.main([str(env), "--airflow-uid", "abc"]) == 1
    assert gen.main([str(tmp_path / "missing.env")]) == 1


def test_two_runs_generate_different_secrets():
    a, _ = gen.fill_secrets("AIRFLOW_JWT_SECRET=\n")
    b, _ = gen.fill_secrets("AIRFLOW_JWT_SECRET=\n")
    assert a != b


# --- Airflow entrypoint --------------------------------------------------------------------------
def test_airflow_entrypoint_writes_passwords_and_hands_over(tmp_path: Path):
    official = tmp_path / "official.sh"
    official.write_text('#!/usr/bin/env bash\nprintf "%s|" "$@"\n')
    official.chmod(0o755)
    passwords = tmp_path / "auth" / "passwords.json"
    env = {"PATH": os.environ["PATH"], "AIRFLOW_OFFICIAL_ENTRYPOINT": str(official),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW_ADMIN_USER": "admin", "AIRFLOW_ADMIN_PASSWORD": 'p"w d'}
    script = REPO / "dockerfiles" / "airflow" / "entrypoint.sh"
    proc = subprocess.run(["bash", str(script), "celery", "worker"], env=env,
                          capture_output=True, text=True, check=True)
    assert proc.stdout == "celery|worker|"
    assert json.loads(passwords.read_text()) == {"admin": 'p"w d'}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    del env["AIRFLOW_ADMIN_PASSWORD"]
    proc = subprocess.run(["bash", str(script), "api-server"], env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "AIRFLOW_ADMIN_PASSWORD is not set" in proc.stderr
