"""Tables, figures and claim verdicts written by the notebooks.

The reproduction (default profile, generated data) writes to ``results/`` and ``figures/``;
every other run writes to a folder of its own below them (``results/smoke/``, and for a user's
dataset ``results/<data-folder>-<hash>/`` plus ``/<profile>`` for a non-default profile), so
nothing overwrites the committed reproduction. A results file holds, per table, our numbers,
the paper's numbers (:class:`Reported`), the attack specs that produced every cell, and the
paper's claims with verdicts computed from the same run. Paths are stored relative to the
project root (:func:`display_path`): nothing committed names a machine's folders.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advlib.paths import PROJECT_ROOT


def output_dir(kind: str, run: str = "") -> Path:
    """The ``results``/``figures`` folder of a run (created): the top folder for the reproduction
    (``run`` empty or ``"default"``), else ``<kind>/<run>`` (e.g. ``smoke``, ``myvoc-1a2b3c4d``)."""
    if kind not in ("results", "figures"):
        raise ValueError(f"kind must be 'results' or 'figures', got {kind!r}")
    if run and (Path(run).is_absolute() or ".." in Path(run).parts):
        raise ValueError(f"run folder must be a relative name, got {run!r}")
    base = Path(os.environ.get("ADVLIB_OUTPUT_ROOT", PROJECT_ROOT)) / kind
    d = base if run in ("", "default") else base / run
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


def save_json(payload: dict, name: str, run: str = "") -> Path:
    """Write ``results[/<run>]/<name>`` atomically and return its path."""
    from advlib.cache import atomic_write_text  # not at the top: advlib.cache imports this module

    return atomic_write_text(output_dir("results", run) / name,
                             json.dumps(to_jsonable(payload), indent=1, sort_keys=False) + "\n")


def save_figure(fig, name: str, run: str = "", pdf: bool = False) -> Path:
    """Save a matplotlib figure as ``figures[/<run>]/<name>.png`` (and ``.pdf``)."""
    d = output_dir("figures", run)
    path = d / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if pdf:
        fig.savefig(d / f"{name}.pdf", bbox_inches="tight")
    return path


@dataclass
class Claim:
    """A paper's claim, the numbers of this run that test it, and the verdict they give.

    ``holds`` is ``None`` when the run cannot test the claim: numbers missing (NaN), or the data
    does not allow it (``untestable`` gives the reason, see :func:`gate_claims`).
    """

    claim: str
    holds: bool | None
    numbers: dict = field(default_factory=dict)
    source: str = ""
    note: str = ""
    untestable: str = ""

    @property
    def verdict(self) -> str:
        if self.untestable:
            return "not testable on this data"
        if self.holds is None:
            return "not tested"
        return "confirmed" if self.holds else "not confirmed"

    def to_dict(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, "numbers": to_jsonable(self.numbers),
                "source": self.source, "note": self.untestable or self.note}


def check(claim: str, holds, source: str = "", note: str = "", **numbers) -> Claim:
    """Make a :class:`Claim`; ``holds`` must be computed from ``numbers`` by the caller.

    ``holds`` may be a bool, a numpy bool, or ``None`` when the numbers are missing (NaN).
    """
    if any(isinstance(v, float) and math.isnan(v) for v in numbers.values()):
        holds = None
    return Claim(claim, None if holds is None else bool(holds), numbers, source, note)


def gate_claims(claims: list[Claim], clean_map: float, floor: float) -> list[Claim]:
    """Mark every claim "not testable on this data" when the STD model's clean mAP is below
    ``floor`` (a profile setting; the smoke profile's untrained model sits far below it):
    comparisons of attacked models, and the analyses behind them, are noise on a detector that
    detects nothing. The numbers are kept; the reason names both values."""
    if clean_map >= floor:
        return claims
    reason = f"STD clean mAP {clean_map:.3f} is below the floor {floor:.2f} of this profile"
    return [Claim(c.claim, None, c.numbers, c.source, c.note, reason) for c in claims]


@dataclass(frozen=True)
class Reported:
    """A paper's reported table as data: rows × columns of numbers, where they come from and the
    setting they were measured in.

    Attributes:
        source: e.g. ``"MTD Table 2"``.
        setting: the paper's setting in words (dataset, model, ε).
        dataset: short dataset name for column labels (``"VOC07"``).
        values: ``{row: {column: number}}`` as printed in the paper.
        scale: what to divide the printed numbers by for mAP in ``[0, 1]`` (100 for percent).
    """

    source: str
    setting: str
    dataset: str
    values: dict
    scale: float = 1.0

    @property
    def label(self) -> str:
        """Column-group label beside our numbers, e.g. ``paper (VOC07)``."""
        return f"paper ({self.dataset})"

    def frame(self):
        """The table as a DataFrame in ``[0, 1]`` units (rows in the paper's order)."""
        import pandas as pd

        return pd.DataFrame.from_dict(self.values, orient="index") / self.scale

    def to_dict(self) -> dict:
        return {"source": self.source, "setting": self.setting, "dataset": self.dataset,
                "values": self.frame().to_dict(orient="index")}


def mean_std_table(rows, index: str = "model", columns: str = "attack", values: str = "map"):
    """Seed-variance table: ``mean ± std`` (sample std over the seeds) per index × column, plus
    the number of seeds as ``n``."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby([index, columns])[values]
    mean, std, n = g.mean().unstack(), g.std(ddof=1).unstack(), g.count().unstack()
    order_i, order_c = list(dict.fromkeys(df[index])), list(dict.fromkeys(df[columns]))
    m, sd = mean.loc[order_i, order_c], std.loc[order_i, order_c]
    # formatted cell by cell (pandas 3's astype(str) keeps NaN missing); one seed has no spread
    out = pd.DataFrame([[("nan" if pd.isna(a) else str(round(float(a), 3))) + ("" if pd.isna(b) else f" ± {round(float(b), 3)}")
                         for a, b in zip(m.loc[i], sd.loc[i])] for i in order_i], index=m.index, columns=m.columns)
    out["n"] = n.loc[order_i].min(axis=1)
    return out


def mean_over(frame, columns):
    """Per row, the mean of ``columns`` (a row missing one of them is NaN: its mean would not be
    comparable with the other rows'): the papers' "mean adversarial mAP"."""
    return frame[list(columns)].astype(float).mean(axis=1, skipna=False)


def scorecard(claims: list[Claim]):
    """Claims as a DataFrame (claim, verdict, numbers) for display."""
    import pandas as pd

    rows = [{"claim": c.claim, "verdict": c.verdict,
             "numbers": ", ".join(f"{k}={_fmt(v)}" for k, v in c.numbers.items()), "source": c.source}
            for c in claims]
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------ README blocks
def readme_block(n: dict[str, int], heatmap: str, scorecard: str) -> str:
    """The README's cross-method section body (between the ``matrix`` markers): the heat-map and
    the scorecard's counts (``confirmed``, ``not confirmed``, ``not testable on this data``, ``total``)."""
    return (f"![The cross-method matrix]({heatmap})\n\n"
            f"Scorecard ([{scorecard}]({scorecard})): **{n['total']} claims of notebooks 01-05 and 06: "
            f"{n['confirmed']} confirmed, {n['not confirmed']} not confirmed, "
            f"{n['not testable on this data']} not testable on this data.**\n")


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced
    by ``body``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pat.search(text):
        raise ValueError(f"no {start} ... {end} block to replace")
    return pat.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text, count=1)
