"""Nobody gets in without the platform's generated credentials: MLflow, Airflow, PostgreSQL,
the S3 API, the SeaweedFS filer/volume/master ports and gRPC, redis."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import boto3
import psycopg2
import pytest
import redis
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from chicago_crime.devtools import stack

pytestmark = pytest.mark.security

DEFAULT_LOGINS = {
    "airflow": [("airflow", "airflow"), ("admin", "admin")],
    "postgres": [("airflow", "airflow"), ("postgres", "postgres"), ("postgres", "")],
    "s3": [("minio", "minio123"), ("minioadmin", "minioadmin"), ("admin", "password")],
    "mlflow": [("admin", "password1234"), ("admin", "password")],
}


@pytest.fixture(scope="module")
def s(stack_settings):
    return stack_settings


def mlflow_url(s, path: str) -> str:
    return f"http://127.0.0.1:{s.mlflow_port}/api/2.0/mlflow/{path}"


def s3(s, key: str, secret: str):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s.minio_port}",
                        aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name=s.aws_default_region,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


# -- MLflow ----------------------------------------------------------------------------------------
def test_unauthenticated_mlflow_write_gets_401(s):
    name = f"secprobe-{uuid.uuid4().hex[:8]}"
    for path, body in (("registered-models/create", {"name": name}),
                       ("experiments/create", {"name": name})):
        resp = requests.post(mlflow_url(s, path), json=body, timeout=30)
        assert resp.status_code == 401, (path, resp.status_code, resp.text[:200])
    resp = requests.get(mlflow_url(s, "registered-models/search"), timeout=30)
    assert resp.status_code == 401  # reading needs a login too


def test_mlflow_ui_asks_for_a_login(s):
    resp = requests.get(f"http://127.0.0.1:{s.mlflow_port}/", timeout=30)
    assert resp.status_code == 401
    assert resp.headers.get("WWW-Authenticate", "").lower().startswith("basic")


def test_mlflow_default_and_wrong_logins_are_refused(s):
    for user, password in [*DEFAULT_LOGINS["mlflow"],
                           (s.mlflow_tracking_username, "not-the-password")]:
        resp = requests.get(mlflow_url(s, "registered-models/search"), auth=(user, password),
                            timeout=30)
        assert resp.status_code == 401, (user, resp.status_code)
    ok = requests.get(mlflow_url(s, "registered-models/search"), timeout=30, auth=(
        s.mlflow_tracking_username, s.mlflow_tracking_password.get_secret_value()))
    assert ok.status_code == 200


def test_the_model_servers_account_cannot_move_the_champion(s):
    """Least privilege: the API's read-only account reads a model but cannot change it."""
    platform = (s.mlflow_tracking_username, s.mlflow_tracking_password.get_secret_value())
    serving = (s.mlflow_serving_username, s.mlflow_serving_password.get_secret_value())
    admin = (s.mlflow_admin_username, s.mlflow_admin_password.get_secret_value())
    name = f"secprobe-{uuid.uuid4().hex[:8]}"
    created = requests.post(mlflow_url(s, "registered-models/create"), json={"name": name},
                            auth=platform, timeout=30)
    assert created.status_code == 200, created.text[:300]
    try:
        read = requests.get(mlflow_url(s, "registered-models/get"), params={"name": name},
                            auth=serving, timeout=30)
        assert read.status_code == 200
        for method, path, body in (
                ("PATCH", "registered-models/update", {"name": name, "description": "x"}),
                ("POST", "registered-models/alias", {"name": name, "alias": "champion",
                                                     "version": "1"}),
                ("DELETE", "registered-models/delete", {"name": name})):
            resp = requests.request(method, mlflow_url(s, path), json=body, auth=serving,
                                    timeout=30)
            assert resp.status_code == 403, (path, resp.status_code, resp.text[:200])
    finally:
        requests.delete(mlflow_url(s, "registered-models/delete"), json={"name": name},
                        auth=admin, timeout=30)


# -- Airflow ---------------------------------------------------------------------------------------
def test_airflow_default_login_is_refused(s):
    url = f"http://127.0.0.1:{s.airflow_port}/auth/token"
    for user, password in DEFAULT_LOGINS["airflow"]:
        resp = requests.post(url, json={"username": user, "password": password}, timeout=30)
        assert resp.status_code in {401, 403}, (user, resp.status_code)
    ok = requests.post(url, timeout=30, json={
        "username": s.airflow_admin_user,
        "password": s.airflow_admin_password.get_secret_value()})
    assert ok.status_code in {200, 201} and ok.json()["access_token"]
    assert requests.get(f"http://127.0.0.1:{s.airflow_port}/api/v2/dags",
                        timeout=30).status_code == 401


# -- PostgreSQL ------------------------------------------------------------------------------------
def test_postgres_refuses_default_and_missing_passwords(s):
    for user, password in DEFAULT_LOGINS["postgres"]:
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host="127.0.0.1", port=s.pg_port, user=user, password=password,
                             dbname=s.pg_mlflow_db, connect_timeout=10)


