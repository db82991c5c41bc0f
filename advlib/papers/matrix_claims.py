"""Notebook 06's scorecard and reading: every claim of notebooks 01-05 gathered from their results
files, the matrix's own cross-method claims (thresholds fixed here, before the run), the counts,
the ``SCORECARD.md`` rendering, the README block, and a short reading of the matrix written from
its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from advlib.papers.cwat_claims import seed_spread as cwat_seed_spread
from advlib.papers.matrix import ADAPTIVE, NOT_IN_MEAN, mean_adversarial
from advlib.results import Claim, check

#: notebook number -> paper
PAPERS = {"01": "MTD", "02": "CWAT", "03": "RobustDet", "04": "AdvAmd", "05": "RAD"}
VERDICTS = ("confirmed", "not confirmed", "not testable on this data")
#: an adversarially trained row must beat STD's mean adversarial mAP by this much (5 points)
GAIN = 0.05
#: the models that are not adversarially trained detectors
NOT_ADV_TRAINED = ("STD", *ADAPTIVE)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def collect(folder: Path, profile_name: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every claim in ``folder/NN_*.json`` for the notebooks of :data:`PAPERS`: a frame (paper,
    notebook, claim, verdict, numbers, source, note) and each notebook's status (``ok``,
    ``missing``: no results file, ``other profile``: written by another profile, not used)."""
    rows, status = [], {}
    for nn, paper in PAPERS.items():
        files = sorted(Path(folder).glob(f"{nn}_*.json"))
        if not files:
            status[nn] = "missing"
            continue
        data = json.loads(files[0].read_text())
        prof = (data.get("profile") or {}).get("name")
        if prof != profile_name:
            status[nn] = f"other profile ({prof})"
            continue
        status[nn] = "ok"
        rows.append(card_rows(data.get("claims", []), paper, nn))
    return pd.concat(rows, ignore_index=True) if rows else card_rows([], "", ""), status


def card_rows(claims: list[dict], paper: str, notebook: str) -> pd.DataFrame:
    """Scorecard rows (paper, notebook, claim, verdict, numbers, source, note) of claims as
    :meth:`~advlib.results.Claim.to_dict` writes them ("not tested" counts as not testable)."""
    rows = [{"paper": paper, "notebook": notebook, "claim": c["claim"],
             "verdict": "not testable on this data" if c["verdict"] == "not tested" else c["verdict"],
             "numbers": ", ".join(f"{k}={_fmt(v)}" for k, v in (c.get("numbers") or {}).items()),
             "source": c.get("source", ""), "note": c.get("note", "")} for c in claims]
    return pd.DataFrame(rows, columns=["paper", "notebook", "claim", "verdict", "numbers", "source", "note"])


def counts(card: pd.DataFrame) -> dict[str, int]:
    """Claims per verdict (:data:`VERDICTS`, zeros kept) and ``total``."""
    out = {v: int((card["verdict"] == v).sum()) for v in VERDICTS}
    out["total"] = int(len(card))
    return out


def claims(mean: pd.DataFrame, spread: float) -> list[Claim]:
    """The matrix's cross-method claims, from the mean (over seeds) matrix:

    1. RobustDet's robustness bottleneck, across every method: each adversarially trained SSD has a
       lower clean mAP than STD.
    2. Adversarial training buys robustness, across every method: each beats STD's mean
       adversarial mAP by at least :data:`GAIN`.
    3. RobustDet (its Table 1, against MTD and CWAT): RobustDet or RobustDet* has the highest mean
       adversarial mAP of the adversarially trained SSDs. ``spread`` (the largest seed std of a
       row's mean adversarial mAP) is reported beside the margin.
    """
    adv = mean_adversarial(mean)
    clean = mean["clean"].astype(float)
    trained = [m for m in mean.index if m not in NOT_ADV_TRAINED and pd.notna(adv.get(m))]
    std_clean, std_adv = float(clean.get("STD", float("nan"))), float(adv.get("STD", float("nan")))
    out = []
    def within(margin: float, what: str) -> str:  # say so where a margin is inside the seed noise
        return (f"{what} {margin:.3f} is smaller than the seed spread {spread:.3f}"
                if pd.notna(spread) and pd.notna(margin) and abs(margin) < spread else "")
    drops = {m: round(std_clean - float(clean[m]), 4) for m in trained}
    smallest = min(drops.values()) if drops else float("nan")
    out.append(check("Robustness bottleneck: every adversarially trained SSD has a lower clean mAP than STD",
                     all(d > 0 for d in drops.values()) if trained else None, "RobustDet §1 / Table 1",
                     within(smallest, f"the smallest drop ({min(drops, key=drops.get) if drops else '-'})"),
                     STD_clean=std_clean, models=len(trained), lower=sum(d > 0 for d in drops.values()),
                     smallest_drop=smallest))
    gains = {m: float(adv[m]) - std_adv for m in trained}
    least = min(gains.values()) if gains else float("nan")
    out.append(check(f"Adversarial training pays: every adversarially trained SSD beats STD's mean adversarial mAP "
                     f"by at least {GAIN * 100:g} points", all(g >= GAIN for g in gains.values()) if trained else None,
                     "MTD / CWAT / RobustDet / AdvAmd tables",
                     within(least - GAIN, f"the smallest gain's distance to the threshold ({min(gains, key=gains.get) if gains else '-'})"),
                     STD_mean_adv=std_adv, models=len(trained), at_least=sum(g >= GAIN for g in gains.values()),
                     smallest_gain=least))
    rd = [m for m in ("RobustDet", "RobustDet*") if m in trained]
    others = [m for m in trained if m not in rd]
    if rd and others:
        best_rd, best_other = max(rd, key=lambda m: adv[m]), max(others, key=lambda m: adv[m])
        margin = float(adv[best_rd] - adv[best_other])
        note = (f"the margin {margin:.3f} is smaller than the seed spread {spread:.3f}"
                if pd.notna(spread) and abs(margin) < spread else "")
        out.append(check("RobustDet or RobustDet* has the highest mean adversarial mAP of the adversarially trained SSDs",
                         margin > 0, "RobustDet Table 1", note, best_robustdet=best_rd,
                         best_robustdet_adv=float(adv[best_rd]), best_other=best_other,
                         best_other_adv=float(adv[best_other]), margin=margin, seed_spread=spread))
    else:
        out.append(Claim("RobustDet or RobustDet* has the highest mean adversarial mAP of the adversarially trained SSDs",
                         None, {"robustdet_rows": len(rd), "other_rows": len(others)}, "RobustDet Table 1",
                         "needs RobustDet and another adversarially trained row"))
    return out


