#!/usr/bin/env python3
"""Static checks of the Docker Compose stack: no Docker engine needed (``make check-compose``).

    .venv/bin/python scripts/check_compose.py [--root DIR] [--only CHECK ...] [--list]

Every check is a function ``check_xxx(project) -> list[str]`` that returns one message per
problem (empty list = pass), so tests can run each one on a deliberately broken copy of the
repository. The script prints every problem and exits 1 when there is any.

Checks (see ``CHECKS``):

* ``compose-config``: ``docker compose config -q`` with no profile, each profile and
  ``--profile '*'``; a non-zero exit or ANY stderr output (warnings included) fails.
* ``profiles``: the profiles users expect exist and ``all`` starts every long-running service.
* ``hadolint``: hadolint on every Dockerfile (any finding fails).
* ``build-sources``: every build context, Dockerfile, COPY/ADD source and bind-mount source
  exists, and no COPY source is excluded by the context's ``.dockerignore``.
* ``healthchecks``: every ``service_healthy`` dependency has a healthcheck, every
  ``service_completed_successfully`` dependency is a one-shot job, every long-running service
  has a healthcheck; no ``sleep`` anywhere.
* ``env-defined``: every variable docker-compose.yaml interpolates is defined in ``.env``.
* ``settings-env``: each app service gets the environment names ``chicago_crime.config.Settings``
  reads that it needs (``SERVICE_SETTINGS``), in-network values for host/URL settings and the
  ``.env`` value for every other one.
* ``wiring``: URLs point at services that exist; one JWT secret for all Airflow components;
  MLflow serves artifacts and allows its in-network Host header.
* ``airflow-config``: every ``AIRFLOW__SECTION__KEY`` is an option of the installed (locked)
  Airflow core or one of its providers (a misspelt option is silently ignored by Airflow).
* ``lock-versions``: base image versions and pip pins in Dockerfiles equal ``requirements.lock``;
  every ``pip install`` runs with ``--require-hashes`` from an image lock
  (``dockerfiles/*/requirements.lock``: every pin hashed, every version the root lock's), except
  the project's own ``--no-deps`` build; built image tags match the versions they carry.
* ``hardening``: images pinned by tag; non-root images and users; no ``container_name`` (so
  workers scale); only UIs and the API published, bound to ``BIND_HOST``; no secrets in
  Dockerfiles or build contexts; the API image has no Airflow.
* ``secrets-files``: ``secrets/*.yaml`` are valid for Airflow's LocalFilesystemBackend.
* ``s3-identities``: MinIO's root login is the set-up identity ``S3_ADMIN_*`` (not a key pair a
  service uses) and no service but ``minio``/``minio-init`` holds it; MLflow's S3 secret is held
  by ``mlflow`` (as its ``AWS_*``) and ``minio-init`` only.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = "docker-compose.yaml"

# Profiles users of the template expect; `debug` only adds tools (the Airflow CLI).
EXPECTED_PROFILES = {"all", "db", "minio", "mlflow", "airflow", "api", "debug", "replay",
                     "notebooks", "monitoring"}
TOOL_PROFILES = {"debug"}
# Add-on profiles: long-running services started on demand, beside `all` (offline data source,
# JupyterLab, Prometheus + Pushgateway + Grafana). They need not be in `all`.
ADDON_PROFILES = {"replay", "notebooks", "monitoring"}
# Services allowed to publish ports (UIs and the model API), always bound to ${BIND_HOST}.
PUBLISHED_SERVICES = {"airflow-apiserver", "mlflow", "minio", "fastapi", "jupyter", "prometheus",
                      "grafana"}
# Profiles started with `docker compose up --wait` (make up): each one-shot job in them must be
# awaited by a long-running service, or --wait reports the job's exit as a failure.
WAIT_PROFILES = {"all", "airflow", "mlflow", "api", "notebooks", "monitoring"}
# Bind-mount sources that `make install` creates (they are not in git).
CREATED_BY_INSTALL = {"airflow/logs", "airflow/plugins"}
# Bind-mount sources given at run time (the default is a placeholder that must not exist, so a
# forgotten REPLAY_DATA_DIR fails with "bind source path does not exist").
GIVEN_AT_RUN_TIME = {"replay-data"}
# One-shot jobs allowed to start as root, and the only capabilities they may add back.
ROOT_JOBS = {"airflow-init": "gives ./airflow/logs to AIRFLOW_UID (chown needs root)"}
ROOT_JOB_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"}
LOOPBACK = ("127.0.0.1", "localhost", "0.0.0.0", "[::1]")

# --- which Settings each app service needs ----------------------------------------------------
# Settings that only make sense on the host: published ports and the bind address.
HOST_ONLY_SETTINGS = {
    "bind_host", "minio_port", "minio_port_ui", "mlflow_port", "airflow_port", "fastapi_port",
    "prometheus_port", "grafana_port",
}
# Settings whose value names a host: containers must get the in-network value, never loopback.
#: A value that deliberately grants nothing (the model server's S3 keys: it reads models through
#: MLflow) may differ from .env.
NO_ACCESS_PREFIX = "none-"


def _mask(value: str) -> str:
    return f"<secret, {len(value)} chars>" if value else value


IN_NETWORK_SETTINGS = {
    "pg_host", "pg_port", "valkey_host", "valkey_port", "aws_endpoint_url_s3",
    "mlflow_tracking_uri", "mlflow_s3_endpoint_url", "api_url", "pushgateway_url",
}
# Settings only the native stack reads (its SeaweedFS and Airflow helper listeners, its replay
# server, the model server's worker count), and secrets no Airflow container may hold (set-up
# identities, other services' own accounts): never part of the Airflow containers' contract.
NATIVE_ONLY_SETTINGS = {
    "seaweedfs_master_port", "seaweedfs_master_grpc_port", "seaweedfs_volume_port",
    "seaweedfs_volume_grpc_port", "seaweedfs_filer_port", "seaweedfs_filer_grpc_port",
    "seaweedfs_s3_grpc_port", "seaweedfs_admin_port", "airflow_worker_log_port",
    "airflow_triggerer_log_port", "airflow_scheduler_health_port", "replay_port", "api_workers",
    "pushgateway_port", "otlp_bridge_port", "airflow_workers",
}
NOT_FOR_AIRFLOW = {
    "pg_admin_password", "pg_mlflow_auth_db", "pg_monitoring_user", "pg_monitoring_password",
    "s3_admin_access_key_id", "s3_admin_secret_access_key", "mlflow_s3_access_key_id",
    "mlflow_s3_secret_access_key", "mlflow_admin_username", "mlflow_admin_password",
    "mlflow_serving_username", "mlflow_serving_password", "mlflow_flask_server_secret_key",
    "grafana_admin_password",
}
# Issue 13 (native side done): the Compose stack does not pass these yet (broker password, the
# platform's MLflow account, the task heartbeat timeout). Remove each name once
# docker-compose.yaml wires it.
COMPOSE_PENDING = {
    "valkey_password", "mlflow_tracking_username", "mlflow_tracking_password",
    "airflow_task_heartbeat_timeout",
}
# Settings a service receives from another .env name: the MLflow server's S3 client reads
# AWS_ACCESS_KEY_ID/SECRET, but holds MLflow's own S3 user (MLFLOW_S3_*), not the platform's.
SETTING_SOURCES: dict[str, dict[str, str]] = {
    "mlflow": {"AWS_ACCESS_KEY_ID": "MLFLOW_S3_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY": "MLFLOW_S3_SECRET_ACCESS_KEY"},
}
# Secrets (.env names) and the only services that may hold their value, anywhere in their
# configuration (environment, command, ...): MinIO's root login and MLflow's S3 user.
S3_ADMIN_HOLDERS = {"minio", "minio-init"}
SECRET_HOLDERS: dict[str, set[str]] = {
    "S3_ADMIN_SECRET_ACCESS_KEY": S3_ADMIN_HOLDERS,
    "MLFLOW_S3_SECRET_ACCESS_KEY": {"mlflow", "minio-init"},
}
# The model server's own settings (no Airflow component reads them).
PREDICTION_LOG_SETTINGS = {
    "prediction_log_enabled", "prediction_log_retention_days", "prediction_log_queue_size",
    "prediction_log_batch_size", "prediction_log_flush_seconds",
    "prediction_log_shutdown_seconds",
}
API_ONLY_SETTINGS = {"api_allowed_hosts", *PREDICTION_LOG_SETTINGS}
CONTRACT = "contract"  # every Settings field named in .env, except the sets above
# Service (fnmatch pattern) -> Settings fields it must receive. Airflow components import the
# package (DAG parsing on the dag-processor, tasks on the worker): they get the whole contract.
SERVICE_SETTINGS: dict[str, set[str] | str] = {
    "airflow-*": CONTRACT,
    "fastapi": {
        "aws_access_key_id", "aws_secret_access_key", "aws_default_region",
        "aws_endpoint_url_s3", "mlflow_s3_endpoint_url", "data_repo_bucket_name",
        "mlflow_bucket_name", "mlflow_tracking_uri", "model_name", "api_key",
        "model_poll_seconds", "api_allowed_hosts",
        # the prediction log: its writer login, the monitoring database alone
        "pg_host", "pg_port", "pg_monitoring_db", "pg_monitoring_user", "pg_monitoring_password",
        *PREDICTION_LOG_SETTINGS,
    },
    # JupyterLab's notebooks read the lake and the registry through Settings.
    "jupyter": {
        "aws_access_key_id", "aws_secret_access_key", "aws_default_region",
        "aws_endpoint_url_s3", "mlflow_s3_endpoint_url", "data_repo_bucket_name",
        "mlflow_bucket_name", "mlflow_tracking_uri", "model_name",
    },
    # The MLflow server does not import the package, but its S3 client reads these names.
    "mlflow": {
        "aws_access_key_id", "aws_secret_access_key", "aws_default_region",
        "aws_endpoint_url_s3", "mlflow_s3_endpoint_url",
    },
}
# Environment names that look like the project's settings (same prefixes) but belong to a tool.
PROJECT_PREFIXES = ("PG_", "VALKEY_", "DATA_REPO_", "SOCRATA_", "MODEL_", "API_", "ETL_",
                    "SEARCH_", "CV_", "PROMOTION_", "PRIMARY_", "MAX_", "RANDOM_", "TEST_")

Problems = list[str]


class CheckError(RuntimeError):
    """A prerequisite of a check is missing (a tool, a file that cannot be parsed)."""


def _load_sibling(name: str) -> Any:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_check_compose_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(name: str) -> str:
    """Path of a CLI installed in the venv (next to this interpreter) or on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise CheckError(f"`{name}` not found: install the dev extras (make install-native)")
    return found


