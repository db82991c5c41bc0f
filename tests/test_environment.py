"""constraints.txt (what the Makefile installs) and environment.yml carry the same pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_constraints_and_environment_yml_agree():
    cons = _pins((ROOT / "constraints.txt").read_text().splitlines())
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert cons, "no pins found in constraints.txt"
    assert cons == env


def test_torch_pair_is_pinned_and_in_range():
    cons = _pins((ROOT / "constraints.txt").read_text().splitlines())
    assert "torch" in cons and "torchvision" in cons
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.4"' in text  # the library supports torch 2.4 upward
