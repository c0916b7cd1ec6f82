"""Images for the Compose test: stand-in base images under the official names, then the project's
own images built from its Dockerfiles, each cached between runs.

No registry is reachable here, so every image the project pulls (``python:``, ``apache/airflow:``,
``postgres:``, ``valkey/valkey:``, the MinIO image and its ``mc``) is replaced by a local stand-in
built from the Debian mirror (``standins/``), tagged with the exact name the Dockerfiles and
``docker-compose.yaml`` use. The project's images are then built from ``dockerfiles/*/Dockerfile``
as they are; the only change is that a CI-only copy drops a ``# syntax=`` line (BuildKit would
fetch that frontend from Docker Hub).

Cache: every image carries the label ``org.chicago-crime.inputs`` = sha256 of what it is built
from (its Dockerfile, every file of its build context that ``.dockerignore`` lets through, the IDs
of its base images, build arguments). An image whose label matches is reused; anything else is
rebuilt (Docker's layer cache still applies).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STANDINS = HERE / "standins"
HOME = Path(os.environ.get("COMPOSE_TEST_HOME", "/var/lib/chicago-crime-compose"))
LABEL = "org.chicago-crime.inputs"
DEBIAN_IMAGE = "localhost/debian:bookworm"
DEBIAN_SUITE = "bookworm"
# Builds run side by side (pip spends much of its time waiting on downloads and disk).
JOBS = max(1, int(os.environ.get("COMPOSE_TEST_JOBS", "2")))
# Debian's 20.10 CLI talks BuildKit to its daemon without the buildx plugin.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


class BuildError(RuntimeError):
    """An image could not be built; the message names the image, its Dockerfile and the error."""


def _load_check_compose() -> Any:
    spec = importlib.util.spec_from_file_location("_check_compose", REPO / "scripts" /
                                                  "check_compose.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_check_compose", module)
    spec.loader.exec_module(module)
    return module


cc = _load_check_compose()


def say(message: str) -> None:
    print(f"[images] {message}", flush=True)


def docker(*args: str, check: bool = True, capture: bool = True,
           **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=capture, text=True, check=False,
                          **kwargs)
    if check and proc.returncode != 0:
        raise BuildError(f"docker {' '.join(args[:3])} failed: {(proc.stderr or '').strip()}")
    return proc


def image_inputs(name: str) -> str | None:
    """The inputs label of a local image, or None when the image does not exist."""
    proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", name, check=False)
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout.strip() or "null") or {}
    return labels.get(LABEL, "")


def image_id(name: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


# --- hashing -----------------------------------------------------------------------------------
def hash_files(root: Path, files: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """sha256 over (relative path, executable bit, content) of ``files`` and ``extra`` strings."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for path in sorted(files):
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def context_files(context: Path) -> list[Path]:
    """Files of a build context that its ``.dockerignore`` lets through (what BuildKit sends)."""
    rules = cc.dockerignore_rules(context, context / "Dockerfile")
    negated = [p for negate, p in cc.dockerignore_patterns(context, context / "Dockerfile")
               if negate]
    out: list[Path] = []
    for folder, dirs, files in os.walk(context):
        rel_dir = Path(folder).relative_to(context).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirs:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if cc.is_ignored(rel, rules) and not any(
                    n.startswith(rel + "/") or n.startswith(("*", "?")) for n in negated):
                continue
            keep.append(d)
        dirs[:] = keep
        for f in files:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            path = Path(folder) / f
            if path.is_file() and not cc.is_ignored(rel, rules):
                out.append(path)
    return out


# --- building ----------------------------------------------------------------------------------
@dataclass
class Build:
    """One image to build: tags, Dockerfile, context, build args, and what it is built from."""

    what: str  # human name in messages, e.g. "stand-in postgres:17.6-bookworm"
    tags: list[str]
    dockerfile: Path
    context: Path
    args: dict[str, str] = field(default_factory=dict)
    bases: list[str] = field(default_factory=list)
    source: str = ""  # the Dockerfile users know (for messages), e.g. dockerfiles/api/Dockerfile

    def key(self, files: list[Path]) -> str:
        extra = [self.dockerfile.read_text(encoding="utf-8"),
                 *(f"{k}={v}" for k, v in sorted(self.args.items())),
                 *(image_id(b) for b in self.bases)]
        return hash_files(self.context, files, extra)


