"""Real-browser checks: Debian Chromium (Playwright via ``executable_path``), headless, offline.

They run after the journey (``tests/e2e/conftest.py`` sorts them last and the ``journey``
fixture makes sure the demo ran) and look at the three UIs a person opens after ``make demo``:
Airflow, MLflow and the model API's Swagger UI. Each check writes a PNG screenshot to
``artifacts/screenshots/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from chicago_crime import registry
from chicago_crime.demo import ETL_DAG, TRAIN_DAG

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
UI_TIMEOUT = 60_000  # ms: React UIs on a busy 2-core machine


def shot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def external_requests(urls: list[str]) -> list[str]:
    """Requests that left the machine (an offline UI must make none)."""
    return [u for u in urls if urlsplit(u).scheme in {"http", "https", "ws", "wss"}
            and urlsplit(u).hostname not in LOCAL_HOSTS]


def airflow_login(page: Any, settings: Any, screenshots: Path) -> None:
    """Sign in through Airflow's SimpleAuthManager login form."""
    page.goto(settings.airflow_url + "/")
    username = page.get_by_label(re.compile("username", re.I))
    expect(username).to_be_visible(timeout=UI_TIMEOUT)
    shot(page, screenshots, "airflow_1_login")
    username.fill(settings.airflow_admin_user)
    page.get_by_label(re.compile("password", re.I)).fill(
        settings.airflow_admin_password.get_secret_value())
    page.get_by_role("button", name=re.compile("sign in|log ?in", re.I)).click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=UI_TIMEOUT)


def test_airflow_lists_both_dags_with_a_successful_run(journey, page, stack_settings,
                                                       screenshots) -> None:
    airflow_login(page, stack_settings, screenshots)
    # the DAG list, filtered to DAGs whose latest run succeeded
    page.goto(f"{stack_settings.airflow_url}/dags?last_dag_run_state=success")
    for dag_id in (ETL_DAG, TRAIN_DAG):
        expect(page.get_by_role("link", name=dag_id, exact=True).first).to_be_visible(
            timeout=UI_TIMEOUT)
    shot(page, screenshots, "airflow_2_dags_success")
    # each DAG's run list shows a successful run
    for dag_id in (ETL_DAG, TRAIN_DAG):
        page.goto(f"{stack_settings.airflow_url}/dags/{dag_id}/runs?state=success")
        expect(page.get_by_text(re.compile(r"^success$", re.I)).first).to_be_visible(
            timeout=UI_TIMEOUT)
        shot(page, screenshots, f"airflow_3_{dag_id}_runs")


def test_mlflow_shows_the_search_experiment(journey, page, stack_settings,
                                            screenshots) -> None:
    page.goto(f"{stack_settings.mlflow_tracking_uri}/#/experiments")
    expect(page.get_by_text(stack_settings.search_experiment, exact=True).first).to_be_visible(
        timeout=UI_TIMEOUT)
    expect(page.get_by_text(stack_settings.etl_experiment, exact=True).first).to_be_visible(
        timeout=UI_TIMEOUT)
    shot(page, screenshots, "mlflow_1_experiments")


def test_mlflow_shows_the_champion_alias(journey, page, stack_settings, mlflow_client,
                                         screenshots) -> None:
    champion = registry.version_by_alias(mlflow_client, stack_settings.model_name,
                                         registry.CHAMPION)
    assert champion is not None
    page.goto(f"{stack_settings.mlflow_tracking_uri}/#/models/{stack_settings.model_name}")
    expect(page.get_by_text(stack_settings.model_name).first).to_be_visible(timeout=UI_TIMEOUT)
    # the versions table tags the champion version with its alias
    row = page.get_by_role("row").filter(has_text=f"Version {champion.version}")
    expect(row.get_by_text(registry.CHAMPION)).to_be_visible(timeout=UI_TIMEOUT)
    shot(page, screenshots, "mlflow_2_registered_model")


def test_api_docs_render_offline(journey, page, stack_settings, screenshots) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{stack_settings.api_url}/docs")
    for path in ("/predict", "/predict/batch", "/ready"):
        expect(page.get_by_text(path, exact=True).first).to_be_visible(timeout=UI_TIMEOUT)
    page.wait_for_load_state("networkidle")
    shot(page, screenshots, "api_1_docs")
    assert requested, "the browser made no request"
    assert not external_requests(requested), external_requests(requested)
