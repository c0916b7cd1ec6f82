"""Integration tests: order. ``test_train_dag`` runs first: its manual training registers the
champion that the governance, monitoring and self-healing tests need (without it the first of
them would train one through the demo, a second ~3.5 min training). The self-healing tests kill
services the others use, so they run after every other integration test."""

from __future__ import annotations

import pytest

FIRST = "test_train_dag.py"
LAST = "test_self_healing.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def integration(item: pytest.Item) -> bool:
        return "integration" in item.path.parts

    first = [item for item in items if item.path.name == FIRST]
    last = [item for item in items if item.path.name == LAST]
    rest = [item for item in items if item.path.name not in (FIRST, LAST)]
    positions = [n for n, item in enumerate(rest) if integration(item)]
    start = positions[0] if positions else len(rest)
    end = positions[-1] + 1 if positions else len(rest)
    items[:] = [*rest[:start], *first, *rest[start:end], *last, *rest[end:]]