def settings_fields() -> dict[str, Any]:
    """``Settings.model_fields`` of the package (imported from ``src/`` if not installed)."""
    try:
        from chicago_crime.config import Settings
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        from chicago_crime.config import Settings
    return dict(Settings.model_fields)


# --- the project under check -------------------------------------------------------------------
@dataclass
class Project:
    """A checkout (or a copy of one) and everything the checks derive from it."""

    root: Path

    @property
    def compose_file(self) -> Path:
        return self.root / COMPOSE_FILE

    @cached_property
    def compose_text(self) -> str:
        if not self.compose_file.is_file():
            raise CheckError(f"{COMPOSE_FILE} not found in {self.root}")
        return self.compose_file.read_text(encoding="utf-8")

    @cached_property
    def raw(self) -> dict[str, Any]:
        """docker-compose.yaml as YAML (anchors and merge keys resolved, no interpolation)."""
        try:
            data = yaml.safe_load(self.compose_text)
        except yaml.YAMLError as exc:
            raise CheckError(f"{COMPOSE_FILE} is not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
            raise CheckError(f"{COMPOSE_FILE} has no services mapping")
        return data

    @cached_property
    def env_file(self) -> Path:
        """The tracked template ``.env.example`` (``.env`` is generated and git-ignored)."""
        for name in (".env.example", ".env"):
            if (self.root / name).is_file():
                return self.root / name
        raise CheckError(f".env.example not found in {self.root}")

    @cached_property
    def env(self) -> dict[str, str]:
        """The template's settings (secrets are empty until ``make install``)."""
        return {k: v or "" for k, v in dotenv_values(self.env_file).items()}

    @cached_property
    def env_for_compose(self) -> Path:
        """A copy of ``.env`` with empty secrets generated (what ``make install`` produces)."""
        gen = _load_sibling("gen_secrets")
        tmpdir = Path(tempfile.mkdtemp(prefix="check-compose-"))
        text, _ = gen.fill_secrets(self.env_file.read_text(encoding="utf-8"))
        target = tmpdir / ".env"
        target.write_text(text, encoding="utf-8")
        return target

    @cached_property
    def effective_env(self) -> dict[str, str]:
        return {k: v or "" for k, v in dotenv_values(self.env_for_compose).items()}

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the Compose CLI on this project, isolated from the caller's environment."""
        home = self.env_for_compose.parent
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        cmd = [tool("docker-compose"), "--project-directory", str(self.root),
               "-f", str(self.compose_file), "--env-file", str(self.env_for_compose), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                              check=False)

    @cached_property
    def resolved(self) -> dict[str, Any]:
        """``docker compose config`` with every profile: interpolated and normalised."""
        proc = self.compose("--profile", "*", "config", "--format", "json")
        if proc.returncode != 0:
            raise CheckError("docker compose config failed (see the compose-config check): "
                             + proc.stderr.strip())
        return json.loads(proc.stdout)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.resolved.get("services", {})

    @cached_property
    def profiles(self) -> set[str]:
        out: set[str] = set()
        for svc in self.raw["services"].values():
            out.update((svc or {}).get("profiles") or [])
        return out

    @cached_property
    def lock(self) -> dict[str, str]:
        """requirements.lock as {normalised name: version}."""
        path = self.root / "requirements.lock"
        if not path.is_file():
            raise CheckError("requirements.lock not found")
        pins: dict[str, str] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
            if m:
                pins[normalise(m[1])] = m[2]
        return pins

    @cached_property
    def pyproject(self) -> dict[str, Any]:
        return tomllib.loads((self.root / "pyproject.toml").read_text(encoding="utf-8"))

    def builds(self) -> Iterator[tuple[str, Path, Path]]:
        """(service, context dir, Dockerfile path) of every service that builds an image."""
        for name, svc in sorted(self.services.items()):
            build = svc.get("build")
            if not build:
                continue
            context = Path(build.get("context", "."))
            if not context.is_absolute():
                context = self.root / context
            dockerfile = Path(build.get("dockerfile", "Dockerfile"))
            if not dockerfile.is_absolute():
                dockerfile = context / dockerfile
            yield name, context, dockerfile

    def dockerfiles(self) -> list[Path]:
        """Every Dockerfile: those under dockerfiles/ and those the compose file builds."""
        found = {p.resolve() for p in (self.root / "dockerfiles").glob("**/Dockerfile*")
                 if p.is_file() and not p.name.endswith(".dockerignore")}
        with contextlib.suppress(CheckError):
            found |= {d.resolve() for _, _, d in self.builds() if d.is_file()}
        return sorted(found)

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


def normalise(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- Dockerfile parsing ------------------------------------------------------------------------
@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined (comments and blank lines dropped)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        text = " ".join(part.strip() for part in buf if part.strip())
        buf = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    return out


def copy_sources(instr: Instruction) -> tuple[list[str], dict[str, str]]:
    """Sources and flags of a COPY/ADD instruction (shell or JSON form)."""
    args = instr.args
    flags: dict[str, str] = {}
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        args = args.strip()
    parts = json.loads(args) if args.startswith("[") else shlex.split(args)
    return parts[:-1], flags


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage (each starts with FROM)."""
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM" or not out:
            out.append([])
        out[-1].append(ins)
    return out


def pip_installs(instructions: list[Instruction]) -> Iterator[tuple[Instruction, list[str]]]:
    """(instruction, argument tokens) of every ``pip install`` in RUN instructions."""
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", ins.args):
            tokens = shlex.split(command)
            for i in range(len(tokens) - 1):
                if tokens[i].endswith("pip") and tokens[i + 1] == "install":
                    yield ins, tokens[i + 2:]
                    break
                if tokens[i] == "-m" and tokens[i + 1] == "pip" and tokens[i + 2:i + 3] == [
                        "install"]:
                    yield ins, tokens[i + 3:]
                    break


# --- .dockerignore -----------------------------------------------------------------------------
def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c)))
        i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_patterns(context: Path, dockerfile: Path) -> list[tuple[bool, str]]:
    """(negated, pattern) lines of ``<Dockerfile>.dockerignore`` (BuildKit) or
    ``<context>/.dockerignore``."""
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not path.is_file():
        path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, os.path.normpath(line.lstrip("!").strip()).lstrip("/")))
    return patterns


def dockerignore_rules(context: Path, dockerfile: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """:func:`dockerignore_patterns` compiled."""
    return [(negate, _ignore_regex(pattern))
            for negate, pattern in dockerignore_patterns(context, dockerfile)]


def is_ignored(rel_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = Path(rel_path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            ignored = not negate
    return ignored


# --- checks --------------------------------------------------------------------------------------
def check_compose_config(p: Project) -> Problems:
    """``docker compose config -q`` for no profile, each profile and all profiles."""
    problems: Problems = []
    variants: list[list[str]] = [[]] + [["--profile", x] for x in sorted(p.profiles)]
    variants.append(["--profile", "*"])
    for profile_args in variants:
        proc = p.compose(*profile_args, "config", "-q")
        label = " ".join(["docker compose", *profile_args, "config -q"])
        if proc.returncode != 0 or proc.stderr.strip():
            detail = (proc.stderr.strip() or proc.stdout.strip() or "no output")
            problems.append(f"{label} failed (exit {proc.returncode}): {detail}")
    return problems


def _one_shot(p: Project) -> set[str]:
    """Services run to completion: targets of service_completed_successfully, debug tools."""
    out = set()
    for name, svc in p.services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec.get("condition") == "service_completed_successfully":
                out.add(dep)
        if set(svc.get("profiles") or []) <= TOOL_PROFILES and svc.get("profiles"):
            out.add(name)
    return out


def check_profiles(p: Project) -> Problems:
    """Expected profiles exist; ``all`` starts every service but the debug tools."""
    problems = [f"profile `{x}` is not used by any service (users expect: "
                f"{', '.join(sorted(EXPECTED_PROFILES))})"
                for x in sorted(EXPECTED_PROFILES - p.profiles)]
    for name, svc in sorted(p.raw["services"].items()):
        profiles = set((svc or {}).get("profiles") or [])
        if profiles and not profiles <= TOOL_PROFILES | ADDON_PROFILES and "all" not in profiles:
            problems.append(f"service `{name}` is not in profile `all` (profiles: "
                            f"{', '.join(sorted(profiles))})")
    return problems


def check_hadolint(p: Project) -> Problems:
    """hadolint on every Dockerfile; any finding (error, warning, info, style) fails."""
    problems: Problems = []
    files = p.dockerfiles()
    if not files:
        return ["no Dockerfile found under dockerfiles/"]
    exe = tool("hadolint")
    for path in files:
        proc = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True,
                              check=False, timeout=60)
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            problems.append(f"hadolint {p.rel(path)}:\n    " + out.replace("\n", "\n    "))
    return problems


def check_build_sources(p: Project) -> Problems:
    """Build contexts, Dockerfiles, COPY/ADD sources and bind-mount sources exist."""
    problems: Problems = []
    for name, context, dockerfile in p.builds():
        if not context.is_dir():
            problems.append(f"service `{name}`: build context {p.rel(context)} does not exist")
            continue
        if not dockerfile.is_file():
            problems.append(f"service `{name}`: Dockerfile {p.rel(dockerfile)} does not exist")
            continue
        rules = dockerignore_rules(context, dockerfile)
        stage_names = set()
        for ins in parse_dockerfile(dockerfile):
            if ins.keyword == "FROM":
                m = re.search(r"\bAS\s+(\S+)", ins.args, re.IGNORECASE)
                if m:
                    stage_names.add(m[1].lower())
            if ins.keyword not in {"COPY", "ADD"}:
                continue
            sources, flags = copy_sources(ins)
            if "from" in flags:
                continue
            for src in sources:
                where = f"{p.rel(dockerfile)}:{ins.line} ({ins.keyword} {src})"
                if re.match(r"^[a-z]+://", src):
                    continue
                rel = os.path.normpath(src).lstrip("/")
                if rel.startswith(".."):
                    problems.append(f"{where}: source is outside the build context")
                    continue
                matches = list(context.glob(rel)) if any(c in rel for c in "*?[") else (
                    [context / rel] if (context / rel).exists() else [])
                if not matches:
                    problems.append(f"{where}: {p.rel(context / rel)} does not exist in the "
                                    f"build context {p.rel(context)}")
                elif rel != "." and is_ignored(rel, rules):
                    problems.append(f"{where}: excluded from the build context by .dockerignore")
    for name, svc in sorted(p.services.items()):
        for vol in svc.get("volumes") or []:
            if vol.get("type") != "bind":
                continue
            src = Path(vol["source"])
            if src.exists():
                continue
            rel = p.rel(src)
            if rel in CREATED_BY_INSTALL or rel in GIVEN_AT_RUN_TIME:
                continue
            problems.append(f"service `{name}`: bind-mount source {rel} does not exist")
    return problems


def _has_dockerfile_healthcheck(p: Project, service: str) -> bool:
    for name, _, dockerfile in p.builds():
        if name == service and dockerfile.is_file():
            last = stages(parse_dockerfile(dockerfile))[-1]
            return any(i.keyword == "HEALTHCHECK" and not i.args.upper().startswith("NONE")
                       for i in last)
    return False


def _has_healthcheck(p: Project, service: str) -> bool:
    hc = p.services[service].get("healthcheck")
    if hc:
        return not hc.get("disable") and bool(hc.get("test"))
    return _has_dockerfile_healthcheck(p, service)


def check_healthchecks(p: Project) -> Problems:
    """Dependency conditions are backed by healthchecks / one-shot jobs; no sleeps."""
    problems: Problems = []
    one_shot = _one_shot(p)
    for name, svc in sorted(p.services.items()):
        for dep, spec in sorted((svc.get("depends_on") or {}).items()):
            condition = spec.get("condition", "service_started")
            if dep not in p.services:
                problems.append(f"service `{name}` depends on undefined service `{dep}`")
            elif condition == "service_healthy" and not _has_healthcheck(p, dep):
                problems.append(f"service `{name}` waits for `{dep}` to be service_healthy but "
                                f"`{dep}` has no healthcheck")
            elif condition == "service_completed_successfully":
                restart = p.services[dep].get("restart", "no")
                if restart not in {"no", "on-failure"}:
                    problems.append(f"service `{name}` waits for `{dep}` to complete but `{dep}`"
                                    f" has restart: {restart} (a job must not restart)")
        if name not in one_shot and not _has_healthcheck(p, name):
            problems.append(f"long-running service `{name}` has no healthcheck")
    for profile in sorted(WAIT_PROFILES & p.profiles):
        members = {n for n, svc in p.services.items() if profile in (svc.get("profiles") or [])}
        adopted = {dep for n in members - one_shot
                   for dep, spec in (p.services[n].get("depends_on") or {}).items()
                   if spec.get("condition") == "service_completed_successfully"}
        for job in sorted((members & one_shot) - adopted):
            problems.append(f"profile `{profile}`: no long-running service waits for one-shot "
                            f"`{job}` (service_completed_successfully), so `up --wait` fails")
    for m in re.finditer(r"\bsleep\b", p.compose_text):
        line = p.compose_text.count("\n", 0, m.start()) + 1
        problems.append(f"{COMPOSE_FILE}:{line}: uses `sleep`; gate on healthchecks instead")
    for script in sorted((p.root / "dockerfiles").glob("**/*.sh")):
        for no, text in enumerate(script.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\bsleep\b", text) and not text.lstrip().startswith("#"):
                problems.append(f"{p.rel(script)}:{no}: uses `sleep`")
    return problems


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")


def compose_variables(text: str) -> dict[str, int]:
    """Variables a compose file interpolates -> first line (comments and $$ escapes skipped)."""
    found: dict[str, int] = {}
    stack = [yaml.compose(text)]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if isinstance(node, yaml.ScalarNode):
            for m in _VAR.finditer(str(node.value)):
                name = m[1] or m[2]
                if name:
                    line = node.start_mark.line + 1
                    found[name] = min(found.get(name, line), line)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
    return found


def check_env_defined(p: Project) -> Problems:
    """Every ``${VAR}`` of docker-compose.yaml is defined in ``.env``."""
    return [f"{COMPOSE_FILE}:{line}: uses ${{{name}}} but .env does not define {name}"
            for name, line in sorted(compose_variables(p.compose_text).items(),
                                     key=lambda kv: kv[1])
            if name not in p.env]


def _settings_for(service: str, env_names: set[str], fields: dict[str, Any]) -> set[str] | None:
    for pattern, wanted in SERVICE_SETTINGS.items():
        if fnmatch.fnmatchcase(service, pattern):
            if wanted == CONTRACT:
                return ({n.lower() for n in env_names if n.lower() in fields} - HOST_ONLY_SETTINGS
                        - NATIVE_ONLY_SETTINGS - NOT_FOR_AIRFLOW - COMPOSE_PENDING
                        - API_ONLY_SETTINGS)
            return set(wanted)
    return None


def _is_loopback(value: str) -> bool:
    return any(host in value for host in LOOPBACK)


def check_settings_env(p: Project) -> Problems:
    """Each app service gets the Settings names it needs, with in-network values."""
    problems: Problems = []
    fields = settings_fields()
    required = {n for n, f in fields.items() if f.is_required()}
    for pattern, wanted in SERVICE_SETTINGS.items():
        if wanted != CONTRACT:
            problems += [f"check_compose.SERVICE_SETTINGS[{pattern!r}] lists `{n}` but Settings "
                         f"has no such field" for n in sorted(set(wanted) - set(fields))]
        if not any(fnmatch.fnmatchcase(s, pattern) for s in p.services):
            problems.append(f"no service matches `{pattern}` (app services need their settings)")
    for name, svc in sorted(p.services.items()):
        wanted = _settings_for(name, set(p.env), fields)
        if wanted is None:
            continue
        if name != "mlflow":
            wanted |= required
        env = {k: "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()}
        for setting in sorted(wanted):
            var = setting.upper()
            if var not in env:
                problems.append(f"service `{name}`: environment variable {var} "
                                f"(Settings.{setting}) is not set")
            elif setting in IN_NETWORK_SETTINGS:
                if _is_loopback(env[var]):
                    problems.append(f"service `{name}`: {var}={env[var]} points at the "
                                    f"container itself; use the service name (e.g. minio, mlflow)")
            elif (source := SETTING_SOURCES.get(name, {}).get(var, var)) in p.effective_env \
                    and env[var] != p.effective_env[source] \
                    and not env[var].startswith(NO_ACCESS_PREFIX):
                shown, wanted_value = env[var], p.effective_env[source]
                if _SECRET_WORDS.search(var):  # never print a secret
                    shown, wanted_value = _mask(shown), _mask(wanted_value)
                problems.append(f"service `{name}`: {var}={shown!r} differs from .env "
                                f"({wanted_value!r}); use ${{{source}}}")
        for var in sorted(env):
            if var.startswith(PROJECT_PREFIXES) and var.lower() not in fields:
                problems.append(f"service `{name}`: {var} looks like a project setting but "
                                f"Settings has no field {var.lower()} (typo?)")
    return problems


def _url_hosts(value: str) -> Iterator[str]:
    for m in re.finditer(r"[a-z][a-z0-9+.-]*://[^\s\"',]+", value):
        try:
            host = urlsplit(m[0]).hostname
        except ValueError:
            continue
        if host:
            yield host


def check_wiring(p: Project) -> Problems:
    """URLs name existing services; one JWT secret for Airflow; MLflow serves artifacts."""
    problems: Problems = []
    services = set(p.services)
    for name, svc in sorted(p.services.items()):
        for var, value in sorted((svc.get("environment") or {}).items()):
            for host in _url_hosts(str(value or "")):
                if "." in host or host in services or host in LOOPBACK or host == "s3":
                    continue
                problems.append(f"service `{name}`: {var} points at host `{host}`, which is not "
                                f"a service of {COMPOSE_FILE}")
    airflow = {n: s for n, s in p.services.items() if n.startswith("airflow-")}
    secrets = {(s.get("environment") or {}).get("AIRFLOW__API_AUTH__JWT_SECRET") for s in
               airflow.values()}
    if len(secrets) != 1 or not next(iter(secrets), None):
        problems.append("Airflow components must share one non-empty "
                        "AIRFLOW__API_AUTH__JWT_SECRET")
    for n, s in sorted(airflow.items()):
        url = (s.get("environment") or {}).get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "")
        if not url.endswith("/execution/"):
            problems.append(f"service `{n}`: AIRFLOW__CORE__EXECUTION_API_SERVER_URL must end "
                            f"with /execution/ (got {url!r})")
    mlflow = p.services.get("mlflow")
    if mlflow is None:
        problems.append("no `mlflow` service")
    else:
        command = mlflow.get("command") or []
        command = command if isinstance(command, list) else shlex.split(command)
        args = " ".join(command)
        bucket = p.effective_env.get("MLFLOW_BUCKET_NAME", "mlflow")
        if "--serve-artifacts" not in command:
            problems.append("mlflow: --serve-artifacts missing (clients would need S3 keys)")
        if f"--artifacts-destination=s3://{bucket}" not in args and \
                f"--artifacts-destination s3://{bucket}" not in args:
            problems.append(f"mlflow: --artifacts-destination s3://{bucket} missing")
        env = {k: "" if v is None else str(v) for k, v in (mlflow.get("environment") or {}).items()}
        try:
            hosts = mlflow_allowed_hosts(p, command, env)
        except CheckError as exc:
            problems.append(str(exc))
            hosts = []
        for needed in ("mlflow", "mlflow:5000", "127.0.0.1:5001", "localhost:5001"):
            if not host_allowed(hosts, needed):
                problems.append(f"mlflow: Host `{needed}` is not allowed (clients get 403 Invalid "
                                f"Host header); allowed: {','.join(hosts) or 'none'}")
        # Opening the ports to the network must open MLflow to it too (remote browsers send
        # Host: <server's LAN IP>:<MLFLOW_PORT>).
        try:
            remote = mlflow_allowed_hosts(p, command, {**env, "BIND_HOST": "0.0.0.0"})
        except CheckError:
            remote = []
        if not host_allowed(remote, "192.168.1.20:5001"):
            problems.append("mlflow: with BIND_HOST=0.0.0.0 a browser on the LAN "
                            "(Host 192.168.1.20:5001) still gets 403: allowed hosts must follow "
                            "BIND_HOST")
        env = mlflow.get("environment") or {}
        if str(env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "")).lower() != "false":
            problems.append("mlflow: set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "
                            "(job runners cost ~1 GB)")
    return problems


def host_allowed(patterns: list[str], host: str) -> bool:
    """MLflow's rule (mlflow.server.security_utils.is_allowed_host_header)."""
    return "*" in patterns or any(
        fnmatch.fnmatch(host, pat) if "*" in pat else host == pat for pat in patterns)


def mlflow_allowed_hosts(p: Project, command: list[str], env: dict[str, str]) -> list[str]:
    """The Host patterns `mlflow server` will accept: from --allowed-hosts in the command, else
    from what the image's entrypoint (dockerfiles/mlflow/entrypoint.sh) adds for ``env``."""
    args = " ".join(command)
    allowed = re.search(r"--allowed-hosts[= ](\S+)", args)
    if allowed:
        return allowed[1].split(",")
    script = p.root / "dockerfiles" / "mlflow" / "entrypoint.sh"
    if not script.is_file():
        raise CheckError("mlflow: no --allowed-hosts and no dockerfiles/mlflow/entrypoint.sh to "
                         "add them (in-network clients would get 403 Invalid Host header)")
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / "mlflow"
        fake.write_text('#!/bin/sh\nfor a; do echo "$a"; done\n')
        fake.chmod(0o755)
        # the accounts writer needs the database: a no-op python stands in for it here
        (Path(tmp) / "python").write_text("#!/bin/sh\nexit 0\n")
        (Path(tmp) / "python").chmod(0o755)
        run_env = {"PATH": f"{tmp}:/usr/bin:/bin", **env, "HOME": tmp}
        proc = subprocess.run(["bash", str(script), "mlflow", "server", *command[2:]],
                              capture_output=True, text=True, env=run_env, timeout=30,
                              check=False)
    if proc.returncode != 0:
        raise CheckError(f"mlflow: dockerfiles/mlflow/entrypoint.sh failed: {proc.stderr.strip()}")
    for line in proc.stdout.splitlines():
        if line.startswith("--allowed-hosts="):
            return line.split("=", 1)[1].split(",")
    return []


def _python_minor(p: Project) -> str | None:
    spec = p.pyproject.get("project", {}).get("requires-python", "")
    m = re.search(r">=\s*(3\.\d+)", spec)
    return m[1] if m else None


def check_lock_versions(p: Project) -> Problems:
    """Base images and pip pins of every Dockerfile agree with requirements.lock."""
    problems: Problems = []
    lock = p.lock
    py = _python_minor(p)
    for dockerfile in p.dockerfiles():
        rel = p.rel(dockerfile)
        instructions = parse_dockerfile(dockerfile)
        for ins in instructions:
            if ins.keyword != "FROM":
                continue
            image = ins.args.split()[0]
            repo, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
            if repo == "apache/airflow":
                m = re.match(r"^(\d+\.\d+\.\d+)(?:-python(\d+\.\d+))?$", tag)
                if not m:
                    problems.append(f"{rel}:{ins.line}: apache/airflow tag {tag!r} must be "
                                    f"X.Y.Z-pythonA.B")
                    continue
                if m[1] != lock.get("apache-airflow"):
                    problems.append(f"{rel}:{ins.line}: base image apache/airflow:{m[1]} but "
                                    f"requirements.lock pins apache-airflow=="
                                    f"{lock.get('apache-airflow')}")
                if py and m[2] != py:
                    problems.append(f"{rel}:{ins.line}: base image Python {m[2]} but the "
                                    f"project requires Python {py}")
            elif repo in {"python", "docker.io/library/python"} and py and not (
                    tag == py or tag.startswith((py + ".", py + "-"))):
                problems.append(f"{rel}:{ins.line}: base image python:{tag} but the project "
                                f"requires Python {py}")
        for ins, tokens in pip_installs(instructions):
            local = False
            specs: list[str] = []
            skip_next = False
            for i, tok in enumerate(tokens):
                if skip_next:
                    skip_next = False
                    continue
                if tok in {"-c", "--constraint", "-r", "--requirement"}:
                    skip_next = i + 1 < len(tokens)
                    continue
                if tok.startswith("-"):
                    continue
                if tok.startswith((".", "/")):
                    local = True
                    continue
                specs.append(tok)
            if "--require-hashes" not in tokens and not (
                    local and not specs and "--no-deps" in tokens):
                problems.append(f"{rel}:{ins.line}: pip install without --require-hashes (install "
                                "from the image's hashed lock; only the project itself may be "
                                "built with --no-deps)")
            for tok in specs:
                m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?(.*)$", tok)
                if not m:
                    continue
                name, spec = normalise(m[1]), m[3]
                pin = re.fullmatch(r"==([^\s;,]+)", spec)
                if not pin:
                    problems.append(f"{rel}:{ins.line}: `{tok}` must be pinned with ==")
                elif name not in lock:
                    problems.append(f"{rel}:{ins.line}: `{tok}` is not in requirements.lock")
                elif pin[1] != lock[name]:
                    problems.append(f"{rel}:{ins.line}: pins {m[1]}=={pin[1]} but "
                                    f"requirements.lock has {m[1]}=={lock[name]}")
    for path in sorted((p.root / "dockerfiles").glob("*/requirements.lock")):
        rel = p.rel(path)
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;\\]+)",
                         line)
            if m:
                name = normalise(m[1])
                if name not in lock:
                    problems.append(f"{rel}: {m[1]}=={m[2]} is not in requirements.lock")
                elif m[2] != lock[name]:
                    problems.append(f"{rel} pins {m[1]}=={m[2]} but requirements.lock has "
                                    f"{m[1]}=={lock[name]}")
                if not line.rstrip().endswith("\\"):
                    problems.append(f"{rel}: {m[1]}=={m[2]} has no --hash")
    version = p.pyproject.get("project", {}).get("version")
    for name, svc in sorted(p.services.items()):
        if not svc.get("build"):
            continue
        image = svc.get("image", "")
        repo, _, tag = image.rpartition(":")
        base = repo.rsplit("/", 1)[-1]
        carried = base.removeprefix("chicago-crime-")
        expected = lock.get(normalise(carried), version)
        why = f"the lock's {carried} version" if carried in lock else "the project version"
        if tag != expected:
            problems.append(f"service `{name}`: built image {image!r} should be tagged "
                            f"{expected} ({why})")
    return problems


