import pytest

from chicago_crime.config import ConfigError, load_settings


def test_names_match_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("DATA_REPO_BUCKET_NAME", "lake")
    monkeypatch.setenv("PG_PORT", "6543")
    s = load_settings()
    assert s.mlflow_tracking_uri == "http://mlflow:5000"
    assert s.data_repo_bucket_name == "lake"
    assert s.pg_port == 6543
    assert s.pg_url("airflow").endswith("@127.0.0.1:6543/airflow")


def test_missing_required_value_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    monkeypatch.setenv("CHICAGO_CRIME_ENV_FILE", str(empty))
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        load_settings()


def test_invalid_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("FASTAPI_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="FASTAPI_PORT"):
        load_settings()
