"""The papers' claims, each tested on the numbers of one run.

A function per paper takes the tables the notebook computed and returns :class:`~advlib.results.Claim`
objects whose verdicts are computed here from those numbers (never typed in). Thresholds that the
papers state loosely ("collapses", "well below 1", "gracefully") are fixed in the claim's text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from advlib.results import Claim, check

TASK_ATTACKS = ("A_cls", "A_loc")


def _curve_at(curves: pd.DataFrame, kind: str, col: str, value) -> pd.Series:
    """mAP per (model, attack) of the rows of one sweep kind at ``col == value``."""
    d = curves[(curves["kind"] == kind) & np.isclose(curves[col].astype(float), float(value))]
    return d.groupby(["model", "attack"])["map"].mean()


def mtd_claims(table2: pd.DataFrame, fig3a: Mapping[str, Mapping[str, float]], mean_cosine: float,
               curves: pd.DataFrame, table5: pd.DataFrame, robust: Sequence[str] = ("CLS", "LOC", "CON", "MTD"),
               attacks: Sequence[str] = ("A_cls", "A_loc", "DAG", "RAP"), few_steps: int = 3,
               knn_accuracy: float | None = None) -> list[Claim]:
    """MTD (Zhang & Wang, ICCV 2019): the claims of Sections 3-5 on this run's numbers.

    Args:
        table2: models (``STD`` and ``robust``) × ``clean`` and ``attacks`` → mAP.
        fig3a: ``{"clean" | "A_cls" | "A_loc": {"accuracy", "mean_iou"}}`` on the STD model.
        mean_cosine: mean cosine of the two task gradients (Fig. 3b).
        curves: sweep rows with ``model``, ``attack``, ``kind`` (``steps`` | ``eps``), ``steps``,
            ``eps_px``, ``map``; models ``STD`` and robust ones.
        table5: the MTD row (index ``MTD``) under white-box columns and transfer columns (names
            containing ``from``).
        few_steps: "within a few steps" means after this many steps.
        knn_accuracy: Fig. 4's separability of the two task domains (k-NN accuracy of the task
            label); adds the claim that the domains overlap yet have distinct regions.
    """
    t = table2
    robust = list(robust)
    atk = [a for a in attacks if a in t.columns]
    clean = float(t.loc["STD", "clean"])
    avg = t.loc[robust, atk].mean(axis=1)
    claims = [
        check("STD collapses: A_cls and A_loc each leave < 15% of clean mAP",
              max(t.loc["STD", "A_cls"], t.loc["STD", "A_loc"]) < 0.15 * clean, source="MTD Table 2",
              clean=clean, A_cls=float(t.loc["STD", "A_cls"]), A_loc=float(t.loc["STD", "A_loc"])),
        check("Each task attack lowers both task metrics (Fig. 3a)",
              all(fig3a[a][k] < fig3a["clean"][k] for a in TASK_ATTACKS for k in ("accuracy", "mean_iou")),
              source="MTD Fig. 3a",
              **{f"{a}_{k}": float(fig3a[a][k]) for a in ("clean", *TASK_ATTACKS) for k in ("accuracy", "mean_iou")}),
        check("Task gradients are misaligned: mean cosine well below 1 (< 0.5)", mean_cosine < 0.5,
              source="MTD Fig. 3b", mean_cosine=float(mean_cosine)),
        check("Every robust model beats STD under every attack",
              bool((t.loc[robust, atk] > t.loc["STD", atk]).all().all()), source="MTD Table 2",
              **{f"min_margin_{a}": float((t.loc[robust, a] - t.loc["STD", a]).min()) for a in atk}),
        check("Every robust model loses clean mAP (the trade-off)",
              bool((t.loc[robust, "clean"] < clean).all()), source="MTD Table 2",
              **{f"clean_{m}": float(t.loc[m, "clean"]) for m in ["STD", *robust]}),
        check("CLS is more robust than LOC under A_cls while LOC keeps more clean mAP",
              t.loc["CLS", "A_cls"] > t.loc["LOC", "A_cls"] and t.loc["LOC", "clean"] > t.loc["CLS", "clean"],
              source="MTD Table 2", CLS_A_cls=float(t.loc["CLS", "A_cls"]), LOC_A_cls=float(t.loc["LOC", "A_cls"]),
              CLS_clean=float(t.loc["CLS", "clean"]), LOC_clean=float(t.loc["LOC", "clean"])),
        check("MTD has the best (or within 2 points of the best) average over attacks, and beats CON",
              avg["MTD"] >= avg.max() - 0.02 and avg["MTD"] > avg["CON"], source="MTD Table 2",
              **{f"avg_{m}": float(avg[m]) for m in robust}),
    ]
    claims.append(_graceful_claim(curves, clean, few_steps))
    white = [c for c in table5.columns if "from" not in c]
    moved = [c for c in table5.columns if "from" in c]
    wb = float(table5.loc["MTD", [c for c in white if c != "clean"]].mean())
    tr = float(table5.loc["MTD", moved].mean())
    claims.append(check("Transferred attacks hurt the MTD model less than white-box ones", tr > wb,
                        source="MTD Table 5", white_box_mean=wb, transferred_mean=tr))
    if knn_accuracy is not None:
        claims.append(check("The two task domains overlap but have distinct regions: "
                            "0.6 < k-NN accuracy of the task label < 0.95", 0.6 < knn_accuracy < 0.95,
                            source="MTD Fig. 4", knn_accuracy=float(knn_accuracy)))
    return claims


def _graceful_claim(curves: pd.DataFrame, std_clean: float, few_steps: int) -> Claim:
    """Fig. 5/6: STD keeps < 15% of clean mAP after ``few_steps`` steps (either task attack), while
    the robust models keep > 50% of their 1-step mAP at the longest attack and of their smallest-ε
    mAP at the largest ε."""
    steps = curves[curves["kind"] == "steps"]
    eps = curves[curves["kind"] == "eps"]
    k_max = int(steps["steps"].max())
    few = min(few_steps, k_max)
    std_few = _curve_at(curves, "steps", "steps", few).xs("STD", level="model")
    std_ratio = float(std_few.max() / max(std_clean, 1e-9))
    rob = lambda s: s[s.index.get_level_values("model") != "STD"]  # noqa: E731
    keep_steps = float((rob(_curve_at(curves, "steps", "steps", k_max)) / rob(_curve_at(curves, "steps", "steps", 1))).mean())
    e_lo, e_hi = float(eps["eps_px"].min()), float(eps["eps_px"].max())
    keep_eps = float((rob(_curve_at(curves, "eps", "eps_px", e_hi)) / rob(_curve_at(curves, "eps", "eps_px", e_lo))).mean())
    return check("Robust models degrade gracefully with steps and ε while STD falls within a few steps",
                 std_ratio < 0.15 and keep_steps > 0.5 and keep_eps > 0.5, source="MTD Figs. 5-6",
                 **{f"std_map_after_{few}_steps_over_clean": std_ratio,
                    f"robust_map_{k_max}_over_1_steps": keep_steps,
                    f"robust_map_eps{e_hi:g}_over_eps{e_lo:g}": keep_eps})


def mean_std_table(rows: pd.DataFrame | list[dict], index: str = "model", columns: str = "attack",
                   values: str = "map") -> pd.DataFrame:
    """Seed-variance table: ``mean ± std`` (sample std over the seeds) per index × column, plus
    the number of seeds as ``n``."""
    df = pd.DataFrame(rows)
    g = df.groupby([index, columns])[values]
    mean, std, n = g.mean().unstack(), g.std(ddof=1).unstack(), g.count().unstack()
    order_i = list(dict.fromkeys(df[index]))
    order_c = list(dict.fromkeys(df[columns]))
    out = mean.loc[order_i, order_c].round(3).astype(str) + " ± " + std.loc[order_i, order_c].round(3).astype(str)
    out["n"] = n.loc[order_i].min(axis=1)
    return out


__all__ = ["mean_std_table", "mtd_claims"]
