"""The READMEs and docs/ name only things that exist, and the code's user-facing names are
documented: make targets (Makefile), environment names (.env, Settings, the code), ports, DAG and
task ids (airflow/dags), repository paths and links.

Names are taken from code spans and code blocks (``make up``, ``AWS_ACCESS_KEY_ID``,
``scripts/gen_secrets.py``), where a reader would copy them from; prose is not parsed.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "README.es.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_GLOBS = ["Makefile", ".env.example", "docker-compose.yaml", "pyproject.toml", ".ci/run",
              "src/**/*.py", "scripts/**/*.py", "scripts/**/*.sh", "scripts/**/Dockerfile",
              "dockerfiles/**/*", "airflow/dags/*.py", "tests/**/*.py", "bench/*.py"]
# Environment names the docs may mention that belong to other tools (not read by this code).
EXTERNAL_ENV = {
    "AIRFLOW__LOGGING__REMOTE_LOGGING": "Airflow option suggested for Kubernetes (docs/docker.md)",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "what `mlflow server` reads (set by the MLflow entrypoint)",
}
# Repository paths the docs may name that are created at run time, not committed.
GENERATED = ("artifacts/", ".local/", "airflow/logs", ".venv/", "mlruns")
TOP_LEVEL = ("src/", "scripts/", "docs/", "dockerfiles/", "airflow/", "tests/", "bench/",
             "notebooks/", "secrets/", ".ci/")


def code_text(path: Path) -> list[str]:
    """Code spans and fenced blocks of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return blocks + spans


@cache
def docs_code() -> dict[Path, list[str]]:
    return {p: code_text(p) for p in DOCS}


@cache
def code_corpus() -> str:
    files: set[Path] = set()
    for pattern in CODE_GLOBS:
        files.update(p for p in REPO.glob(pattern) if p.is_file())
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(files)
                     if "__pycache__" not in p.parts)


@cache
def make_targets() -> dict[str, bool]:
    """Makefile target -> whether it is public (has a ``## help`` text)."""
    out: dict[str, bool] = {}
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([a-zA-Z0-9_-]+):(?!=)(.*)$", line)
        if m and not line.startswith(("\t", ".")):
            out[m[1]] = "##" in m[2] or out.get(m[1], False)
    return out


@cache
def env_names() -> set[str]:
    from dotenv import dotenv_values

    from chicago_crime.config import Settings

    return set(dotenv_values(REPO / ".env.example")) | {f.upper() for f in Settings.model_fields}


@cache
def dags() -> dict[str, set[str]]:
    """dag_id -> task ids, from the DAG files (no Airflow import)."""
    out: dict[str, set[str]] = {}
    for path in (REPO / "airflow" / "dags").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        dag_id, tasks = None, set()
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "dag_id" and \
                    isinstance(node.value, ast.Constant):
                dag_id = node.value.value
            if isinstance(node, ast.FunctionDef) and any(
                    "task" in ast.unparse(d) for d in node.decorator_list):
                tasks.add(node.name)
        if "run_stage" in tasks:  # one task per row of the stage table, task_id = its name
            from chicago_crime.stages import STAGES

            tasks = (tasks - {"run_stage"}) | {s.task_id for s in STAGES}
        if dag_id:
            out[dag_id] = tasks
    return out


def mentioned(pattern: str, flags: int = 0) -> dict[str, set[str]]:
    """Matches of ``pattern`` (group 1) in the docs' code -> the docs that mention them."""
    out: dict[str, set[str]] = {}
    for path, chunks in docs_code().items():
        for chunk in chunks:
            for m in re.finditer(pattern, chunk, flags):
                out.setdefault(m[1], set()).add(path.relative_to(REPO).as_posix())
    return out


def report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(sorted(problems))


# --- make targets ------------------------------------------------------------------------------
MAKE_TOKEN = r"(?<![\w-])make\s+([a-z][a-z0-9-]*[a-z0-9])(?![\w*-])"  # not `make local-*`


def test_every_documented_make_target_exists():
    targets = make_targets()
    problems = [f"`make {t}` ({', '.join(sorted(where))}) is not a Makefile target"
                for t, where in mentioned(MAKE_TOKEN).items() if t not in targets]
    assert not problems, report(problems, "documented make targets do not exist")


def test_every_public_make_target_is_documented():
    documented = set(mentioned(MAKE_TOKEN))
    problems = [f"`make {t}` has a ## help text but README.md/docs never mention it"
                for t, public in make_targets().items() if public and t not in documented]
    assert not problems, report(problems, "public make targets are undocumented")


