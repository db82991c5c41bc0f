"""Notebooks: each ``notebooks/NN_*.py`` (jupytext percent, what people edit) has an output-free
``NN_*.ipynb`` beside it (what papermill and nbval run) with the same cells (``make notebooks``
syncs them); every notebook has a papermill ``parameters`` cell with the common parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
REQUIRED = {"profile", "data_root", "data_format", "classes", "device", "seed",
            "train_split", "test_split", "year", "image_size"}
SYNC_HINT = "run `make notebooks` after editing notebooks/*.py (the .py files are the sources)"


def _read(path: Path):
    return jupytext.read(path, fmt="py:percent") if path.suffix == ".py" else nbformat.read(path, as_version=4)


def _is_parameters(cell) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def test_there_are_notebooks():
    assert NOTEBOOKS and SOURCES


def test_every_notebook_has_a_source_and_vice_versa():
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in SOURCES}, SYNC_HINT


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_pair_in_sync(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), SYNC_HINT
    src, nb = _read(path), _read(ipynb)

    def cells(n):
        return [(c.cell_type, c.source, _is_parameters(c)) for c in n.cells]

    assert cells(nb) == cells(src), SYNC_HINT
    for c in nb.cells:  # the .ipynb stay output-free: executed copies go to notebooks/executed/
        assert not c.get("outputs") and c.get("execution_count") is None, f"{ipynb.name} holds outputs"
    assert "jupytext" not in nb.metadata, SYNC_HINT


@pytest.mark.parametrize("path", NOTEBOOKS + SOURCES, ids=lambda p: p.name)
def test_parameters_cell(path):
    nb = _read(path)
    cells = [c for c in nb.cells if _is_parameters(c)]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    names = {t.id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    assert REQUIRED <= names, f"missing parameters: {REQUIRED - names}"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cells[0], "the parameters cell must be the first code cell"
    for c in nb.cells:
        assert not any(o.get("output_type") == "error" for o in c.get("outputs", []))