def run_build(build: Build, files: list[Path] | None = None) -> bool:
    """Build unless every tag already carries the same inputs label. Returns True if built."""
    files = context_files(build.context) if files is None else files
    key = build.key(files)
    if all(image_inputs(tag) == key for tag in build.tags):
        say(f"{build.what}: cached ({key[:12]})")
        return False
    logs = HOME / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"build-{re.sub(r'[^A-Za-z0-9_.-]+', '_', build.tags[0])}.log"
    cmd = [DOCKER, "build", "--network=host", "--progress=plain", "--label", f"{LABEL}={key}",
           "-f", str(build.dockerfile)]
    for tag in build.tags:
        cmd += ["-t", tag]
    for k, v in build.args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(build.context))
    started = time.monotonic()
    say(f"{build.what}: building (log {log})")
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, check=False,
                              env={**os.environ, "DOCKER_BUILDKIT": "1"})
    if proc.returncode != 0:
        raise BuildError(build_failure(build, log.read_text(errors="replace")))
    say(f"{build.what}: built in {time.monotonic() - started:.0f} s")
    return True


def run_builds(builds: list[Build]) -> list[bool]:
    """``run_build`` for independent images, JOBS at a time; every failure is reported."""
    if JOBS == 1 or len(builds) < 2:
        return [run_build(b) for b in builds]
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        futures = [pool.submit(run_build, b) for b in builds]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise BuildError("\n".join(str(e) for e in errors))
    return [f.result() for f in futures]


def build_failure(build: Build, output: str) -> str:
    """What broke, from BuildKit's output: the failing step and its error lines."""
    lines = output.splitlines()
    errors = [ln for ln in lines if re.search(r"\bERROR\b|error:|failed to|not found", ln)]
    step = next((ln.strip().lstrip("> ").rstrip(":") for ln in reversed(lines)
                 if re.match(r"^\s*>+\s*\[", ln)), "")
    dockerfile = build.source or str(build.dockerfile)
    head = f"{build.what} ({dockerfile}) failed to build"
    detail = "\n    ".join(errors[-8:] or lines[-15:])
    return f"{head}{': at ' + step if step else ''}\n    {detail}"


# --- stand-in bases ----------------------------------------------------------------------------
def apt_mirror() -> str:
    """The Debian mirror apt already uses on this machine."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        m = re.search(r"(?:URIs:|deb)\s+(\S+/debian)/?\s", text)
        if m and "security" not in m[1]:
            return m[1]
    return "http://deb.debian.org/debian"


def local_cas() -> list[Path]:
    return sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))


def debian_base() -> None:
    """``localhost/debian:bookworm``: debootstrap minbase from the mirror + this machine's CAs."""
    mirror = apt_mirror()
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    key = hashlib.sha256("\0".join([DEBIAN_SUITE, mirror, *(p.read_text() for p in local_cas()),
                                    bundle.read_text() if bundle.exists() else ""]).encode()
                         ).hexdigest()
    if image_inputs(DEBIAN_IMAGE) == key:
        say(f"{DEBIAN_IMAGE}: cached ({key[:12]})")
        return
    rootfs = HOME / "rootfs" / DEBIAN_SUITE
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"{DEBIAN_IMAGE}: debootstrap --variant=minbase {DEBIAN_SUITE} {mirror}")
    log = HOME / "logs" / "debootstrap.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs),
                               mirror], stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise BuildError(f"debootstrap failed (see {log}):\n" + log.read_text()[-2000:])
    security = mirror.rsplit("/", 1)[0] + "/debian-security"
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror} {DEBIAN_SUITE} main\ndeb {mirror} {DEBIAN_SUITE}-updates main\n"
        f"deb {security} {DEBIAN_SUITE}-security main\n")
    (rootfs / "etc/apt/apt.conf.d/90slim").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n')
    # Outbound TLS is re-signed by a local CA: the images must trust it (apt's ca-certificates
    # rebuilds the bundle from /usr/local/share/ca-certificates).
    target = rootfs / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for ca in local_cas():
        shutil.copy2(ca, target / ca.name)
    if bundle.exists():
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    proc = subprocess.run([DOCKER, "import", "--change", 'CMD ["/bin/bash"]', "--change",
                           f"LABEL {LABEL}={key}", "-", DEBIAN_IMAGE], stdin=tar.stdout,
                          capture_output=True, text=True, check=False)
    tar.wait()
    if proc.returncode != 0:
        raise BuildError(f"docker import of the Debian rootfs failed: {proc.stderr.strip()}")
    shutil.rmtree(rootfs)
    say(f"{DEBIAN_IMAGE}: imported in {time.monotonic() - started:.0f} s")


