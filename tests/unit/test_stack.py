"""The native stack's configuration rendering (no services started)."""

from __future__ import annotations

import pytest

from chicago_crime.devtools import stack


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("AIRFLOW_JWT_SECRET", "j" * 80)
    monkeypatch.setenv("AIRFLOW_FERNET_KEY", "f" * 44)
    monkeypatch.delenv("REPLAY_DATA_DIR", raising=False)
    return stack.stack_env()


def test_every_service_is_a_supervised_program(env):
    conf = stack.supervisor_conf(env)
    for name in stack.BASE_SERVICES + stack.APP_SERVICES:
        assert f"[program:{name}]" in conf
    assert "[program:replay]" not in conf
    assert "user=postgres" in conf  # initdb/postgres refuse root
    assert "-s3.config=" in conf    # SeaweedFS enforces the .env credentials
    assert conf.count("stopasgroup=true") == len(stack.BASE_SERVICES + stack.APP_SERVICES)


def test_airflow_gets_one_contract(env):
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "j" * 80
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith(
        f":{env['AIRFLOW_PORT']}/execution/")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://127.0.0.1:{env['VALKEY_PORT']}/0"
    assert "LocalFilesystemBackend" in env["AIRFLOW__SECRETS__BACKEND"]


def test_replay_folder_points_the_platform_at_the_replay_server(monkeypatch, env, shared_data):
    monkeypatch.setenv("REPLAY_DATA_DIR", str(shared_data))
    replay_env = stack.stack_env()
    assert replay_env["SOCRATA_BASE_URL"] == f"http://127.0.0.1:{replay_env['REPLAY_PORT']}"
    assert "[program:replay]" in stack.supervisor_conf(replay_env)
    assert stack.services(replay_env)[3] == "replay"
    assert stack._fingerprint(replay_env) != stack._fingerprint(env)


def test_missing_secret_is_named(monkeypatch):
    monkeypatch.setenv("AIRFLOW_JWT_SECRET", "")
    monkeypatch.setenv("AIRFLOW_FERNET_KEY", "x")
    with pytest.raises(stack.StackError, match="AIRFLOW_JWT_SECRET"):
        stack.stack_env()


def test_bad_replay_folder_is_refused(monkeypatch, env, tmp_path):
    monkeypatch.setenv("REPLAY_DATA_DIR", str(tmp_path))
    with pytest.raises(stack.StackError, match="no crimes/ folder"):
        stack.stack_env()
