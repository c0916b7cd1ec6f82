"""MLflow's accounts writer (native stack and the Compose image's entrypoint), on a real
sqlite user store."""

from __future__ import annotations

from pathlib import Path

import pytest

from chicago_crime.devtools import mlflow_accounts as accounts

ENV = {
    "MLFLOW_ADMIN_USERNAME": "admin", "MLFLOW_ADMIN_PASSWORD": "a-Strong-admin-1",
    "MLFLOW_TRACKING_USERNAME": "platform", "MLFLOW_TRACKING_PASSWORD": "p-Strong-platform-2",
    "MLFLOW_SERVING_USERNAME": "model-api", "MLFLOW_SERVING_PASSWORD": "s-Strong-serving-3",
}


def test_accounts_are_created_then_kept_then_updated(tmp_path: Path) -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'auth.db'}"
    assert accounts.sync(uri, accounts.accounts_from_env(ENV)) == [
        "created admin", "created platform", "created model-api"]
    assert accounts.sync(uri, accounts.accounts_from_env(ENV)) == []  # a rerun changes nothing
    changed = accounts.sync(uri, accounts.accounts_from_env(
        {**ENV, "MLFLOW_SERVING_PASSWORD": "new-Serving-4"}))
    assert changed == ["updated model-api"]
    store = SqlAlchemyStore()
    store.init_db(uri)
    try:
        assert store.authenticate_user("model-api", "new-Serving-4")
        assert not store.authenticate_user("model-api", ENV["MLFLOW_SERVING_PASSWORD"])
        assert store.get_user("admin").is_admin and not store.get_user("platform").is_admin
    finally:
        store.engine.dispose()


def test_an_account_without_a_password_is_refused() -> None:
    with pytest.raises(ValueError, match="MLFLOW_SERVING_USERNAME / MLFLOW_SERVING_PASSWORD"):
        accounts.accounts_from_env({**ENV, "MLFLOW_SERVING_PASSWORD": ""})


def test_the_script_needs_the_auth_database(monkeypatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_AUTH_DATABASE_URI", raising=False)
    assert accounts.main() == 1
    assert "MLFLOW_AUTH_DATABASE_URI" in capsys.readouterr().err


def test_the_script_writes_the_same_auth_ini_as_the_native_stack(tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """One renderer for both stacks: the Compose entrypoint's ``--auth-ini`` file is what
    ``hardening.mlflow_auth_ini`` gives the native stack, private, and the accounts are in."""
    from chicago_crime.config import load_settings
    from chicago_crime.devtools import hardening

    uri = f"sqlite:///{tmp_path / 'auth%db'}"
    for name, value in {**ENV, "MLFLOW_AUTH_DATABASE_URI": uri}.items():
        monkeypatch.setenv(name, value)
    ini = tmp_path / "home" / "basic_auth.ini"
    assert accounts.main(["--auth-ini", str(ini)]) == 0
    assert "created admin" in capsys.readouterr().out
    assert ini.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("CHICAGO_CRIME_ENV_FILE", "/dev/null")
    settings = load_settings(aws_access_key_id="k", aws_secret_access_key="a-strong-one-123",
                             mlflow_admin_username="admin")
    assert ini.read_text() == hardening.mlflow_auth_ini(settings, uri)
    assert "%%db" in ini.read_text() and "password" not in ini.read_text().lower()