# --- environment names ---------------------------------------------------------------------------
ENV_TOKEN = r"(?<![\w$])\$?\{?([A-Z][A-Z0-9]*(?:__?[A-Z0-9]+)+)\b"


def test_every_documented_environment_name_exists_in_the_code():
    corpus = code_corpus()
    known = env_names()
    problems = []
    for name, where in mentioned(ENV_TOKEN).items():
        if name in known or name in EXTERNAL_ENV:
            continue
        if not re.search(rf"(?<![A-Z0-9_]){re.escape(name)}(?![A-Z0-9_])", corpus):
            problems.append(f"{name} ({', '.join(sorted(where))}) is not read or set anywhere "
                            f"in the code, .env or Settings")
    assert not problems, report(problems, "documented environment names do not exist")


def test_every_env_setting_is_documented():
    documented = set(mentioned(ENV_TOKEN))
    from dotenv import dotenv_values

    problems = [f"{name} is in .env but no README/doc names it"
                for name in dotenv_values(REPO / ".env.example") if name not in documented]
    assert not problems, report(problems, ".env settings are undocumented")


# --- ports ---------------------------------------------------------------------------------------
def test_every_documented_port_is_configured():
    corpus = code_corpus()
    problems = [f"port {port} ({', '.join(sorted(where))}) appears in no .env value, compose "
                f"file, Makefile or code"
                for port, where in mentioned(r"(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(\d{2,5})\b")
                .items() if not re.search(rf"(?<!\d){port}(?!\d)", corpus)]
    assert not problems, report(problems, "documented ports are not configured")


def test_the_documented_ports_are_the_env_defaults():
    from dotenv import dotenv_values

    env = dotenv_values(REPO / ".env.example")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("AIRFLOW_PORT", "MLFLOW_PORT", "MINIO_PORT", "MINIO_PORT_UI", "FASTAPI_PORT"):
        assert f"http://127.0.0.1:{env[name]}" in readme, f"README.md never shows {name}"


# --- DAG and task ids ----------------------------------------------------------------------------
def test_documented_task_chains_are_the_dags_tasks():
    all_tasks = set().union(*dags().values())
    problems = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for chain in re.findall(r"\b[a-z][a-z0-9_]*(?:\s*→\s*[a-z][a-z0-9_]*){2,}", text):
            for task in re.split(r"\s*→\s*", chain):
                if task not in all_tasks:
                    problems.append(f"{path.relative_to(REPO)}: `{task}` in "
                                    f"'{chain[:60]}...' is no task of {sorted(dags())}")
    assert not problems, report(problems, "documented task ids do not exist")


def test_every_pipeline_dag_and_etl_task_is_in_the_readmes():
    for readme in (REPO / "README.md", REPO / "README.es.md"):
        text = readme.read_text(encoding="utf-8")
        for dag_id in ("etl_with_taskflow", "train_model"):
            assert dag_id in dags(), f"DAG {dag_id} not found in airflow/dags"
            assert dag_id in text, f"{readme.name} never names DAG {dag_id}"
        missing = [t for t in dags()["etl_with_taskflow"] if t not in text]
        assert not missing, f"{readme.name} never names ETL tasks {missing}"


def test_documented_dag_ids_exist():
    ids = set(dags())
    problems = [f"DAG `{d}` ({', '.join(sorted(w))})"
                for d, w in mentioned(r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)+)$").items()
                if d.endswith(("_taskflow", "_model", "_smoke")) and d not in ids]
    assert not problems, report(problems, "documented DAG ids do not exist")


# --- paths and links -----------------------------------------------------------------------------
def test_documented_repository_paths_exist():
    problems = []
    for path, chunks in docs_code().items():
        for chunk in chunks:
            for token in re.findall(r"(?<![\w./-])((?:\.ci|[a-z]+)/[\w./*-]*)", chunk):
                token = token.rstrip(".,:;)")
                if not token.startswith(TOP_LEVEL) or token.startswith(GENERATED):
                    continue
                if any(c in token for c in "<>{}") or "YYYY" in token or "..." in token:
                    continue
                matches = list(REPO.glob(token)) if "*" in token else (
                    [REPO / token] if (REPO / token).exists() else [])
                if not matches:
                    problems.append(f"{path.relative_to(REPO)}: `{token}` does not exist")
    assert not problems, report(problems, "documented paths do not exist")


def test_relative_links_resolve():
    problems = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^#|^mailto:", target):
                continue
            file = target.split("#", 1)[0]
            if not (path.parent / file).exists():
                problems.append(f"{path.relative_to(REPO)}: link {target} does not resolve")
    assert not problems, report(problems, "links are broken")
