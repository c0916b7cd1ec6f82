"""The native stack's configuration (no services started): programs, per-program environments,
access-control files, the remembered data source, the watchdog and the launcher."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chicago_crime.config import ConfigError, load_settings
from chicago_crime.devtools import hardening, launch, stack, supervision

SECRETS = {
    "pg_password": "pg-secret-111111", "pg_admin_password": "pg-admin-222222",
    "valkey_password": "valkey-333333", "aws_secret_access_key": "s3-platform-444444",
    "s3_admin_secret_access_key": "s3-admin-555555", "mlflow_s3_secret_access_key": "s3-ml-666666",
    "airflow_admin_password": "af-admin-777777", "mlflow_admin_password": "ml-admin-888888",
    "mlflow_tracking_password": "ml-platform-999999", "mlflow_serving_password": "ml-api-000000",
    "mlflow_flask_server_secret_key": "flask-aaaaaaa", "api_key": "api-key-bbbbbbb",
    "airflow_jwt_secret": "j" * 80, "airflow_fernet_key": "f" * 43 + "=",
    "pg_monitoring_password": "pg-writer-ccccccc",
}
# Shifted ports (no default may leak into a program of a stack configured elsewhere).
PORTS = {
    "pg_port": 36432, "valkey_port": 36379, "minio_port": 36900, "seaweedfs_master_port": 36933,
    "seaweedfs_master_grpc_port": 36943, "seaweedfs_volume_port": 36934,
    "seaweedfs_volume_grpc_port": 36944, "seaweedfs_filer_port": 36988,
    "seaweedfs_filer_grpc_port": 36998, "seaweedfs_s3_grpc_port": 36910,
    "seaweedfs_admin_port": 16947, "mlflow_port": 36501, "airflow_port": 36080,
    "airflow_worker_log_port": 36793, "airflow_triggerer_log_port": 36794,
    "airflow_scheduler_health_port": 36974, "replay_port": 36765, "fastapi_port": 36800,
}
DEFAULT_PORTS = {"5432", "6379", "9000", "9333", "9340", "9888", "19333", "19340", "19888",
                 "19000", "23646", "5001", "8080", "8793", "8794", "8974", "8765", "8800"}


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("CHICAGO_CRIME_ENV_FILE", os.devnull)
    return load_settings(aws_access_key_id="platform", mlflow_tracking_username="platform",
                         **SECRETS, **PORTS)


@pytest.fixture
def state(monkeypatch, tmp_path):
    """The stack's state folders in a temporary directory."""
    root = tmp_path / "local"
    for name, rel in {"STATE": "", "RUN": "run", "SVC": "svc", "PROGRAMS_DIR": "supervisor",
                      "LOGS": "logs", "DATA_SOURCE_FILE": "data-source.json",
                      "SOCKET": "run/supervisor.sock", "ALERTS": "logs/alerts.log"}.items():
        monkeypatch.setattr(stack, name, root / rel if rel else root)
    (root / "run").mkdir(parents=True)
    monkeypatch.delenv("REPLAY_DATA_DIR", raising=False)
    return root


ACCOUNT = stack.Account("chicago-crime", 999, 999, drop=True)


def _programs(settings, replay=None):
    return {p.name: p for p in stack.programs(settings, replay, ACCOUNT, pg=Path("/pg"))}


def test_every_service_is_a_supervised_program_that_restarts(settings, state):
    progs = _programs(settings)
    assert set(progs) == set(stack.BASE_SERVICES + stack.MONITORING_SERVICES
                             + stack.app_services(settings))
    for prog in progs.values():
        conf = prog.render()
        assert "autorestart=true" in conf and "startretries=5" in conf
        assert "stopasgroup=true" in conf and "killasgroup=true" in conf
        # started as root, nothing runs as root: postgres as postgres, the rest unprivileged
        assert re.search(r"^user=(postgres|chicago-crime)$", conf, re.M), prog.name
    for name in ("mlflow", *stack.AIRFLOW_SERVICES, "api"):  # orphans cleaned before a start
        assert "chicago_crime.devtools.launch" in progs[name].command


STOP_RECORDER = """
import signal, sys, time
def stop(*_):
    with open(sys.argv[2], "a") as fh:
        fh.write(sys.argv[1] + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
while True:
    time.sleep(0.05)
"""


