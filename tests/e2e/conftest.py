"""End-to-end fixtures: the demo's journey (once per session), stack clients, a real browser.

The native stack must run and replay ``../shared/data/chicago``
(``make local-up DATA=../shared/data/chicago``; ``make test`` does it). The journey is exactly
``make demo``'s path: :func:`chicago_crime.devtools.demo.run_demo` for :data:`MONTH`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chicago_crime.config import Settings
from chicago_crime.devtools.airflow_api import Airflow, connect
from chicago_crime.lake import Lake
from chicago_crime.model import registry

MONTH = "2018-06"
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
# No internet here: keep Chromium from phoning home (and from waiting on it).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser checks last: they look at what the journey left behind."""
    items.sort(key=lambda item: item.path.name == "test_browser.py")


@dataclass
class Journey:
    """What ``run_demo`` produced, as the tests need it."""

    month: str
    model: dict[str, Any]
    seconds: float


@pytest.fixture(scope="session")
def journey(stack_settings: Settings) -> Journey:
    """Run the demo's journey once: ETL for MONTH -> asset-triggered training -> served champion."""
    from chicago_crime.devtools import demo

    started = time.monotonic()
    model = demo.run_demo(MONTH, stack_settings)
    return Journey(month=MONTH, model=model, seconds=time.monotonic() - started)


@pytest.fixture(scope="session")
def airflow(stack_settings: Settings) -> Airflow:
    return connect(stack_settings)


@pytest.fixture(scope="session")
def lake(stack_settings: Settings) -> Lake:
    return Lake(settings=stack_settings)


@pytest.fixture(scope="session")
def mlflow_client(stack_settings: Settings) -> Any:
    return registry.client_for(stack_settings)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Folder of the browser checks' screenshots (gitignored), for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (Playwright's own download needs internet)."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") if not Path(CHROMIUM).exists() else CHROMIUM
    if not executable:
        pytest.fail(f"{CHROMIUM} not found: run `make install-browser` (Debian chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, stack_settings: Settings) -> Iterator[Any]:
    """A fresh browser context and page per test (generous timeouts: a busy 2-core box).

    MLflow's UI asks for a login (basic auth): the browser answers with the admin's."""
    password = stack_settings.mlflow_admin_password
    credentials = {"username": stack_settings.mlflow_admin_username,
                   "password": password.get_secret_value() if password else ""}
    context = chromium.new_context(viewport={"width": 1440, "height": 900},
                                   http_credentials=credentials)
    context.set_default_timeout(30_000)
    context.set_default_navigation_timeout(60_000)
    page = context.new_page()
    yield page
    context.close()