def cpython_tar(dest: Path) -> str:
    """This machine's CPython 3.11 (the venv's base) as a tar for /usr/local, no site-packages.

    Debian's python3 is 3.11.2 and some locked wheels need >= 3.11.5, so the stand-in carries the
    interpreter CI itself runs on. Returns its version."""
    prefix = Path(sys.base_prefix)
    version = sysconfig.get_python_version()
    skip = {f"lib/python{version}/{d}" for d in ("site-packages", "test", "idlelib", "tkinter",
                                                  "turtledemo", "lib2to3/tests")}
    stamp = dest.with_suffix(".stamp")
    marker = f"{prefix}:{sys.version}"
    if dest.exists() and stamp.exists() and stamp.read_text() == marker:
        return sys.version.split()[0]

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name.removeprefix("./")
        if any(name == s or name.startswith(s + "/") for s in skip) or "__pycache__" in name:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w") as tar:
        for part in ("bin", "include", "lib", "share"):
            if (prefix / part).exists():
                tar.add(prefix / part, arcname=part, filter=keep)
    stamp.write_text(marker)
    return sys.version.split()[0]


def constraints_from_lock(lock: Path, out: Path) -> Path:
    """``name==version`` lines of a hashed lock: pip refuses extras and hashes in a constraints
    file, and the stand-ins install the official images' packages at the lock's versions."""
    pins = [re.sub(r"\[[^]]*\]", "", line.split()[0]) for line in lock.read_text().splitlines()
            if re.match(r"^[A-Za-z0-9][^ ]*==", line)]
    text = "\n".join(pins) + "\n"
    if not out.exists() or out.read_text() != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return out


def _standin_context(kind: str, extra: dict[str, Path] | None = None) -> Path:
    ctx = HOME / "contexts" / kind
    ctx.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in (STANDINS / kind).iterdir()} | set(extra or {})
    for stale in ctx.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for src in (STANDINS / kind).iterdir():
        shutil.copy2(src, ctx / src.name)
    for name, src in (extra or {}).items():
        if src.resolve() != (ctx / name).resolve():
            shutil.copy2(src, ctx / name)
    return ctx


# Repository of an image the project pulls -> the stand-in that replaces it.
STANDIN_FOR = {
    "python": "python", "docker.io/library/python": "python", "library/python": "python",
    "apache/airflow": "airflow",
    "postgres": "postgres", "library/postgres": "postgres",
    "valkey/valkey": "valkey",
    "quay.io/minio/minio": "minio", "minio/minio": "minio",
    "quay.io/minio/mc": "minio", "minio/mc": "minio",
}


def split_image(image: str) -> tuple[str, str]:
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = image.rpartition(":")
        return repo, tag
    return image, "latest"


#: Profiles the Compose test never starts: monitoring needs Grafana, of which no image can be
#: built offline (its files are checked statically: tests/unit/test_monitoring_config.py).
UNTESTED_PROFILES = {"monitoring"}


def pulled_images(project: Any) -> list[str]:
    """Every image the stack pulls: FROM lines of the built Dockerfiles and non-built services
    (except those only in ``UNTESTED_PROFILES``)."""
    built = {svc.get("image") for svc in project.services.values() if svc.get("build")}
    images: set[str] = set()
    for _, _, dockerfile in project.builds():
        stage_names = set()
        for ins in cc.parse_dockerfile(dockerfile):
            if ins.keyword != "FROM":
                continue
            parts = ins.args.split()
            if len(parts) >= 3 and parts[-2].upper() == "AS":
                stage_names.add(parts[-1].lower())
            if parts[0].lower() not in stage_names and parts[0] not in built:
                images.add(parts[0])
    for svc in project.services.values():
        if set(svc.get("profiles") or ["all"]) <= UNTESTED_PROFILES:
            continue
        if not svc.get("build") and svc.get("image") and svc["image"] not in built:
            images.add(svc["image"])
    return sorted(images)