_SECRET_WORDS = re.compile(r"SECRET|PASSWORD|TOKEN|FERNET|API_KEY|ACCESS_KEY", re.IGNORECASE)


def check_hardening(p: Project) -> Problems:
    """Pinned images, non-root, scale-friendly names, ports on BIND_HOST, no baked secrets."""
    problems: Problems = []
    bind_host = p.effective_env.get("BIND_HOST", "127.0.0.1")
    for name, svc in sorted(p.services.items()):
        image = svc.get("image")
        if not image:
            problems.append(f"service `{name}`: no image name (pin one, with a tag)")
        else:
            last = image.rsplit("/", 1)[-1]
            if "@" not in last and (":" not in last or last.endswith(":latest")):
                problems.append(f"service `{name}`: image {image!r} is not pinned by a tag "
                                f"(no :latest)")
        if "container_name" in svc:
            problems.append(f"service `{name}`: container_name prevents scaling and clashes "
                            f"with other projects; remove it")
        user = str(svc.get("user", ""))
        if user.split(":")[0] in {"0", "root"}:
            if name not in ROOT_JOBS:
                problems.append(f"service `{name}`: runs as root (user: {user})")
            else:
                caps = {c.upper().removeprefix("CAP_") for c in svc.get("cap_add") or []}
                if "ALL" not in {c.upper() for c in svc.get("cap_drop") or []}:
                    problems.append(f"service `{name}`: runs as root without cap_drop: [ALL]")
                if caps - ROOT_JOB_CAPS:
                    problems.append(f"service `{name}`: runs as root with extra capabilities "
                                    f"{', '.join(sorted(caps - ROOT_JOB_CAPS))} (allowed: "
                                    f"{', '.join(sorted(ROOT_JOB_CAPS))})")
                if svc.get("restart", "no") not in {"no", "on-failure"}:
                    problems.append(f"service `{name}`: runs as root and restarts; only one-shot "
                                    f"jobs may start as root")
        for port in svc.get("ports") or []:
            if name not in PUBLISHED_SERVICES:
                allowed = ", ".join(sorted(PUBLISHED_SERVICES))
                problems.append(f"service `{name}`: publishes port {port.get('target')}; only "
                                f"UIs and the API are published ({allowed})")
            elif port.get("host_ip") != bind_host:
                problems.append(f"service `{name}`: port {port.get('target')} is bound to "
                                f"{port.get('host_ip') or 'all interfaces'}, not "
                                f"${{BIND_HOST}} ({bind_host})")
    for name, context, dockerfile in p.builds():
        if not dockerfile.is_file():
            continue
        rel = p.rel(dockerfile)
        instructions = parse_dockerfile(dockerfile)
        users = [i for i in stages(instructions)[-1] if i.keyword == "USER"]
        if not users or users[-1].args.split(":")[0] in {"0", "root"}:
            problems.append(f"{rel}: the final stage must switch to a non-root USER")
        for ins in instructions:
            if ins.keyword in {"ENV", "ARG"} and _SECRET_WORDS.search(ins.args):
                problems.append(f"{rel}:{ins.line}: {ins.keyword} names a secret; pass secrets "
                                f"at run time (environment), never bake them into an image")
        rules = dockerignore_rules(context, dockerfile)
        for secret in (".env", "secrets"):
            if (context / secret).exists() and not is_ignored(secret, rules):
                problems.append(f"service `{name}`: {secret} is inside the build context "
                                f"{p.rel(context)} and not excluded by .dockerignore")
        if name == "fastapi":
            for ins, tokens in pip_installs(instructions):
                if any("airflow" in t.lower() for t in tokens):
                    problems.append(f"{rel}:{ins.line}: the API image must not install Airflow")
            # What it installs comes from the locks it copies in: none may carry Airflow.
            for ins in instructions:
                if ins.keyword != "COPY":
                    continue
                for src in [a for a in ins.args.split() if not a.startswith("--")][:-1]:
                    lock = context / src
                    if src.endswith(".lock") and lock.is_file() and re.search(
                            r"^apache-airflow\b", lock.read_text(encoding="utf-8"), re.M):
                        problems.append(f"{rel}:{ins.line}: the API image must not install "
                                        f"Airflow ({src} pins apache-airflow)")
    return problems


