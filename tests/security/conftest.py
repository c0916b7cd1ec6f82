"""The hostile suite: attacks on the running native stack (``make local-up``; ``make test`` and
``make test-security`` start it). Every test plays a caller without credentials, with the
well-known default ones, or with another service's, and asserts it is refused; a positive
control next to each refusal proves the door exists and the right key opens it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]


def _gen_secrets() -> ModuleType:
    path = REPO / "scripts" / "gen_secrets.py"
    spec = importlib.util.spec_from_file_location("gen_secrets", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def generated_secrets() -> dict[str, str]:
    """Every generated secret of .env, by name (the values no output may ever show)."""
    env = dotenv_values(REPO / ".env")
    values = {name: env.get(name) or "" for name in _gen_secrets().GENERATORS}
    missing = [name for name, value in values.items() if len(value) < 16]
    assert not missing, f"secrets not generated in .env: {missing}"
    return values


@pytest.fixture(scope="session")
def no_secret(generated_secrets: dict[str, str]) -> Callable[[str, str], None]:
    """``no_secret(text, where)`` fails naming every secret whose value ``text`` shows."""

    def check(text: str, where: str) -> None:
        leaked = [name for name, value in generated_secrets.items() if value in text]
        assert not leaked, f"{where} shows the value of {', '.join(leaked)}"

    return check
