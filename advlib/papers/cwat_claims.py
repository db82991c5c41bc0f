"""CWAT's reported numbers and claims (Chen, Kung & Chen, CVPRW 2021): Tables 1-5 and Appendix B
as data, the helpers its claims are computed with, and the claims as functions from this run's
numbers to verdicts. The paper prints mAP in [0, 1]. Its recipes and analyses are in
:mod:`advlib.papers.cwat`, which re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from advlib.results import Claim, Reported, check, mean_over

SOURCE = "CWAT (Chen, Kung & Chen, CVPRW 2021)"
#: the attack columns of Tables 1, 4 and 5 (Table 2 has no DAG)
ADV_COLUMNS = ("FGSM A_cls", "FGSM A_reg", "PGD-10 A_cls", "PGD-10 A_reg", "CWA", "DAG")
COLUMNS = ("clean", *ADV_COLUMNS)


# -------------------------------------------------------------------------- reported numbers
def _rows(rows: Mapping[str, Sequence], columns: Sequence[str] = COLUMNS) -> dict:
    """``{row: {column: value}}`` from value tuples in ``columns`` order; ``None`` ("-") is omitted."""
    return {r: {c: v for c, v in zip(columns, vals, strict=True) if v is not None} for r, vals in rows.items()}


_VOC = "VOC07 test, SSD VGG16-BN, ε = 8"
TABLE1 = Reported("CWAT Table 1", _VOC, "VOC07", _rows({
    "STD": (0.752, 0.162, 0.250, 0.012, 0.043, 0.006, 0.291),
    "CLS": (0.467, 0.309, 0.343, 0.236, 0.334, None, None),
    "REG": (0.519, 0.263, 0.344, 0.146, 0.279, None, None),
    "MTD-fast": (0.466, 0.311, 0.418, 0.221, 0.351, 0.182, 0.486),
    "TOAT-6": (0.430, 0.300, 0.397, 0.218, 0.334, 0.197, 0.466),
    "OWAT": (0.518, 0.327, 0.434, 0.229, 0.372, 0.203, 0.504),
    "CWAT": (0.513, 0.325, 0.433, 0.224, 0.367, 0.199, 0.503)}), scale=1)
# the caption says "MS-COCO test set"; Section 4.1 evaluates on val2017 (5,000 images)
TABLE2 = Reported("CWAT Table 2", "MS-COCO val2017, SSD VGG16-BN, ε = 8", "COCO17", _rows({
    "STD": (0.451, 0.133, 0.167, 0.030, 0.029, 0.003),
    "MTD": (0.190, 0.127, 0.146, 0.110, 0.135, 0.082),
    "MTD-fast": (0.242, 0.167, 0.182, 0.130, 0.134, 0.077),
    "TOAT-6": (0.182, 0.120, 0.148, 0.098, 0.123, 0.074),
    "OWAT": (0.211, 0.129, 0.169, 0.100, 0.140, 0.074),
    "CWAT": (0.237, 0.168, 0.189, 0.142, 0.155, 0.092)}, COLUMNS[:-1]), scale=1)

TABLE3_MODELS, TABLE3_ATTACKS = ("STD", "OWAT", "CWAT"), ("MDA", "OWA", "CWA")
#: class -> AP in the order STD (the paper's "Clean SSD") MDA/OWA/CWA, OWAT MDA/OWA/CWA, CWAT MDA/OWA/CWA
_T3 = {
    "aeroplane": (0.010, 0.019, 0.002, 0.383, 0.370, 0.365, 0.354, 0.373, 0.353),
    "bicycle": (0.024, 0.092, 0.001, 0.354, 0.365, 0.357, 0.334, 0.340, 0.338),
    "bird": (0.003, 0.003, 0.001, 0.118, 0.117, 0.103, 0.106, 0.110, 0.111),
    "boat": (0.006, 0.001, 0.000, 0.186, 0.174, 0.126, 0.165, 0.161, 0.116),
    "bottle": (0.037, 0.019, 0.001, 0.101, 0.101, 0.099, 0.101, 0.102, 0.100),
    "bus": (0.023, 0.011, 0.001, 0.292, 0.316, 0.278, 0.298, 0.312, 0.266),
    "car": (0.020, 0.010, 0.092, 0.409, 0.423, 0.425, 0.411, 0.429, 0.435),
    "cat": (0.000, 0.001, 0.000, 0.148, 0.162, 0.100, 0.146, 0.157, 0.087),
    "chair": (0.005, 0.004, 0.001, 0.095, 0.095, 0.109, 0.109, 0.107, 0.109),
    "cow": (0.000, 0.002, 0.000, 0.054, 0.050, 0.058, 0.089, 0.069, 0.033),
    "diningtable": (0.005, 0.005, 0.000, 0.317, 0.317, 0.220, 0.288, 0.290, 0.207),
    "dog": (0.003, 0.000, 0.000, 0.080, 0.083, 0.071, 0.116, 0.125, 0.093),
    "horse": (0.007, 0.003, 0.002, 0.369, 0.373, 0.277, 0.336, 0.329, 0.284),
    "motorbike": (0.002, 0.003, 0.002, 0.317, 0.328, 0.277, 0.301, 0.317, 0.265),
    "person": (0.035, 0.012, 0.016, 0.317, 0.317, 0.311, 0.314, 0.319, 0.316),
    "pottedplant": (0.007, 0.091, 0.000, 0.099, 0.097, 0.095, 0.096, 0.096, 0.094),
    "sheep": (0.001, 0.012, 0.001, 0.144, 0.150, 0.161, 0.173, 0.156, 0.149),
    "sofa": (0.001, 0.000, 0.000, 0.155, 0.174, 0.134, 0.156, 0.160, 0.142),
    "train": (0.018, 0.002, 0.001, 0.315, 0.321, 0.259, 0.251, 0.262, 0.248),
    "tvmonitor": (0.007, 0.004, 0.002, 0.249, 0.251, 0.241, 0.253, 0.264, 0.235),
    "mAP": (0.011, 0.015, 0.006, 0.225, 0.229, 0.203, 0.220, 0.224, 0.199)}
_T3_KEYS = [f"{m} {a}" for m in TABLE3_MODELS for a in TABLE3_ATTACKS]
TABLE3 = Reported("CWAT Table 3", "VOC07 test, SSD VGG16-BN, per-class AP under PGD-10 MDA/OWA/CWA, ε = 8",
                  "VOC07", {k: {cls: ap[i] for cls, ap in _T3.items()} for i, k in enumerate(_T3_KEYS)}, scale=1)
# Table 4's VGG16 CWAT row differs from Table 1's CWAT row in three cells (0.324/0.222/0.366 vs 0.325/0.224/0.367)
TABLE4 = Reported("CWAT Table 4", "VOC07 test, SSD with VGG16-BN / ResNet50 (ScratchDet) backbones, ε = 8",
                  "VOC07", _rows({
                      "VGG16 STD": (0.752, 0.162, 0.250, 0.012, 0.043, 0.006, 0.291),
                      "VGG16 CWAT": (0.513, 0.324, 0.433, 0.222, 0.366, 0.199, 0.503),
                      "ResNet50 STD": (0.806, 0.344, 0.420, 0.070, 0.062, 0.016, 0.795),
                      "ResNet50 CWAT": (0.483, 0.318, 0.401, 0.244, 0.340, 0.250, 0.482)}), scale=1)
TABLE5 = Reported("CWAT Table 5", "VOC07 test, SSD VGG16-BN trained with TOAT-β_cls-β_reg loss clipping, ε = 8",
                  "VOC07", _rows({
                      "TOAT-inf": (0.469, 0.266, 0.374, 0.173, 0.310, 0.165, 0.456),
                      "TOAT-2": (0.535, 0.302, 0.408, 0.191, 0.297, 0.132, 0.502),
                      "TOAT-4": (0.477, 0.288, 0.396, 0.190, 0.327, 0.183, 0.463),
                      "TOAT-6": (0.430, 0.300, 0.397, 0.218, 0.334, 0.197, 0.466),
                      "TOAT-8": (0.343, 0.289, 0.389, 0.204, 0.331, 0.189, 0.457),
                      "TOAT-2-4": (0.512, 0.304, 0.388, 0.211, 0.292, 0.131, 0.487),
                      "TOAT-4-2": (0.479, 0.296, 0.404, 0.203, 0.337, 0.178, 0.472),
                      "TOAT-2-6": (0.529, 0.325, 0.403, 0.226, 0.302, 0.146, 0.503),
                      "TOAT-6-2": (0.467, 0.289, 0.382, 0.204, 0.316, 0.175, 0.452)}), scale=1)

#: Appendix B: fast CWAT is 3.19x faster than MTD (4 GPUs, batch 14 per GPU; the paper does not
#: say per epoch or per schedule)
PAPER_SPEEDUP = 3.19
#: Appendix B: backward passes per iteration (MTD-PGD10: 2 x 10 attack steps + 2 to pick the
#: example + 1 update; fast CWAT: 1 for the perturbation + 1 update)
PAPER_BACKWARDS = {"MTD-PGD10": 23, "CWAT-fast": 2}
#: Section 4.2 / Algorithm 1: minibatch replays m of fast adversarial training
FAST_REPLAYS = 4


def table3_frame() -> pd.DataFrame:
    """Table 3 as classes (then ``mAP``) × (model, attack) columns, models STD/OWAT/CWAT."""
    f = TABLE3.frame().T.loc[list(_T3), _T3_KEYS]
    f.columns = pd.MultiIndex.from_tuples([tuple(k.split(" ")) for k in _T3_KEYS], names=["model", "attack"])
    return f


# ------------------------------------------------------------------------------- helpers
def mean_adversarial(frame: pd.DataFrame) -> pd.Series:
    """Per row, the mean mAP over the :data:`ADV_COLUMNS` present in ``frame`` (a row missing one
    of them is NaN: its mean would not be comparable with the other rows')."""
    return mean_over(frame, [c for c in ADV_COLUMNS if c in frame.columns])


def class_spread(per_class: pd.Series) -> dict:
    """How evenly AP is spread over classes: ``{"std"`` (sample, ddof=1), ``"min"``, ``"worst_class"``,
    ``"mean"}`` of the per-class APs, ignoring a ``mAP`` entry and NaNs."""
    s = per_class.drop("mAP", errors="ignore").dropna().astype(float)
    if s.empty:
        return {"std": float("nan"), "min": float("nan"), "worst_class": "", "mean": float("nan")}
    return {"std": float(s.std(ddof=1)), "min": float(s.min()), "worst_class": str(s.idxmin()),
            "mean": float(s.mean())}


def seed_comparison(rows: pd.DataFrame, a: str, b: str, columns: Sequence[str]) -> pd.DataFrame:
    """Models ``a`` and ``b`` over seeds, per attack in ``columns`` (rows: ``seed``, ``model``,
    ``attack``, ``map``): ``mean_a, std_a, mean_b, std_b`` (sample std over seeds), ``diff`` =
    mean_a - mean_b, ``spread`` = max(std_a, std_b), ``exceeds_spread`` = |diff| > spread."""
    cols = list(columns)
    r = rows[rows["attack"].isin(cols) & rows["model"].isin([a, b])]
    g = r.groupby(["attack", "model"])["map"]
    mean = g.mean().unstack("model").reindex(index=cols, columns=[a, b])
    std = g.std(ddof=1).unstack("model").reindex(index=cols, columns=[a, b])
    out = pd.DataFrame({"mean_a": mean[a], "std_a": std[a], "mean_b": mean[b], "std_b": std[b]})
    out["diff"] = out["mean_a"] - out["mean_b"]
    out["spread"] = out[["std_a", "std_b"]].max(axis=1, skipna=False)
    out["exceeds_spread"] = out["diff"].abs() > out["spread"]
    return out


def seed_spread(rows: pd.DataFrame, columns: Sequence[str] = ADV_COLUMNS) -> float:
    """The largest, over models, sample std over seeds of a model's mean adversarial mAP (the mean
    over ``columns`` per seed); NaN when some model has a single seed."""
    r = rows[rows["attack"].isin(list(columns))]
    per_seed = r.groupby(["model", "seed"])["map"].mean()
    return float(per_seed.groupby(level="model").std(ddof=1).max(skipna=False))


# -------------------------------------------------------------------------------- claims
#: "match": within 1 mAP point
MATCH_TOL = 0.01
#: the fast model's PGD-10 A_cls may sit this far below CWAT's (3 points)
FAST_TOL = 0.03
_T3_ATTACKS = list(TABLE3_ATTACKS)
_PGD_CWA = ("PGD-10 A_cls", "PGD-10 A_reg", "CWA")


def claims(table1: pd.DataFrame, attack_mAP: pd.DataFrame, per_class_cwa: Mapping[str, pd.Series],
           table5: pd.DataFrame, seed_rows: pd.DataFrame, speed: Mapping[str, float]) -> list[Claim]:
    """The claims of Section 4 and Appendix B on this run's numbers (thresholds fixed above).

    Args:
        table1: models (``STD``, ``MTD-fast``, ``OWAT``, ``CWAT``, ``CWAT-fast``) × ``clean`` and
            :data:`ADV_COLUMNS` → mAP.
        attack_mAP: models (``STD``, ``MTD-fast``, ``OWAT``, ``CWAT``) × ``MDA``, ``OWA``, ``CWA`` → mAP
            (Table 3's attacks).
        per_class_cwa: model → per-class AP under CWA (a Series indexed by class; ``mAP`` ignored),
            for ``MTD-fast`` and ``CWAT`` at least.
        table5: TOAT models (``TOAT-inf``, ``TOAT-6``, ...) × Table 1's columns → mAP.
        seed_rows: long rows ``seed``, ``model``, ``attack``, ``map`` of OWAT and CWAT over seeds,
            attacks among :data:`ADV_COLUMNS`; gives the seed spread (:func:`seed_spread`).
        speed: ``per_epoch_speedup`` (CWAT-fast over MTD-PGD10, wall time per epoch) and
            ``schedule_speedup`` (whole training schedule).
    """
    a = attack_mAP
    c1 = check("CWA is the strongest of MDA/OWA/CWA against STD and against every robust model",
               all(a.loc[m, "CWA"] <= a.loc[m, ["MDA", "OWA"]].min() for m in a.index), source="CWAT Table 3",
               **{f"{m}_{k}": float(a.loc[m, k]) for m in a.index for k in _T3_ATTACKS})

    models2 = ("MTD-fast", "OWAT", "CWAT")
    c2 = check("OWAT and CWAT match or beat MTD-fast under PGD-10 A_cls, PGD-10 A_reg and CWA "
               f"(each >= MTD-fast - {MATCH_TOL * 100:g} point)",
               all(table1.loc[m, k] >= table1.loc["MTD-fast", k] - MATCH_TOL for m in models2[1:] for k in _PGD_CWA),
               source="CWAT Table 1", **{f"{m}_{k}": float(table1.loc[m, k]) for m in models2 for k in _PGD_CWA})

    cw, mf = class_spread(per_class_cwa["CWAT"]), class_spread(per_class_cwa["MTD-fast"])
    c3 = check("CWAT spreads robustness more evenly over classes than MTD-fast: lower std of per-class AP under CWA",
               cw["std"] < mf["std"], source="CWAT Table 3, Section 4.6",
               note=f"worst class under CWA: CWAT {cw['worst_class']}, MTD-fast {mf['worst_class']}",
               std_CWAT=cw["std"], std_MTD_fast=mf["std"], worst_AP_CWAT=cw["min"], worst_AP_MTD_fast=mf["min"])

    spread = seed_spread(seed_rows)
    ours, paper = mean_adversarial(table5), mean_adversarial(TABLE5.frame())
    t6, tinf = float(ours["TOAT-6"]), float(ours["TOAT-inf"])
    c4 = check("TOAT-6 beats TOAT-inf on mean adversarial mAP by more than the seed spread "
               f"(paper: {paper['TOAT-6']:.3f} vs {paper['TOAT-inf']:.3f})", t6 - tinf > spread,
               source="CWAT Table 5", TOAT_6_mean_adv=t6, TOAT_inf_mean_adv=tinf, diff=t6 - tinf, seed_spread=spread)

    fast, full = float(table1.loc["CWAT-fast", "PGD-10 A_cls"]), float(table1.loc["CWAT", "PGD-10 A_cls"])
    per_epoch = float(speed["per_epoch_speedup"])
    c5 = check(f"CWAT-fast trains >= {PAPER_SPEEDUP:g}x faster per epoch than MTD-PGD10 while its PGD-10 A_cls "
               f"stays within {FAST_TOL * 100:g} points of CWAT's",
               per_epoch >= PAPER_SPEEDUP and fast >= full - FAST_TOL,
               source="CWAT Appendix B, Table 1", per_epoch_speedup=per_epoch,
               schedule_speedup=float(speed["schedule_speedup"]), CWAT_fast_PGD10_A_cls=fast, CWAT_PGD10_A_cls=full)

    present = [c for c in ADV_COLUMNS if c in set(seed_rows["attack"])]
    cmp = seed_comparison(seed_rows, "OWAT", "CWAT", present)
    mean_diff, largest = float(cmp["diff"].mean(skipna=False)), float(cmp["spread"].max(skipna=False))
    c6 = check("OWAT beats CWAT on VOC-like data by more than the seed spread "
               "(paper Table 1: OWAT >= CWAT in every column, by < 1 point)", mean_diff > largest,
               source="CWAT Table 1", note=f"{int(cmp['exceeds_spread'].sum())} of {len(present)} columns' "
               "OWAT - CWAT differences exceed their seed spread",
               mean_diff=mean_diff, largest_spread=largest, columns_exceeding=int(cmp["exceeds_spread"].sum()))
    return [c1, c2, c3, c4, c5, c6]


__all__ = ["ADV_COLUMNS", "COLUMNS", "FAST_REPLAYS", "FAST_TOL", "MATCH_TOL", "PAPER_BACKWARDS", "PAPER_SPEEDUP",
           "SOURCE", "TABLE1", "TABLE2", "TABLE3", "TABLE3_ATTACKS", "TABLE3_MODELS", "TABLE4", "TABLE5", "claims",
           "class_spread", "mean_adversarial", "seed_comparison", "seed_spread", "table3_frame"]
