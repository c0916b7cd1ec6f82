"""Nothing leaks and nothing listens where it should not: listeners, process users, command
lines, file modes, git, and everything the stack and the demo print."""

from __future__ import annotations

import ipaddress
import os
import pwd
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from chicago_crime.devtools import demo, stack

pytestmark = pytest.mark.security
REPO = Path(__file__).resolve().parents[2]


def supervisord_pid() -> int:
    out = stack._ctl("pid").stdout.strip()
    assert out.isdigit(), "the native stack is not running (make local-up)"
    return int(out)


def stack_processes() -> list[psutil.Process]:
    root = psutil.Process(supervisord_pid())
    return [root, *root.children(recursive=True)]


def service_owners() -> list[tuple[int, str]]:
    """(real uid, command line) of every process under supervisord, skipping those that end
    while being read (task subprocesses, health probes come and go)."""
    owners = []
    for proc in stack_processes()[1:]:
        try:
            with proc.oneshot():
                owners.append((proc.uids().real, " ".join(proc.cmdline())))
        except psutil.NoSuchProcess:
            continue
    return owners


def test_no_listener_beyond_the_bind_address(stack_settings):
    allowed = {"127.0.0.1", "::1", stack_settings.bind_host}
    pids = {p.pid for p in stack_processes()}
    listeners = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listeners) >= 15  # postgres, redis, SeaweedFS (10), MLflow, Airflow, API, ...
    wide = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in listeners
            if c.laddr.ip not in allowed]
    assert not wide, f"listening beyond {stack_settings.bind_host}: {wide}"
    assert all(ipaddress.ip_address(c.laddr.ip).is_loopback for c in listeners
               if c.laddr.port not in {stack_settings.airflow_port, stack_settings.mlflow_port,
                                       stack_settings.fastapi_port})


def test_every_service_runs_unprivileged():
    """Started as root (as CI is), only supervisord and its watchdog keep root."""
    if os.geteuid() != 0:
        pytest.fail("run the hostile suite as root: it checks what a root start drops")
    owners = service_owners()
    users = {pwd.getpwuid(uid).pw_name for uid, _ in owners}
    assert "postgres" in users and stack.SERVICE_USER in users
    privileged = [cmdline[:120] for uid, cmdline in owners
                  if uid == 0 and "chicago_crime.devtools.supervision" not in cmdline]
    assert not privileged, privileged


def test_no_secret_on_any_command_line(no_secret):
    for proc in psutil.process_iter(["cmdline"]):
        no_secret(" ".join(proc.info["cmdline"] or []), f"the command line of pid {proc.pid}")


def test_files_holding_secrets_are_private():
    st = stack.STATE
    files = [REPO / ".env", stack.SUPERVISOR_CONF, st / "redis" / "redis.conf",
             st / "s3" / "identities.json", st / "s3" / "security.toml",
             st / "s3" / "certs" / "seaweedfs.key", st / "mlflow" / "basic_auth.ini",
             st / "airflow" / "passwords.json", st / "airflow" / "airflow.cfg",
             st / "svc" / "internal-keys.json", stack.pg_home() / "data" / "pg_hba.conf",
             *stack.PROGRAMS_DIR.glob("*.conf"), *(st / "svc" / "env").glob("*.json")]
    loose = [f"{oct(p.stat().st_mode & 0o777)} {p}" for p in files
             if p.stat().st_mode & 0o077]
    assert not loose, loose
    for folder in (stack.RUN, stack.LOGS, st / "svc", st / "s3", st / "airflow",
                   stack.pg_home() / "run"):
        assert folder.stat().st_mode & 0o077 == 0, folder


def test_no_generated_secret_in_a_git_tracked_file(no_secret):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    assert ".env" not in tracked and ".env.example" in tracked
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO).returncode == 0
    for rel in filter(None, tracked):
        path = REPO / rel
        if path.is_file() and path.stat().st_size < 5_000_000:
            no_secret(path.read_text(errors="ignore"), rel)


def _stack_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chicago_crime.devtools.stack", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_local_up_status_and_env_print_no_secret(no_secret):
    up = _stack_cli("up")  # idempotent: the stack keeps running as it was
    assert up.returncode == 0, up.stderr[-2000:]
    assert "AIRFLOW_ADMIN_PASSWORD" in up.stdout  # it says where the login is...
    no_secret(up.stdout + up.stderr, "`stack up`")  # ...not what it is
    for args in (("status",), ("env", "airflow-worker"), ("env", "api"), ("env", "mlflow")):
        out = _stack_cli(*args, timeout=120)
        assert out.returncode == 0, out.stderr[-1000:]
        no_secret(out.stdout + out.stderr, f"`stack {' '.join(args)}`")
    assert "********" in _stack_cli("env", "airflow-worker").stdout


def test_the_demo_summary_prints_no_secret(stack_settings, no_secret, capsys):
    demo.print_summary(stack_settings, {"name": "m", "version": "1"}, 1.0)
    out = capsys.readouterr().out
    assert "AIRFLOW_ADMIN_PASSWORD" in out
    no_secret(out, "the demo's summary")


def test_service_logs_hold_no_secret(no_secret):
    for log in stack.LOGS.glob("*.log"):
        no_secret(log.read_text(errors="ignore"), str(log))


def test_a_well_known_password_is_refused_when_the_stack_is_exposed():
    """BIND_HOST beyond loopback + a default password: `up` refuses and names the variable,
    before it touches anything."""
    env = {**os.environ, "BIND_HOST": "0.0.0.0", "PG_PASSWORD": "airflow",
           "AWS_SECRET_ACCESS_KEY": "minio123"}
    proc = subprocess.run([sys.executable, "-m", "chicago_crime.devtools.stack", "up"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1
    assert "PG_PASSWORD" in proc.stderr and "AWS_SECRET_ACCESS_KEY" in proc.stderr
    assert "well-known default" in proc.stderr
    assert Path(stack.SOCKET).exists()  # the running stack was left alone
