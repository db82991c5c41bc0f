"""Compare every number of two results files (or two folders of them): the refactor check.

    python tools/compare_results.py OLD.json NEW.json [--tol 1e-6]
    python tools/compare_results.py results_old/ results_new/ --tol 1e-6

Walks both JSON trees in step and compares each numeric leaf found at the same path (times,
whether a number came from a cache, and other bookkeeping are skipped: see ``SKIP``). Prints the
count compared, the largest difference and every path that differs by more than ``--tol`` or
exists on one side only; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

#: keys whose values are bookkeeping (times, cache hits) or the papers' reported numbers, not results
SKIP = {"seconds", "train_seconds", "cached", "result_cached", "finished", "images_per_s", "history", "paper",
        "models"}


def walk(a, b, path: str, out: dict) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in SKIP:
                continue
            if k not in a or k not in b:
                out["one_side"].append(f"{path}/{k}")
                continue
            walk(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["one_side"].append(f"{path} (lengths {len(a)} vs {len(b)})")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        out["compared"] += 1
        d = abs(float(a) - float(b))
        if math.isnan(d):
            d = 0.0 if (math.isnan(float(a)) and math.isnan(float(b))) else math.inf
        out["max_diff"] = max(out["max_diff"], d)
        if d > out["tol"]:
            out["differ"].append(f"{path}: {a!r} vs {b!r}")
    elif a is None and b is None:
        return
    elif type(a) is not type(b) and not (a is None or b is None):
        out["differ"].append(f"{path}: {type(a).__name__} vs {type(b).__name__}")
    elif (a is None) != (b is None) and not (isinstance(a, str) or isinstance(b, str)):
        out["differ"].append(f"{path}: {a!r} vs {b!r}")


def compare(old: Path, new: Path, tol: float) -> dict:
    pairs = [(old, new)] if old.is_file() else [(p, new / p.name) for p in sorted(old.glob("*.json"))]
    out = {"compared": 0, "max_diff": 0.0, "differ": [], "one_side": [], "tol": tol, "files": []}
    for a, b in pairs:
        if not b.exists():
            out["one_side"].append(str(b))
            continue
        out["files"].append(a.name)
        walk(json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8")), a.name, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    out = compare(args.old, args.new, args.tol)
    print(f"files {out['files']}: {out['compared']} numbers compared, largest difference {out['max_diff']:.3g}, "
          f"{len(out['differ'])} differ by more than {args.tol:g}, {len(out['one_side'])} on one side only")
    for line in out["differ"][:40] + out["one_side"][:40]:
        print("  ", line)
    return 1 if out["differ"] else 0


if __name__ == "__main__":
    sys.exit(main())
