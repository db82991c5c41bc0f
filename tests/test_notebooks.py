"""Every notebook has a papermill `parameters` cell with the common parameters, and no stored errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED = {"profile", "data_root", "data_format", "classes", "device", "seed"}


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell(path):
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    code = "".join(cells[0]["source"])
    names = {t.id for node in ast.parse(code).body if isinstance(node, ast.Assign) for t in node.targets
             if isinstance(t, ast.Name)}
    assert REQUIRED <= names, f"missing parameters: {REQUIRED - names}"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first_code is cells[0], "the parameters cell must be the first code cell"
    for c in nb["cells"]:
        assert not any(o.get("output_type") == "error" for o in c.get("outputs", []))
