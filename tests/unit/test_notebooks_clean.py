"""Committed notebooks are stripped (no outputs, no execution counts) and stay thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NBSTRIPOUT = Path(sys.executable).with_name("nbstripout")


def test_the_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"01_eda.ipynb", "02_model_analysis.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has outputs"
            assert cell.execution_count is None, f"cell {index} has an execution count"
        assert "execution" not in cell.metadata, f"cell {index} has execution timings"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.skipif(not NBSTRIPOUT.exists(), reason="nbstripout is not installed in the venv")
def test_nbstripout_would_change_nothing() -> None:
    result = subprocess.run([str(NBSTRIPOUT), "--verify", *map(str, NOTEBOOKS)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_parametrised(path: Path) -> None:
    """Logic lives in the package: no functions or classes are defined in a notebook."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and code.index(params[0]) == 0, "the first code cell is the parameters"
    assert "notebook_month()" in params[0].source
    for cell in code:
        source = "\n".join(line for line in cell.source.splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(source)
        defined = [n for n in ast.walk(tree)
                   if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        names = [n.name for n in defined]
        assert not defined, f"{path.name} defines {names}: move them to the package"


def test_gitattributes_routes_notebooks_through_nbstripout() -> None:
    text = (REPO / ".gitattributes").read_text()
    assert any(line.split()[:1] == ["*.ipynb"] and "filter=nbstripout" in line.split()
               for line in text.splitlines())
    git = subprocess.run(["git", "check-attr", "filter", "--", "notebooks/01_eda.ipynb"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    if git.returncode == 0:  # inside a git checkout
        assert git.stdout.strip().endswith("filter: nbstripout")
