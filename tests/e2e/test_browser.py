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

from chicago_crime.devtools.demo import PIPELINE_DAGS
from chicago_crime.model import registry

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
    username = page.get_by_label("Username")
    expect(username).to_be_visible(timeout=UI_TIMEOUT)
    shot(page, screenshots, "airflow_1_login")
    username.fill(settings.airflow_admin_user)
    page.get_by_label("Password").fill(settings.airflow_admin_password.get_secret_value())
    page.get_by_role("button", name="Sign in").click()
    expect(username).to_be_hidden(timeout=UI_TIMEOUT)


def latest_successful_run(airflow: Any, dag_id: str) -> str:
    runs = airflow.dag_runs.get_dag_runs(dag_id, state=["success"], order_by=["-run_after"],
                                         limit=1).dag_runs
    assert runs, f"{dag_id} has no successful run"
    return runs[0].dag_run_id


def test_airflow_lists_the_pipeline_dags_with_a_successful_run(
        journey, page, airflow, stack_settings, screenshots) -> None:
    airflow_login(page, stack_settings, screenshots)
    page.goto(f"{stack_settings.airflow_url}/dags")
    for dag_id in PIPELINE_DAGS:
        expect(page.get_by_role("link", name=dag_id, exact=True).first).to_be_visible(
            timeout=UI_TIMEOUT)
    shot(page, screenshots, "airflow_2_dags")
    # each DAG's runs tab, filtered to successful runs, shows its latest successful run
    for dag_id in PIPELINE_DAGS:
        run_id = latest_successful_run(airflow, dag_id)
        page.goto(f"{stack_settings.airflow_url}/dags/{dag_id}/runs?state=success")
        row = page.get_by_role("row").filter(
            has=page.get_by_role("link", name=run_id, exact=True))
        expect(row.get_by_text("Success", exact=True)).to_be_visible(timeout=UI_TIMEOUT)
        shot(page, screenshots, f"airflow_3_{dag_id}_runs")


def close_assistant(page: Any) -> None:
    """Fold MLflow's assistant side panel away (it hides part of the page in screenshots)."""
    close = page.get_by_role("button", name="Close")
    if close.count() == 1 and close.is_visible():
        close.click()


def test_mlflow_shows_the_experiments(journey, page, stack_settings, mlflow_client,
                                      screenshots) -> None:
    page.goto(f"{stack_settings.mlflow_tracking_uri}/#/experiments")
    for name in (stack_settings.search_experiment, stack_settings.etl_experiment):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible(
            timeout=UI_TIMEOUT)
    close_assistant(page)
    shot(page, screenshots, "mlflow_1_experiments")
    # the search experiment's training runs: the month's parent run (trials nest under it)
    experiment = mlflow_client.get_experiment_by_name(stack_settings.search_experiment)
    page.goto(f"{stack_settings.mlflow_tracking_uri}/#/experiments/"
              f"{experiment.experiment_id}/runs")
    expect(page.get_by_text(f"train-{journey.month}", exact=True).first).to_be_visible(
        timeout=UI_TIMEOUT)
    close_assistant(page)
    shot(page, screenshots, "mlflow_2_search_runs")


def test_mlflow_shows_the_champion_alias(journey, page, stack_settings, mlflow_client,
                                         screenshots) -> None:
    champion = registry.version_by_alias(mlflow_client, stack_settings.model_name,
                                         stack_settings.champion_alias)
    assert champion is not None
    page.goto(f"{stack_settings.mlflow_tracking_uri}/#/models/{stack_settings.model_name}")
    expect(page.get_by_text(stack_settings.model_name, exact=True).first).to_be_visible(
        timeout=UI_TIMEOUT)
    # the versions table shows the alias on the champion's row (rendered "@ champion")
    version_link = page.get_by_role("link", name=f"Version {champion.version}", exact=True)
    row = page.get_by_role("row").filter(has=version_link)
    expect(row.get_by_text(re.compile(rf"^@\s*{stack_settings.champion_alias}$"))).to_be_visible(
        timeout=UI_TIMEOUT)
    close_assistant(page)
    version_link.scroll_into_view_if_needed()  # newer challengers may list above it
    shot(page, screenshots, "mlflow_3_registered_model")


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