def seed_spread(rows: list[dict]) -> float:
    """The largest, over rows with several seeds, sample std over seeds of the row's mean over the
    attack columns (NaN when no row has two seeds)."""
    df = pd.DataFrame(rows, columns=["seed", "model", "attack", "map"])
    several = df.groupby("model")["seed"].nunique() > 1
    df = df[df["model"].isin(several[several].index)]
    return cwat_seed_spread(df, sorted(set(df["attack"]) - set(NOT_IN_MEAN))) if len(df) else float("nan")


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a GitHub markdown table (pipes in cells escaped; no extra dependency)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    sep = "|" + "---|" * len(frame.columns)
    return "\n".join([head, sep, *("| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False))])


def render(card: pd.DataFrame, status: dict[str, str], profile_name: str) -> str:
    """``SCORECARD.md``: the counts, each notebook's status, and every claim with its numbers."""
    n = counts(card)
    lines = [f"# Reproduction scorecard ({profile_name} profile)", "",
             "Generated by `notebooks/06_cross_method_matrix.ipynb` (`make reproduce`) from the claims in "
             "`results/0N_*.json`; every verdict was computed by its notebook from that run's numbers.", "",
             f"**{n['total']} claims: {n['confirmed']} confirmed, {n['not confirmed']} not confirmed, "
             f"{n['not testable on this data']} not testable on this data.**", ""]
    missing = {nn: s for nn, s in status.items() if s != "ok"}
    if missing:
        lines += ["Not included: " + "; ".join(f"notebook {nn} ({PAPERS[nn]}): {s}" for nn, s in missing.items()), ""]
    lines.append(markdown_table(card[["paper", "claim", "verdict", "numbers", "note"]]))
    return "\n".join(lines) + "\n"


def reading(mean: pd.DataFrame, front: pd.Series, spread: float) -> str:
    """A short reading of the matrix, every figure taken from ``mean`` (models × attacks, over
    seeds), the Pareto ``front`` and the seed ``spread``."""
    adv = mean_adversarial(mean).dropna()
    if adv.empty or "STD" not in adv.index:
        return "Too few rows to read the matrix (STD and a complete row are needed)."
    attack_cols = [c for c in mean.columns if c not in ("clean", "adaptive")]
    rows = list(adv.index)
    col_mean = mean.loc[rows, attack_cols].astype(float).mean(axis=0)
    white = adv.drop(["STD", *ADAPTIVE], errors="ignore")  # rows whose columns are white-box
    best = white.idxmax() if len(white) else "STD"
    clean = mean["clean"].astype(float)
    lines = [f"- **Most robust row** (white-box columns): {best}, mean adversarial mAP {adv[best]:.3f} against "
             f"STD's {adv['STD']:.3f}; its clean mAP {clean[best]:.3f} (STD {clean['STD']:.3f}).",
             f"- **Strongest attack** (lowest mean over the {len(rows)} complete rows): {col_mean.idxmin()} "
             f"({col_mean.min():.3f}); weakest: {col_mean.idxmax()} ({col_mean.max():.3f}).",
             f"- **Pareto front** (clean against mean adversarial mAP, white-box rows): {', '.join(front[front].index)}."]
    if "adaptive" in mean.columns:
        for m in (m for m in ADAPTIVE if m in mean.index and pd.notna(mean.loc[m, "adaptive"])):
            grey = [c for c in attack_cols if "PGD" in c and "A_cls" in c]
            if grey:
                lines.append(f"- **{m}** (grey-box columns, off the front): {grey[0]} crafted on the detector it "
                             f"protects leaves {mean.loc[m, grey[0]]:.3f} mAP; the same attack through the reformer "
                             f"leaves {mean.loc[m, 'adaptive']:.3f} (STD's white-box {mean.loc['STD', grey[0]]:.3f}).")
    lines.append(f"- **Seed spread:** the largest std over seeds of a row's mean adversarial mAP is "
                 f"{spread:.3f}; differences between rows smaller than that are within seed noise."
                 if pd.notna(spread) else "- **Seed spread:** no row has two seeds in this run.")
    return "\n".join(lines)
