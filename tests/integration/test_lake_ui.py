"""The lake's web UI of the native stack (SeaweedFS admin UI on MINIO_PORT_UI, where Compose has
the MinIO console) shows the platform's buckets, and only behind the S3 admin's keys from .env."""

from __future__ import annotations

import re

import pytest
import requests

from chicago_crime.lake import Lake

pytestmark = pytest.mark.integration


def ui(settings) -> str:
    return f"http://127.0.0.1:{settings.minio_port_ui}"


def login(settings, user: str, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(f"{ui(settings)}/login", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, f"no login form at {ui(settings)}/login"
    resp = session.post(f"{ui(settings)}/login", timeout=10, allow_redirects=False,
                        data={"csrf_token": token[1], "username": user, "password": password})
    return session, resp


def test_anonymous_visitors_are_sent_to_the_login(stack_settings):
    for path in ("/", "/admin", f"/files?path=/buckets/{stack_settings.data_repo_bucket_name}"):
        resp = requests.get(f"{ui(stack_settings)}{path}", timeout=10, allow_redirects=False)
        assert resp.status_code in {302, 303, 307}, (path, resp.status_code)
        assert resp.headers["Location"].endswith("/login"), (path, resp.headers["Location"])
    api = requests.get(f"{ui(stack_settings)}/api/s3/buckets", timeout=10)
    assert api.status_code == 401


def test_a_wrong_password_is_refused(stack_settings):
    session, resp = login(stack_settings, stack_settings.s3_admin_access_key_id, "not-the-secret")
    assert resp.status_code == 303 and "error" in resp.headers["Location"]
    follow = session.get(f"{ui(stack_settings)}/object-store/buckets", timeout=10,
                         allow_redirects=False)
    assert follow.status_code in {302, 303, 307}


def test_the_keys_from_env_open_the_platforms_buckets(stack_settings):
    marker = "tmp/tests/lake-ui-marker.txt"
    Lake(settings=stack_settings).put_bytes(marker, b"seen in the web UI")
    session, resp = login(stack_settings, stack_settings.s3_admin_access_key_id,
                          stack_settings.s3_admin_secret_access_key.get_secret_value())
    assert resp.status_code == 303 and "error" not in resp.headers["Location"]
    buckets = session.get(f"{ui(stack_settings)}/object-store/buckets", timeout=10)
    assert buckets.status_code == 200
    for bucket in (stack_settings.data_repo_bucket_name, stack_settings.mlflow_bucket_name):
        assert bucket in buckets.text
    files = session.get(f"{ui(stack_settings)}/files", timeout=10, params={
        "path": f"/buckets/{stack_settings.data_repo_bucket_name}/tmp/tests"})
    assert files.status_code == 200
    assert "lake-ui-marker.txt" in files.text