def test_the_platforms_database_role_is_not_a_superuser(s):
    with psycopg2.connect(s.pg_url(s.pg_mlflow_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                    "WHERE rolname = current_user")
        assert cur.fetchone() == (False, False, False)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("COPY (SELECT 1) TO PROGRAM 'id'")


def test_a_local_user_cannot_reach_the_postgres_socket(s):
    socket_dir = stack.pg_home() / "run"
    assert oct(socket_dir.stat().st_mode & 0o777) == "0o700"
    proc = subprocess.run(["runuser", "-u", "nobody", "--", "psql", "-h", str(socket_dir),
                           "-p", str(s.pg_port), "-U", "postgres", "-Atc", "SELECT 1"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stderr
    tcp = subprocess.run(["runuser", "-u", "nobody", "--", "psql", "-h", "127.0.0.1",
                          "-p", str(s.pg_port), "-U", "postgres", "-w", "-Atc", "SELECT 1"],
                         capture_output=True, text=True, timeout=30)
    assert tcp.returncode != 0 and "password" in tcp.stderr, tcp.stderr


# -- S3 --------------------------------------------------------------------------------------------
def test_s3_refuses_default_keys_and_anonymous_callers(s):
    for key, secret in DEFAULT_LOGINS["s3"]:
        with pytest.raises(ClientError) as err:
            s3(s, key, secret).list_buckets()
        assert err.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied",
                                                       "SignatureDoesNotMatch"}
    anonymous = requests.get(f"http://127.0.0.1:{s.minio_port}/{s.data_repo_bucket_name}/",
                             timeout=30)
    assert anonymous.status_code == 403


def test_s3_identities_are_limited_to_their_bucket(s):
    platform = s3(s, s.aws_access_key_id, s.aws_secret_access_key.get_secret_value())
    key = f"tmp/secprobe/{uuid.uuid4().hex}.txt"
    platform.put_object(Bucket=s.data_repo_bucket_name, Key=key, Body=b"probe")  # control
    try:
        for attempt in (
                lambda: platform.put_object(Bucket=s.mlflow_bucket_name, Key=key, Body=b"x"),
                lambda: platform.list_objects_v2(Bucket=s.mlflow_bucket_name),
                lambda: platform.create_bucket(Bucket=f"secprobe-{uuid.uuid4().hex[:8]}"),
                lambda: platform.delete_bucket(Bucket=s.data_repo_bucket_name)):
            with pytest.raises(ClientError) as err:
                attempt()
            assert err.value.response["Error"]["Code"] in {"AccessDenied", "BucketNotEmpty"}
    finally:
        platform.delete_object(Bucket=s.data_repo_bucket_name, Key=key)


def test_the_model_server_holds_no_s3_credential(s):
    env = stack.program_envs(s, None)["api"]
    assert env["AWS_SECRET_ACCESS_KEY"] != s.aws_secret_access_key.get_secret_value()
    with pytest.raises(ClientError) as err:
        s3(s, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]).list_objects_v2(
            Bucket=s.data_repo_bucket_name)
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"


# -- SeaweedFS internals ---------------------------------------------------------------------------
def test_the_filer_and_volume_ports_refuse_unsigned_requests(s):
    """The review's repro: an unauthenticated filer write (and read) now fails; so does a write
    to a volume server with a file id the master hands out."""
    filer = f"http://127.0.0.1:{s.seaweedfs_filer_port}"
    probe = f"{filer}/buckets/{s.data_repo_bucket_name}/tmp/secprobe-{uuid.uuid4().hex}.txt"
    write = requests.post(probe, files={"file": ("x.txt", b"owned")}, timeout=30)
    assert write.status_code == 401, (write.status_code, write.text[:200])
    for url in (probe, f"{filer}/buckets/", f"{filer}/buckets/{s.data_repo_bucket_name}/"):
        assert requests.get(url, timeout=30).status_code == 401, url
    assigned = requests.get(f"http://127.0.0.1:{s.seaweedfs_master_port}/dir/assign",
                            timeout=30).json()
    assert "auth" not in assigned  # the master hands out no write token...
    volume = f"http://127.0.0.1:{s.seaweedfs_volume_port}/{assigned['fid']}"
    write = requests.post(volume, files={"file": ("x.txt", b"owned")}, timeout=30)
    assert write.status_code == 401, (write.status_code, write.text[:200])  # ...so: refused
    assert requests.get(volume, timeout=30).status_code == 401


def _grpc_handshake(port: int, cert: tuple[Path, Path] | None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(*cert)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return "answered" if tls.recv(9) else "closed"
    except ssl.SSLError as exc:
        return exc.reason or str(exc)


def test_every_seaweedfs_grpc_port_requires_a_client_certificate(s):
    certs = stack.STATE / "s3" / "certs"
    for port in (s.seaweedfs_master_grpc_port, s.seaweedfs_volume_grpc_port,
                 s.seaweedfs_filer_grpc_port, s.seaweedfs_s3_grpc_port,
                 s.seaweedfs_admin_port + 10000):
        assert _grpc_handshake(port, None) == "TLSV13_ALERT_CERTIFICATE_REQUIRED", port
        assert _grpc_handshake(port, (certs / "seaweedfs.crt", certs / "seaweedfs.key")) \
            == "answered", port  # control: the components' own certificate gets through


# -- redis -----------------------------------------------------------------------------------------
def test_redis_requires_the_password(s):
    anonymous = redis.Redis(host="127.0.0.1", port=s.valkey_port, socket_timeout=10)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=s.valkey_port, password="redis").ping()
    proc = subprocess.run(["runuser", "-u", "nobody", "--", "redis-cli", "-p",
                           str(s.valkey_port), "CLIENT", "LIST"],
                          capture_output=True, text=True, timeout=30)
    assert "NOAUTH" in proc.stdout + proc.stderr
    assert redis.Redis(host="127.0.0.1", port=s.valkey_port, socket_timeout=10,
                       password=s.valkey_password.get_secret_value()).ping()


def test_the_celery_broker_url_carries_the_password(s):
    env = stack.program_envs(s, None)["airflow-worker"]
    url = urllib.parse.urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert urllib.parse.unquote(url.password or "") == s.valkey_password.get_secret_value()
