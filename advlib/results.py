"""Tables, figures and claim verdicts written by the notebooks.

The default profile writes to ``results/`` and ``figures/``; every other profile writes to
``results/<profile>/`` and ``figures/<profile>/`` so a smoke run (CI) never overwrites the
reproduction. A results file holds, per table, our numbers, the paper's numbers, the attack specs
that produced every cell, and the paper's claims with verdicts computed from the same run.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advlib.profiles import PROJECT_ROOT


def output_dir(kind: str, profile: str) -> Path:
    """``results``/``figures`` directory for a profile (created)."""
    if kind not in ("results", "figures"):
        raise ValueError(f"kind must be 'results' or 'figures', got {kind!r}")
    base = Path(os.environ.get("ADVLIB_OUTPUT_ROOT", PROJECT_ROOT)) / kind
    d = base if profile == "default" else base / profile
    d.mkdir(parents=True, exist_ok=True)
    return d


def to_jsonable(obj: Any) -> Any:
    """Numbers, arrays, tensors, dataclasses, DataFrames -> JSON types (NaN/inf -> None)."""
    if hasattr(obj, "columns") and hasattr(obj, "index"):  # DataFrame: keep a meaningful index
        import pandas as pd

        if isinstance(obj.index, pd.RangeIndex):
            return to_jsonable(obj.to_dict(orient="records"))
        return {str(k): to_jsonable(v) for k, v in obj.to_dict(orient="index").items()}
    if hasattr(obj, "to_dict") and not isinstance(obj, dict):
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "__dataclass_fields__"):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(payload: dict, name: str, profile: str) -> Path:
    """Write ``results[/<profile>]/<name>`` atomically and return its path."""
    from advlib.cache import atomic_write_text  # not at the top: advlib.cache imports this module

    return atomic_write_text(output_dir("results", profile) / name,
                             json.dumps(to_jsonable(payload), indent=1, sort_keys=False) + "\n")


def save_figure(fig, name: str, profile: str, pdf: bool = False) -> Path:
    """Save a matplotlib figure as ``figures[/<profile>]/<name>.png`` (and ``.pdf``)."""
    d = output_dir("figures", profile)
    path = d / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if pdf:
        fig.savefig(d / f"{name}.pdf", bbox_inches="tight")
    return path


@dataclass
class Claim:
    """A paper's claim, the numbers of this run that test it, and the verdict they give."""

    claim: str
    holds: bool | None
    numbers: dict = field(default_factory=dict)
    source: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.holds is None:
            return "not tested"
        return "confirmed" if self.holds else "not confirmed"

    def to_dict(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, "numbers": to_jsonable(self.numbers),
                "source": self.source, "note": self.note}


def check(claim: str, holds, source: str = "", note: str = "", **numbers) -> Claim:
    """Make a :class:`Claim`; ``holds`` must be computed from ``numbers`` by the caller.

    ``holds`` may be a bool, a numpy bool, or ``None`` when the numbers are missing (NaN).
    """
    if any(isinstance(v, float) and math.isnan(v) for v in numbers.values()):
        holds = None
    return Claim(claim, None if holds is None else bool(holds), numbers, source, note)


def scorecard(claims: list[Claim]):
    """Claims as a DataFrame (claim, verdict, numbers) for display."""
    import pandas as pd

    rows = [{"claim": c.claim, "verdict": c.verdict,
             "numbers": ", ".join(f"{k}={_fmt(v)}" for k, v in c.numbers.items()), "source": c.source}
            for c in claims]
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