def test_a_shutdown_stops_every_program_before_what_it_needs(settings, state, tmp_path):
    """A real supervisord with the stack's programs' priorities (stand-in commands that record
    when they are told to stop): the API, Airflow and MLflow stop while PostgreSQL, the broker
    and the lake still answer (in name order PostgreSQL went first and Airflow's dag-processor
    died, reported as a crash)."""
    progs = _programs(settings, replay="/data")
    assert all(f"priority={stack.priority_of(p.name)}" in p.render() for p in progs.values())
    (state / "logs").mkdir()
    recorder, order = tmp_path / "recorder.py", tmp_path / "order"
    recorder.write_text(STOP_RECORDER)
    stand_ins = [stack.Program(name, f"{sys.executable} {recorder} {name} {order}",
                               autostart=True, startsecs=0, stopwaitsecs=10)
                 for name in progs]
    conf = tmp_path / "supervisord.conf"
    sock = tmp_path / "s.sock"
    conf.write_text(f"""[unix_http_server]
file={sock}
[supervisord]
logfile={tmp_path / "supervisord.log"}
pidfile={tmp_path / "supervisord.pid"}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{sock}
""" + "\n".join(p.render() for p in stand_ins))
    bin_dir = Path(sys.executable).parent
    daemon = subprocess.Popen([str(bin_dir / "supervisord"), "-n", "-c", str(conf)])
    try:
        ctl = [str(bin_dir / "supervisorctl"), "-c", str(conf)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([*ctl, "status"], capture_output=True, text=True).stdout
            if status.count("RUNNING") == len(stand_ins):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"stand-ins did not start: {status}")
        subprocess.run([*ctl, "shutdown"], capture_output=True, check=True)
        daemon.wait(timeout=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    stopped = order.read_text().split()
    assert sorted(stopped) == sorted(progs)
    position = {name: i for i, name in enumerate(stopped)}
    for needs, needed in [("api", "mlflow"), ("airflow-dag-processor", "postgres"),
                          ("airflow-worker", "redis"), ("mlflow", "s3"), ("mlflow", "postgres"),
                          ("airflow-scheduler", "mlflow"), ("prometheus", "postgres")]:
        assert position[needs] < position[needed], (needs, needed, stopped)
    assert set(stopped[-3:]) == set(stack.BASE_SERVICES)


def test_no_secret_in_any_supervisor_file_or_command_line(settings, state):
    progs = _programs(settings, replay="/data")
    rendered = "\n".join(p.render() for p in progs.values()) + stack.supervisor_head()
    rendered += stack.watchdog_conf()
    for value in SECRETS.values():
        assert value not in rendered
    # the database URL reaches MLflow through its environment, not --backend-store-uri
    assert "--backend-store-uri" not in progs["mlflow"].command
    assert progs["mlflow"].env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://airflow:")


def test_every_port_comes_from_the_settings(settings, state):
    progs = _programs(settings, replay="/data")
    text = "\n".join(p.command for p in progs.values())
    text += json.dumps({k: v for p in progs.values() for k, v in (p.env or {}).items()})
    numbers = set(re.findall(r"(?<![\d.])(\d{4,5})(?![\d.])", text))
    assert not numbers & DEFAULT_PORTS, numbers & DEFAULT_PORTS
    for port in PORTS.values():
        if port not in {PORTS["airflow_worker_log_port"], PORTS["airflow_triggerer_log_port"]}:
            assert str(port) in text, port


def test_listeners_bind_loopback_or_the_bind_address(settings, state):
    exposed = settings.model_copy(update={"bind_host": "192.0.2.10"})
    progs = _programs(exposed)
    for name in ("mlflow", "api"):
        assert "--host 192.0.2.10" in progs[name].command
    for name in ("s3", "postgres"):
        assert "192.0.2.10" not in progs[name].command
    assert "-ip.bind=127.0.0.1" in progs["s3"].command
    assert "listen_addresses=127.0.0.1" in progs["postgres"].command
    env = progs["airflow-scheduler"].env
    assert env["AIRFLOW__API__HOST"] == "192.0.2.10"
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"
    # Airflow's log servers bind every interface: they are not started at all
    assert "--skip-serve-logs" in progs["airflow-worker"].command
    assert "--skip-serve-logs" in progs["airflow-triggerer"].command
    assert "bind 127.0.0.1" in hardening.redis_conf(settings, Path("/r"))


def test_each_program_gets_only_the_secrets_it_needs(settings, state):
    envs = {n: p.env for n, p in _programs(settings).items() if p.env is not None}
    api = envs["api"]
    assert api["MLFLOW_TRACKING_USERNAME"] == "model-api"
    assert api["MLFLOW_TRACKING_PASSWORD"] == SECRETS["mlflow_serving_password"]
    assert api["AWS_SECRET_ACCESS_KEY"] == stack.NO_S3_ACCESS
    for name in ("pg_password", "valkey_password", "aws_secret_access_key",
                 "mlflow_tracking_password", "airflow_jwt_secret", "s3_admin_secret_access_key"):
        assert SECRETS[name] not in json.dumps(api), name
    # its one database login: the prediction log's writer, which nothing else holds
    assert api["PG_MONITORING_PASSWORD"] == SECRETS["pg_monitoring_password"]
    assert api["PG_MONITORING_USER"] == "monitoring_writer" and api["PG_HOST"] == "127.0.0.1"
    assert all(SECRETS["pg_monitoring_password"] not in json.dumps(env)
               for name, env in envs.items() if name != "api")
    worker = envs["airflow-worker"]
    assert worker["MLFLOW_TRACKING_PASSWORD"] == SECRETS["mlflow_tracking_password"]
    assert worker["AIRFLOW__CELERY__BROKER_URL"] == (
        f"redis://:{SECRETS['valkey_password']}@127.0.0.1:{PORTS['valkey_port']}/0")
    assert worker["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "30"
    assert worker["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "True"
    assert worker["AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER"] == "1"
    assert worker["CHICAGO_CRIME_ENV_FILE"] == os.devnull  # services never read .env
    mlflow = envs["mlflow"]
    assert mlflow["AWS_ACCESS_KEY_ID"] == "mlflow"
    assert mlflow["AWS_SECRET_ACCESS_KEY"] == SECRETS["mlflow_s3_secret_access_key"]
    for env in envs.values():  # set-up identities stay with the stack
        for name in ("pg_admin_password", "s3_admin_secret_access_key", "mlflow_admin_password"):
            assert SECRETS[name] not in json.dumps(env), name


def test_changing_the_data_source_changes_only_the_worker_and_the_replay(settings, state):
    portal = _programs(settings)
    replay = _programs(settings, replay="/data")
    changed = {n for n in replay if n not in portal or replay[n].render() != portal[n].render()}
    assert changed == {"airflow-worker", *stack.extra_workers(settings), stack.REPLAY}
    for worker in ("airflow-worker", *stack.extra_workers(settings)):
        assert replay[worker].env["SOCRATA_BASE_URL"] == (
            f"http://127.0.0.1:{PORTS['replay_port']}")


def test_data_source_is_remembered_and_a_switch_is_announced(state, shared_data, monkeypatch):
    folder = str(shared_data.resolve())
    chosen, note = stack.data_source(folder)
    assert chosen == folder and note == f"data source: the replay of {folder}"
    stack.remember_data_source(chosen)
    assert stack.data_source(None) == (folder, None)            # no DATA: kept, silently
    assert stack.data_source(str(shared_data)) == (folder, None)  # same folder: no switch
    chosen, note = stack.data_source("portal")
    assert chosen is None and "switching the data source from the replay" in note
    monkeypatch.setenv("REPLAY_DATA_DIR", folder)               # the old way still works
    assert stack.data_source(None)[0] == folder


def test_a_bad_replay_folder_is_refused(state, tmp_path):
    with pytest.raises(stack.StackError, match="no crimes/ folder"):
        stack.data_source(str(tmp_path))


def test_access_control_files(settings, tmp_path):
    hba = hardening.pg_hba()
    assert "trust" not in hba
    assert re.search(r"^local\s+all\s+all\s+scram-sha-256$", hba, re.M)
    assert re.search(r"^local\s+all\s+postgres\s+peer$", hba, re.M)
    role = hardening.pg_role_sql(settings)[0]
    assert "NOSUPERUSER" in role and "NOCREATEROLE" in role
    # the prediction log's writer: its database only, rejected before any line that admits it
    lines = [line.split() for line in hardening.pg_hba(settings).splitlines()
             if line and not line.startswith("#")]
    writer = [n for n, f in enumerate(lines) if f[2] == '"monitoring_writer"']
    assert [lines[n][1] for n in writer] == ['"monitoring"'] * 3 + ["all", "all"]
    assert [lines[n][-1] for n in writer[-2:]] == ["reject", "reject"]
    assert max(writer) < min(n for n, f in enumerate(lines) if f[2] == "all")
    sql = dict((s, db) for db, s in hardening.pg_monitoring_sql(settings))
    alter = next(s for s in sql if s.startswith("ALTER ROLE"))
    assert "NOSUPERUSER" in alter and "NOCREATEDB" in alter and "pg-writer-ccccccc" in alter
    assert sql['GRANT CONNECT ON DATABASE "monitoring" TO "monitoring_writer"'] is None
    assert sql['GRANT USAGE, CREATE ON SCHEMA public TO "monitoring_writer"'] == "monitoring"
    assert any("GRANT SELECT ON TABLES TO \"airflow\"" in s for s in sql)
    assert f"requirepass {SECRETS['valkey_password']}" in hardening.redis_conf(settings, tmp_path)
    ids = {i["name"]: i for i in hardening.s3_identities(settings)["identities"]}
    assert set(ids["platform"]["actions"]) == {"Read:data", "Write:data", "List:data",
                                               "Tagging:data"}
    assert all(a.endswith(":mlflow") for a in ids["mlflow"]["actions"])
    assert "Admin" in ids["admin"]["actions"]
    certs = hardening.seaweedfs_certificates(tmp_path / "certs")
    toml = hardening.seaweedfs_security({k: f"key-{k}" for k in stack.SEAWEEDFS_KEYS}, certs)
    for section in ("[jwt.signing]", "[jwt.signing.read]", "[jwt.filer_signing]",
                    "[jwt.filer_signing.read]", "[grpc.filer]", "[grpc.master]",
                    "[grpc.volume]", "[grpc.s3]", "[grpc.admin]", "[grpc.client]"):
        assert section in toml
    ini = hardening.mlflow_auth_ini(settings, "postgresql://u:p%40@h/db")
    assert "admin_password" not in ini and "%%40" in ini  # configparser escaping


def test_well_known_passwords_are_refused_beyond_loopback(monkeypatch):
    monkeypatch.setenv("CHICAGO_CRIME_ENV_FILE", os.devnull)
    base = {"aws_access_key_id": "k", "aws_secret_access_key": "a-strong-one-123"}
    load_settings(bind_host="127.0.0.1", pg_password="airflow", **base)  # loopback: allowed
    for name, value in (("pg_password", "airflow"), ("aws_secret_access_key", "minio123"),
                        ("airflow_admin_password", "airflow"),
                        ("mlflow_admin_password", "password1234")):
        with pytest.raises(ConfigError, match=name.upper()):
            load_settings(bind_host="0.0.0.0", **{**base, name: value})


def test_a_missing_secret_is_named(monkeypatch):
    monkeypatch.setenv("CHICAGO_CRIME_ENV_FILE", os.devnull)
    for name, value in {**SECRETS, "aws_access_key_id": "k"}.items():
        monkeypatch.setenv(name.upper(), value)
    monkeypatch.setenv("AIRFLOW_JWT_SECRET", "")
    with pytest.raises(stack.StackError, match="AIRFLOW_JWT_SECRET is empty"):
        stack.stack_settings()


def test_broker_url_carries_the_password_quoted(settings):
    url = settings.model_copy(update={"valkey_password": type(settings.api_key)("a/b@c")})
    assert url.broker_url == f"redis://:a%2Fb%40c@127.0.0.1:{PORTS['valkey_port']}/0"


def test_mask_hides_every_secret(settings, state):
    text = json.dumps(stack.program_envs(settings, None)["airflow-worker"])
    masked = stack.mask(text, stack.secret_values(settings))
    for value in SECRETS.values():
        assert value not in masked


def test_watchdog_gives_up_loudly_on_a_crash_loop(tmp_path):
    stopped = []

    class Rpc:
        class supervisor:  # mirrors supervisord's XML-RPC namespace
            @staticmethod
            def stopProcess(name, wait):
                stopped.append(name)

    dog = supervision.Watchdog(tmp_path, tmp_path / "alerts.log", max_crashes=3, window=60,
                               rpc=Rpc())
    crash = {"processname": "api", "expected": "0", "pid": "1", "from_state": "RUNNING"}
    dog.handle("PROCESS_STATE_EXITED", crash, now=0)
    dog.handle("PROCESS_STATE_RUNNING", {"processname": "api"}, now=2.5)
    dog.handle("PROCESS_STATE_EXITED", crash, now=10)
    dog.handle("PROCESS_STATE_EXITED", crash, now=100)  # the first two left the window
    dog.handle("PROCESS_STATE_EXITED", crash, now=110)
    assert not stopped
    dog.handle("PROCESS_STATE_EXITED", crash, now=120)
    assert stopped == ["api"]
    assert "crashed 3 times" in supervision.read_gave_up(tmp_path)["api"]["reason"]
    dog.handle("PROCESS_STATE_FATAL", {"processname": "mlflow"}, now=130)
    alerts = (tmp_path / "alerts.log").read_text()
    assert "api is running again, 2.5s after it crashed" in alerts
    assert "GAVE UP on api" in alerts and "GAVE UP on mlflow" in alerts
    supervision.forget_gave_up(tmp_path, ["api"])
    assert set(supervision.read_gave_up(tmp_path)) == {"mlflow"}


def test_launcher_ends_what_the_previous_start_left_running(tmp_path):
    """A real process tree tagged by one start is ended by the next start of the same name."""
    state = tmp_path / "run"
    state.mkdir()
    tag = launch.record_tag(state, "worker")
    env = {**os.environ, launch.TOKEN_VAR: tag}
    # a child that forks a grandchild which leaves the process group (like serve-logs would)
    script = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 10
    while len(launch.tagged_processes(tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(launch.tagged_processes(tag)) == 2
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**env, launch.TOKEN_VAR: "worker:someone-else"})
    try:
        assert launch.previous_tag(state, "worker") == tag
        ended = launch.end_processes(tag, grace=5)
        parent.wait(timeout=5)
        assert len(ended) == 2 and not launch.tagged_processes(tag)
        assert other.poll() is None  # another start's processes are not touched
    finally:
        other.send_signal(signal.SIGKILL)
        parent.kill()


def test_gen_secrets_creates_a_private_env_and_prints_no_secret(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_secrets",
                                                  stack.REPO / "scripts" / "gen_secrets.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    (tmp_path / ".env.example").write_text((stack.REPO / ".env.example").read_text())
    proc = subprocess.run([sys.executable, str(stack.REPO / "scripts" / "gen_secrets.py"),
                           str(tmp_path / ".env")], capture_output=True, text=True, check=True)
    env = tmp_path / ".env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    values = dict(line.split("=", 1) for line in env.read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    for name in gen.GENERATORS:
        assert len(values[name]) >= 32, name
        assert values[name] not in proc.stdout + proc.stderr
    legacy = gen.fill_secrets("PG_PASSWORD=airflow\nAWS_SECRET_ACCESS_KEY=minio123\n", {
        "PG_PASSWORD": lambda: "new1", "AWS_SECRET_ACCESS_KEY": lambda: "new2"})[0]
    assert legacy == "PG_PASSWORD=new1\nAWS_SECRET_ACCESS_KEY=new2\n"


def test_airflow_workers_are_separate_celery_workers(settings, state):
    """AIRFLOW_WORKERS=3: three worker programs, the extra ones with their own Celery node
    name and task-instance host name, the same environment otherwise."""
    three = settings.model_copy(update={"airflow_workers": 3})
    progs = _programs(three)
    assert stack.extra_workers(three) == ("airflow-worker-2", "airflow-worker-3")
    assert {"airflow-worker", "airflow-worker-2", "airflow-worker-3"} <= set(progs)
    assert "--celery-hostname" not in progs["airflow-worker"].command
    for name in stack.extra_workers(three):
        assert f"celery worker --skip-serve-logs --celery-hostname {name}@%%h" in \
            progs[name].command
        env = progs[name].env
        assert env["CHICAGO_CRIME_WORKER_NAME"] == name
        assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == stack.WORKER_HOSTNAME_CALLABLE
        first = progs["airflow-worker"].env
        assert {k: v for k, v in env.items() if k not in {
            "CHICAGO_CRIME_WORKER_NAME", "AIRFLOW__CORE__HOSTNAME_CALLABLE"}} == first
    one = settings.model_copy(update={"airflow_workers": 1})
    assert not stack.extra_workers(one) and "airflow-worker-2" not in _programs(one)


def test_an_extra_workers_task_instances_name_it(monkeypatch):
    from chicago_crime.devtools import worker_name

    monkeypatch.setenv("CHICAGO_CRIME_WORKER_NAME", "airflow-worker-2")
    assert worker_name.hostname().startswith("airflow-worker-2@")
    assert worker_name.worker_of(worker_name.hostname()) == "airflow-worker-2"
    monkeypatch.delenv("CHICAGO_CRIME_WORKER_NAME")
    assert "@" not in worker_name.hostname()
    assert worker_name.worker_of(worker_name.hostname()) == "airflow-worker"
    assert worker_name.worker_of(None) == "airflow-worker"
