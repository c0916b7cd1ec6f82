"""Unit tests read the committed sample of the exports, never ``../shared``."""

from __future__ import annotations

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
