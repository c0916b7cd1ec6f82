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


def test_an_exposed_service_refuses_the_weak_secrets_it_was_given_only() -> None:
    """BIND_HOST beyond loopback: a well-known or empty secret that was set is refused (named);
    a secret the process was not given (the model server holds no database or S3 password) is
    not its concern."""
    import pydantic

    from chicago_crime.config import Settings

    strong = "x7Rk2pQ9vLm4Zt8s"
    s3 = {"aws_access_key_id": "platform", "aws_secret_access_key": strong}
    api = Settings(_env_file=None, bind_host="0.0.0.0", api_key=strong, **s3)  # type: ignore[call-arg]
    assert api.bind_host == "0.0.0.0"
    with pytest.raises(pydantic.ValidationError, match=r"PG_PASSWORD, API_KEY: empty or a well"):
        Settings(_env_file=None, bind_host="0.0.0.0", pg_password="airflow",  # type: ignore[call-arg]
                 api_key="", **s3)
    loopback = Settings(_env_file=None, pg_password="airflow", **s3)  # type: ignore[call-arg]
    assert loopback.pg_password.get_secret_value() == "airflow"