def airflow_options() -> dict[str, set[str]]:
    """{section: options} of the installed Airflow core and providers, read without importing
    Airflow (its config.yml and each provider's ``get_provider_info()`` literal)."""
    import ast

    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        raise CheckError("apache-airflow is not installed: cannot check AIRFLOW__ options")
    options: dict[str, set[str]] = {}

    def add(config: dict[str, Any]) -> None:
        for section, body in (config or {}).items():
            options.setdefault(section, set()).update((body or {}).get("options") or {})

    for location in spec.submodule_search_locations:
        base = Path(location)
        core = base / "config_templates" / "config.yml"
        if core.is_file():
            add(yaml.safe_load(core.read_text(encoding="utf-8")))
        for info in base.glob("providers/**/get_provider_info.py"):
            tree = ast.parse(info.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
                    add(ast.literal_eval(node.value).get("config", {}))
    if "core" not in options:
        raise CheckError("Airflow's config.yml not found: cannot check AIRFLOW__ options")
    return options


def check_airflow_config(p: Project) -> Problems:
    """Every ``AIRFLOW__SECTION__KEY`` a service sets is an option of the locked Airflow."""
    problems: Problems = []
    known: dict[str, set[str]] | None = None
    reported: set[str] = set()
    for name, svc in sorted(p.services.items()):
        for var in sorted(svc.get("environment") or {}):
            if not var.startswith("AIRFLOW__") or var in reported:
                continue
            known = known if known is not None else airflow_options()
            parts = var.split("__")
            if len(parts) != 3:
                problems.append(f"service `{name}`: {var} is not AIRFLOW__SECTION__KEY")
                reported.add(var)
                continue
            section, key = parts[1].lower(), re.sub(r"_(cmd|secret)$", "", parts[2].lower())
            if section not in known:
                problems.append(f"service `{name}`: {var}: Airflow has no section [{section}]")
                reported.add(var)
            elif key not in known[section] and parts[2].lower() not in known[section]:
                problems.append(f"service `{name}`: {var}: Airflow has no option "
                                f"[{section}] {parts[2].lower()} (typo?)")
                reported.add(var)
    return problems


CONNECTION_KEYS = {"conn_id", "conn_type", "description", "extra", "extra_dejson", "host",
                   "login", "password", "port", "schema", "team_name", "uri"}


def check_secrets_files(p: Project) -> Problems:
    """secrets/variables.yaml and secrets/connections.yaml load in LocalFilesystemBackend."""
    problems: Problems = []
    for fname in ("variables.yaml", "connections.yaml"):
        path = p.root / "secrets" / fname
        if not path.is_file():
            problems.append(f"secrets/{fname} does not exist")
            continue
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problems.append(f"secrets/{fname}: invalid YAML: {exc}")
            continue
        if not text.strip() or not isinstance(data, dict):
            problems.append(f"secrets/{fname}: must be a non-empty mapping (Airflow rejects "
                            f"an empty file)")
            continue
        if fname == "connections.yaml":
            for conn_id, value in data.items():
                if isinstance(value, str):
                    continue
                if not isinstance(value, dict):
                    problems.append(f"secrets/{fname}: `{conn_id}` must be a URI or a mapping")
                    continue
                bad = set(value) - CONNECTION_KEYS
                if bad:
                    problems.append(f"secrets/{fname}: `{conn_id}` has unknown keys "
                                    f"{', '.join(sorted(bad))}")
                if "conn_type" not in value and "uri" not in value:
                    problems.append(f"secrets/{fname}: `{conn_id}` has no conn_type")
    return problems


def check_s3_identities(p: Project) -> Problems:
    """MinIO's root login is the set-up identity and stays with MinIO and its init job.

    The platform's services use least-privilege users (``AWS_*``: the data bucket; MLflow's
    ``MLFLOW_S3_*``: the artifact bucket) that ``minio-init`` creates; a service given the root
    login could create buckets, users and policies, and read every bucket.
    """
    problems: Problems = []
    env = p.effective_env
    minio = p.services.get("minio")
    if minio is None:
        return ["no `minio` service"]
    menv = {k: "" if v is None else str(v) for k, v in (minio.get("environment") or {}).items()}
    if menv.get("MINIO_ROOT_USER") != env.get("S3_ADMIN_ACCESS_KEY_ID") or \
            menv.get("MINIO_ROOT_PASSWORD") != env.get("S3_ADMIN_SECRET_ACCESS_KEY"):
        problems.append("minio: MINIO_ROOT_USER / MINIO_ROOT_PASSWORD must be "
                        "${S3_ADMIN_ACCESS_KEY_ID} / ${S3_ADMIN_SECRET_ACCESS_KEY} (the set-up "
                        "identity), not a key pair a service uses")
    for var, holders in sorted(SECRET_HOLDERS.items()):
        value = env.get(var, "")
        if not value:
            problems.append(f".env: {var} is empty after make install")
            continue
        for name, svc in sorted(p.services.items()):
            if name in holders:
                continue
            if var in (svc.get("environment") or {}) or value in json.dumps(svc):
                problems.append(f"service `{name}`: holds {var} (only "
                                f"{', '.join(sorted(holders))} may)")
    return problems


CHECKS: dict[str, Callable[[Project], Problems]] = {
    "compose-config": check_compose_config,
    "profiles": check_profiles,
    "hadolint": check_hadolint,
    "build-sources": check_build_sources,
    "healthchecks": check_healthchecks,
    "env-defined": check_env_defined,
    "settings-env": check_settings_env,
    "wiring": check_wiring,
    "airflow-config": check_airflow_config,
    "lock-versions": check_lock_versions,
    "hardening": check_hardening,
    "secrets-files": check_secrets_files,
    "s3-identities": check_s3_identities,
}


def run_check(name: str, project: Project) -> Problems:
    """Run one check; a missing prerequisite is reported as a problem, not a crash."""
    try:
        return CHECKS[name](project)
    except CheckError as exc:
        return [str(exc)]


def run_checks(root: Path = REPO, only: list[str] | None = None) -> dict[str, Problems]:
    """Run the checks (all by default) on the checkout at ``root``."""
    project = Project(root.resolve())
    return {name: run_check(name, project) for name in (only or CHECKS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Static checks of the Docker Compose stack")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in CHECKS.items():
            print(f"{name:15} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    results = run_checks(args.root, args.only)
    failed = 0
    for name, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"     - {problem}")
        failed += bool(problems)
    if failed:
        print(f"\n{failed} of {len(results)} compose checks failed", file=sys.stderr)
        return 1
    print(f"\nall {len(results)} compose checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
