"""Unit tests read the committed sample of the exports, never ``../shared``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURE_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "chicago"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``tests/fixtures/chicago``: the real exports' layout and rows, a few thousand per month.

    Overrides the top-level fixture of the same name (the full exports in ``../shared``, for
    the integration and end-to-end tests), so the unit tests run on a fresh clone with no
    ``../shared`` and no ``CHICAGO_DATA_DIR``. ``scripts/make_test_fixtures.py`` regenerates
    the sample from the full exports.
    """
    return FIXTURE_DATA


@pytest.fixture(scope="module", autouse=True)
def _no_prediction_log() -> Iterator[None]:
    """Apps built by unit tests log no prediction: a developer's ``.env`` names the native
    stack's monitoring database, which unit tests must not write to. The prediction log's own
    unit tests pass their settings or sink explicitly.

    Per module, not per session: ``make test`` runs the integration tests in the same process
    after the unit tests, and a `stack up` they start must not inherit the switch (it restarted
    the stack's API with the log off)."""
    saved = os.environ.get("PREDICTION_LOG_ENABLED")
    os.environ["PREDICTION_LOG_ENABLED"] = "false"
    yield
    if saved is None:
        os.environ.pop("PREDICTION_LOG_ENABLED", None)
    else:
        os.environ["PREDICTION_LOG_ENABLED"] = saved
