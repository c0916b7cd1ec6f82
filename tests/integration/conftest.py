"""Integration tests: order. The self-healing tests kill services the others use and need the
champion ``test_train_dag`` registers, so they run after every other integration test."""

from __future__ import annotations

import pytest

LAST = "test_self_healing.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    moved = [item for item in items if item.path.name == LAST]
    if not moved:
        return
    rest = [item for item in items if item.path.name != LAST]
    integration = [n for n, item in enumerate(rest) if "integration" in item.path.parts]
    at = integration[-1] + 1 if integration else len(rest)
    items[:] = [*rest[:at], *moved, *rest[at:]]
