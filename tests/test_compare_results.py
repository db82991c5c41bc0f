"""tools/compare_results.py: every numeric leaf compared, bookkeeping skipped, differences named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from compare_results import compare  # noqa: E402


def test_compare_counts_numbers_and_names_differences(tmp_path):
    a = {"tables": {"t": {"map": 0.5, "ap": [0.1, 0.2]}, "seconds": 3.0}, "claims": [{"numbers": {"x": 1}}]}
    b = {"tables": {"t": {"map": 0.5 + 2e-6, "ap": [0.1, 0.2]}, "seconds": 9.0, "new": 1},
         "claims": [{"numbers": {"x": 1}}]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = compare(tmp_path / "a.json", tmp_path / "b.json", 1e-6)
    assert out["compared"] == 4  # map, ap[0], ap[1], x; seconds skipped
    assert out["differ"] == ["a.json/tables/t/map: 0.5 vs 0.500002"]
    assert out["one_side"] == ["a.json/tables/new"]
    assert compare(tmp_path / "a.json", tmp_path / "b.json", 1e-5)["differ"] == []