def standins(project: Any) -> None:
    """Build a stand-in for every image the stack would pull, tagged with that image's name."""
    images = pulled_images(project)
    by_kind: dict[str, list[str]] = {}
    for image in images:
        repo, _ = split_image(image)
        kind = STANDIN_FOR.get(repo)
        if kind is None:
            raise BuildError(f"no stand-in for image {image} (registries are unreachable here): "
                             f"add one under scripts/compose_test/standins/ and to STANDIN_FOR")
        by_kind.setdefault(kind, []).append(image)
    lock = constraints_from_lock(REPO / "requirements.lock", HOME / "constraints.txt")
    debian_base()
    # python (with postgres and valkey beside it) first: airflow and minio are built on it.
    python_tags = by_kind.get("python") or ["localhost/python:3.11-standin"]
    python_image = python_tags[0]
    ctx = _standin_context("python")
    version = cpython_tar(ctx / "cpython.tar")
    first = [Build(f"stand-in {', '.join(python_tags)} (CPython {version})", python_tags,
                   ctx / "Dockerfile", ctx, {"PYTHON_VERSION": version}, [DEBIAN_IMAGE])]
    second: list[Build] = []
    for kind in ("postgres", "valkey", "airflow", "minio"):
        tags = by_kind.get(kind)
        if not tags:
            continue
        args: dict[str, str] = {}
        bases = [DEBIAN_IMAGE]
        extra: dict[str, Path] = {}
        if kind in {"airflow", "minio"}:
            args["PYTHON_IMAGE"] = python_image
            bases = [python_image]
            extra["constraints.txt"] = lock
        if kind == "airflow":
            versions = {split_image(t)[1].split("-")[0] for t in tags}
            if len(versions) != 1:
                raise BuildError(f"several Airflow versions requested: {sorted(versions)}")
            args["AIRFLOW_VERSION"] = versions.pop()
        ctx = _standin_context(kind, extra)
        build = Build(f"stand-in {', '.join(tags)}", tags, ctx / "Dockerfile", ctx, args, bases)
        (second if python_image in bases else first).append(build)
    run_builds(first)
    run_builds(second)


# --- the project's images ------------------------------------------------------------------------
def project_builds(project: Any) -> list[Build]:
    """One build per image the compose file builds (services sharing an image build it once)."""
    out: dict[str, Build] = {}
    ci_dir = HOME / "contexts" / "dockerfiles"
    ci_dir.mkdir(parents=True, exist_ok=True)
    for name, context, dockerfile in project.builds():
        image = project.services[name]["image"]
        if image in out:
            continue
        if not dockerfile.is_file():
            raise BuildError(f"service {name}: Dockerfile {project.rel(dockerfile)} does not exist")
        text = dockerfile.read_text(encoding="utf-8")
        # The only change: no `# syntax=` line (BuildKit would fetch that frontend image).
        ci_text = re.sub(r"\A#\s*syntax\s*=.*\n", "", text)
        copy = ci_dir / f"{name}.Dockerfile"
        copy.write_text(ci_text, encoding="utf-8")
        bases = []
        stage_names: set[str] = set()
        for ins in cc.parse_dockerfile(dockerfile):
            if ins.keyword == "FROM":
                parts = ins.args.split()
                if parts[0].lower() not in stage_names:
                    bases.append(parts[0])
                if len(parts) >= 3 and parts[-2].upper() == "AS":
                    stage_names.add(parts[-1].lower())
        out[image] = Build(f"image {image} (service {name})", [image], copy, context,
                           bases=sorted(set(bases)), source=project.rel(dockerfile))
    return list(out.values())


def project_images(project: Any) -> list[str]:
    """Build (or reuse) every image the compose file builds; returns the image names."""
    builds = project_builds(project)
    run_builds(builds)
    return [b.tags[0] for b in builds]


def load_project(env_file: Path | None = None) -> Any:
    project = cc.Project(REPO)
    if env_file is not None:
        project.__dict__["env_for_compose"] = env_file
    return project
