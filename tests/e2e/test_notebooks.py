"""Both notebooks run headlessly (nbclient) against the running native stack, cell by cell.

Needs the lake to hold the month's ETL outputs and MLflow a ``champion`` (what ``make demo``
and the end-to-end journey produce). The month is ``$NOTEBOOK_MONTH`` (default 2018-06); the
executed notebooks, outputs included, are written to ``artifacts/notebooks/`` (gitignored).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from chicago_crime import layout
from chicago_crime.model import analysis, registry

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
EXECUTED = REPO / "artifacts" / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT = 600
#: Figures each notebook must draw (a notebook that silently skips its plots fails).
MIN_FIGURES = {"01_eda.ipynb": 8, "02_model_analysis.ipynb": 5}
_PROBE = "import sys; print(sys.executable)"


def _missing(month: str, settings: Any) -> str | None:
    """What the notebooks need and the stack lacks (None when everything is there)."""
    from chicago_crime.lake import Lake

    lake = Lake(settings=settings)
    if not lake.exists(layout.enriched_key(month)):
        return f"{lake.uri(layout.enriched_key(month))} is missing"
    client = registry.client_for(settings)
    if registry.version_by_alias(client, settings.model_name, settings.champion_alias) is None:
        return f"{settings.model_name} has no champion"
    return None


@pytest.fixture(scope="module")
def month(request: pytest.FixtureRequest, stack_settings: Any) -> str:
    """The month under test, with its ETL outputs in the lake and a champion in MLflow.

    When they are missing and the month is the demo's, the end-to-end journey (session fixture
    ``journey`` of tests/e2e/conftest.py, shared with test_journey.py) produces them; otherwise
    the test fails early with what is missing.
    """
    month = analysis.notebook_month()
    problem = _missing(month, stack_settings)
    if (problem is not None and month == analysis.DEFAULT_MONTH  # the demo's month
            and request.getfixturevalue("journey").month == month):
        problem = _missing(month, stack_settings)
    if problem is not None:
        pytest.fail(f"{problem}: run the ETL and training for {month} first "
                    "(make demo does 2018-06)")
    return month


@pytest.fixture(scope="module")
def kernel_name() -> str:
    """The venv's ``python3`` kernel: jupyter_client starts kernelspecs whose argv[0] is
    ``python`` with this interpreter (checked again inside each run)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.argv[0] in {"python", "python3", sys.executable}, spec.argv
    return KERNEL


def execute(name: str, kernel_name: str, month: str) -> tuple[nbformat.NotebookNode, str]:
    """Run a notebook of ``notebooks/`` (as cwd) for ``month``, save the executed copy and
    return it with the interpreter that ran it."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    EXECUTED.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(analysis.MONTH_ENV)
    os.environ[analysis.MONTH_ENV] = month  # the kernel inherits the environment
    try:
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(analysis.MONTH_ENV, None)
        else:
            os.environ[analysis.MONTH_ENV] = previous
        probe = nb.cells.pop()
        nbformat.write(nb, EXECUTED / name)  # also when a cell failed: to see where
    interpreter = "".join(o.get("text", "") for o in probe.outputs
                          if o.output_type == "stream").strip()
    return nb, interpreter


def stream_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.output_type == "stream")


def figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.parametrize("name", sorted(MIN_FIGURES))
def test_notebook_runs_against_the_stack(name: str, kernel_name: str, month: str) -> None:
    nb, interpreter = execute(name, kernel_name, month)
    assert Path(interpreter) == Path(sys.executable), \
        f"the notebook ran on {interpreter!r}, not on this venv's {sys.executable}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a code cell was not executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert figures(nb) >= MIN_FIGURES[name], f"{name} drew {figures(nb)} figures"
    assert f"month {month}" in stream_text(nb)  # the parameter reached the kernel
    assert (EXECUTED / name).is_file()
