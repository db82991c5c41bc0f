"""RobustDet's reported tables and claims (Dong et al., ECCV 2022): the numbers as data, and the
claims as functions from this run's numbers to verdicts (re-exported by :mod:`advlib.papers.robustdet`).

Every threshold is fixed here, before the run: the verdicts are computed in notebook 03 from its
tables. mAP is in ``[0, 1]``; "points" are 0.01 mAP.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from advlib.results import Claim, Reported, check, mean_over

SOURCE = "RobustDet (Dong et al., ECCV 2022)"
#: the attack columns of the "beats MTD and CWAT" claim (Table 1)
ADV_COLUMNS = ("A_cls", "A_loc", "CWA", "DAG")
#: the paper's Table 1-3 columns
COLUMNS = ("clean", *ADV_COLUMNS)
#: the bottleneck: an adversarially trained SSD loses at least this much clean mAP (paper: 29.5)
BOTTLENECK = 0.15
#: RobustDet keeps clean mAP within this of STD (paper: 2.1)
CLEAN_TOL = 0.03
#: "the average loss variation is less than 0.1" (§5.3)
LOSS_CHANGE_TOL = 0.1
#: gradient entanglement: "quite high" for the adversarially trained SSD (mean R over layers at
#: least this) and "almost orthogonal" for RobustDet (|mean R| at most NEAR_ZERO)
HIGH_R, NEAR_ZERO = 0.5, 0.1
#: a drop under the adaptive attacks larger than this is a finding to state plainly
ADAPTIVE_DROP = 0.10


# ------------------------------------------------------------------ reported numbers (percent)


def _rows(rows: dict) -> dict:
    return {r: {c: v for c, v in zip(COLUMNS, vals, strict=True) if v is not None} for r, vals in rows.items()}


TABLE1 = Reported("RobustDet Table 1", "VOC07 test, SSD300 VGG16 (no BN), ε = 8, PGD-20 step ε", "VOC07", _rows({
    "SSD": (77.5, 1.8, 4.5, 1.2, 4.9),
    "SSD-AT(A_cls)": (46.7, 21.8, 32.2, None, 28.0),
    "SSD-AT(A_loc)": (51.9, 23.7, 26.5, None, 17.2),
    "MTD": (48.0, 29.1, 31.9, 18.2, 28.5),
    "CWAT(PGD-10)": (51.3, 22.4, 36.7, 19.9, 50.3),
    "RobustDet": (75.4, 41.5, 45.2, 42.4, 52.0),
    "RobustDet*": (74.8, 45.9, 49.1, 48.0, 56.6)}), scale=100)
TABLE2 = Reported("RobustDet Table 2", "COCO 2017, SSD300 VGG16 (no BN), ε = 8", "COCO17", _rows({
    "SSD": (42.0, 0.4, 1.8, 0.1, 8.1),
    "MTD": (24.2, 13.0, 13.4, 7.7, None),
    "CWAT(PGD-10)": (23.7, 14.2, 15.5, 9.2, None),
    "RobustDet": (36.7, 20.6, 19.4, 20.5, 24.5),
    "RobustDet*": (36.0, 20.0, 19.0, 19.9, 16.5)}), scale=100)
TABLE3 = Reported("RobustDet Table 3", "VOC07 test, ablations", "VOC07", _rows({
    "RobustDet w/o L_aid": (74.9, 37.3, 44.9, 37.9, 51.8),
    "RobustDet* w/o L_re": (74.6, 27.5, 41.8, 28.6, 55.9),
    "RobustDet": (75.4, 41.5, 45.2, 42.4, 52.0),
    "RobustDet*": (74.8, 45.9, 49.1, 48.0, 56.6)}), scale=100)

def mean_adversarial(frame: pd.DataFrame, columns=ADV_COLUMNS) -> pd.Series:
    """Per row, the mean mAP over ``columns`` (NaN if one is missing)."""
    return mean_over(frame, columns)


def claims(table1: pd.DataFrame, adversarial_ssd: str, loss_changes: Mapping[str, Mapping[str, np.ndarray]],
           entanglement: Mapping[str, pd.DataFrame], confidences: Mapping[str, np.ndarray],
           adaptive: Mapping[str, float]) -> list[Claim]:
    """The scorecard.

    Args:
        table1: rows ``STD``, ``adversarial_ssd``, ``MTD``, ``CWAT`` (may be missing: its claims are
            then not tested), ``RobustDet``, ``RobustDet*``, ``RobustDet w/o L_aid``,
            ``RobustDet* w/o L_re`` × columns ``clean`` and :data:`ADV_COLUMNS` → mAP.
        adversarial_ssd: the row playing the paper's adversarially trained SSD in the bottleneck
            claim (our adopted MTD protocol's model).
        loss_changes: model (``MTD``, ``RobustDet``) → setting (``clean→clean``, ``clean→adv``,
            ``adv→clean``) → per-image loss changes.
        entanglement: model (``MTD``, ``RobustDet``) → per-layer frame with ``R_mean``.
        confidences: ``MTD`` / ``RobustDet`` → detection scores above 0.3 on clean images.
        adaptive: ``A_cls`` (RobustDet under the standard white-box A_cls), and the adaptive
            attacks' mAPs by name (e.g. ``fixed-mixing``, ``AID-evasion``).
    """
    t = table1.astype(float)
    out = []
    std = float(t.loc["STD", "clean"])
    drop = std - float(t.loc[adversarial_ssd, "clean"])
    out.append(check(f"The robustness bottleneck: the adversarially trained SSD ({adversarial_ssd}) loses at least "
                     f"{BOTTLENECK * 100:.0f} points of clean mAP against STD (paper: MTD 29.5)", drop >= BOTTLENECK,
                     source="RobustDet Table 1", STD_clean=std, adv_clean=float(t.loc[adversarial_ssd, "clean"]),
                     drop=drop))

    lc = {m: {k: np.asarray(v, dtype=float) for k, v in s.items()} for m, s in loss_changes.items()}
    mtd = lc["MTD"]
    f = {k: float((v > 0).mean()) for k, v in mtd.items()}
    out.append(check("For the adversarially trained SSD, clean→adv and adv→clean loss changes are mostly positive "
                     "while clean→clean is mostly negative (Fig. 3a-c)",
                     f["clean→adv"] > 0.5 and f["adv→clean"] > 0.5 and f["clean→clean"] < 0.5, source="RobustDet Fig. 3",
                     **{f"positive {k}": v for k, v in f.items()}))
    rd = lc["RobustDet"]
    cross = float(np.mean([np.abs(rd["clean→adv"]).mean(), np.abs(rd["adv→clean"]).mean()]))
    out.append(check(f"For RobustDet the average (absolute) loss variation between clean and adversarial learning is "
                     f"below {LOSS_CHANGE_TOL} (§5.3)", cross < LOSS_CHANGE_TOL, source="RobustDet §5.3, Fig. 3d-f",
                     mean_abs_change=cross))

    r_adv = float(entanglement["MTD"]["R_mean"].mean())
    r_rd = float(entanglement["RobustDet"]["R_mean"].mean())
    out.append(check(f"Gradient entanglement is high for the adversarially trained SSD (mean R ≥ {HIGH_R}) and near "
                     f"zero for RobustDet (|mean R| ≤ {NEAR_ZERO}) (Fig. 4)", r_adv >= HIGH_R and abs(r_rd) <= NEAR_ZERO,
                     source="RobustDet Fig. 4", R_adv_ssd=r_adv, R_RobustDet=r_rd))

    rows = [r for r in ("MTD", "CWAT") if r in t.index]
    rd_clean = float(t.loc["RobustDet", "clean"])
    beats = {f"{r} {c}": float(t.loc["RobustDet", c] - t.loc[r, c]) for r in rows for c in ADV_COLUMNS}
    holds = (std - rd_clean <= CLEAN_TOL) and all(v > 0 for v in beats.values()) and "CWAT" in t.index
    out.append(check(f"RobustDet keeps clean mAP within {CLEAN_TOL * 100:.0f} points of STD and beats MTD and CWAT under "
                     "A_cls, A_loc, CWA and DAG", holds if "CWAT" in t.index else None, source="RobustDet Table 1",
                     clean_drop=std - rd_clean, **{f"margin over {k}": v for k, v in beats.items()},
                     note="" if "CWAT" in t.index else "CWAT row missing"))

    m = mean_adversarial(t)
    gains = {"CFR (RobustDet* − RobustDet)": float(m["RobustDet*"] - m["RobustDet"]),
             "L_aid (RobustDet − w/o L_aid)": float(m["RobustDet"] - m["RobustDet w/o L_aid"]),
             "L_re (RobustDet* − w/o L_re)": float(m["RobustDet*"] - m["RobustDet* w/o L_re"])}
    out.append(check("CFR adds robustness, and removing L_aid or L_re costs robustness (mean adversarial mAP, "
                     "Tables 1 and 3)", all(v > 0 for v in gains.values()), source="RobustDet Tables 1, 3", **gains))

    c_mtd, c_rd = (float(np.mean(confidences[k])) if len(confidences[k]) else float("nan") for k in ("MTD", "RobustDet"))
    out.append(check("RobustDet's confidences on clean images are higher than MTD's (mean score of detections "
                     "above 0.3; paper: about 0.95 vs 0.7, Fig. 7c)", c_rd > c_mtd, source="RobustDet Fig. 7c",
                     MTD=c_mtd, RobustDet=c_rd))

    base = float(adaptive["A_cls"])
    drops = {f"drop under {k}": base - float(v) for k, v in adaptive.items() if k != "A_cls"}
    out.append(check(f"Beyond the paper: adaptive attacks through the discriminator lower RobustDet's A_cls mAP by "
                     f"less than {ADAPTIVE_DROP * 100:.0f} points", all(v < ADAPTIVE_DROP for v in drops.values()),
                     source="beyond the paper", A_cls=base, **drops))
    return out


__all__ = ["ADAPTIVE_DROP", "ADV_COLUMNS", "BOTTLENECK", "CLEAN_TOL", "COLUMNS", "TABLE1", "TABLE2", "TABLE3", "HIGH_R", "LOSS_CHANGE_TOL", "NEAR_ZERO", "SOURCE",
           "claims", "mean_adversarial"]
