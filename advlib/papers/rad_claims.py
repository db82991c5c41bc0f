"""RAD's reported tables and claims (Chen et al., "Relevance Attack on Detectors", ICLR 2021
submission): the numbers as data, and the claims as functions from a run's numbers to verdicts.

Every threshold is fixed here, before any run; notebook 05 computes the verdicts from its own
tables. mAP is in ``[0, 1]``; "points" are 0.01 mAP. The paper's columns are its nine COCO models
(:data:`MODELS`, Appendix B); its surrogate for Tables 1-3 and 7 is YOLOv3 (M2), whose column is
white-box. Our tables have one column per detector of our transfer zoo, the surrogate's marked.
"""

from __future__ import annotations

import math

import pandas as pd

from advlib.results import Claim, Reported, check

SOURCE = "RAD (Chen et al., ICLR 2021 submission)"
#: Appendix B, Table 6: the paper's models (COCO box mAP, mmdetection)
MODELS = {"M1": "SSD512 (VGG16)", "M2": "YOLOv3 (Darknet)", "M3": "RetinaNet (ResNet-101)",
          "M4": "Faster R-CNN (ResNeXt-101)", "M5": "Mask R-CNN (ResNeXt-101)", "M6": "Cascade R-CNN (ResNet-101)",
          "M7": "Cascade Mask R-CNN (ResNeXt-101)", "M8": "Hybrid Task Cascade (ResNeXt-101)",
          "M9": "EfficientDet (EfficientNet + BiFPN)"}
_M = tuple(MODELS)
#: "less than 2 points" (Appendix C: node-selection hyper-parameters)
NODE_SPREAD = 0.02
#: "at least twice the Gaussian ablation's drop" (RAD against the noise of the same size)
GAUSSIAN_FACTOR = 2.0
#: relevance maps "more alike" than chance: the mean same-image rank correlation of two models'
#: maps must exceed the mean different-image one by this much
SIMILARITY_MARGIN = 0.05
#: "falls as ε grows": each step of the ε sweep may rise by at most this (evaluation noise)
EPS_TOLERANCE = 0.005


def _table(source: str, setting: str, rows: dict) -> Reported:
    return Reported(source, setting, "COCO", {r: dict(zip(_M, v, strict=True)) for r, v in rows.items()}, scale=100)


_NONE = (29.3, 33.4, 38.1, 40.7, 42.1, 42.5, 45.7, 46.9, 53.9)
_RAD = (18.1, 1.2, 19.9, 20.5, 24.3, 22.6, 26.4, 28.2, 39.9)  # RAD without SI (Tables 1, 2, 7)
_RAD_SI = (14.6, 0.7, 16.3, 17.0, 20.4, 19.1, 22.3, 23.8, 35.0)
#: Table 1: attacked nodes (surrogate YOLOv3, no SI)
TABLE1 = _table("RAD Table 1", "COCO val, surrogate YOLOv3 (M2), ε = 16, 10 steps, box mAP", {
    "No attack": _NONE, "Size": (26.0, 14.7, 31.9, 32.5, 35.6, 35.4, 38.6, 40.0, 47.8),
    "Localization": (22.8, 6.4, 27.4, 28.1, 31.7, 30.8, 34.4, 35.9, 45.1), "Classification": _RAD})
#: Table 2: update technique
TABLE2 = _table("RAD Table 2", "COCO val, surrogate YOLOv3 (M2), classification nodes, box mAP", {
    "None": _RAD, "DI": (18.1, 1.0, 19.9, 20.5, 23.9, 22.4, 26.3, 27.9, 39.6),
    "TI": (17.0, 2.4, 20.8, 20.8, 25.2, 23.0, 27.9, 29.7, 41.5), "SI": _RAD_SI})
#: Table 3: every attack (classification attacks on an InceptionV3 classifier in the paper; on our
#: surrogate detector's classification loss here); CD-Comics' M8 (42.3) is as printed
TABLE3 = _table("RAD Table 3", "COCO val, surrogate YOLOv3 (M2) for detection attacks, ε = 16, box mAP", {
    "No attack": _NONE, "Gaussian (σ = 9)": (24.9, 31.4, 31.2, 31.6, 35.0, 34.3, 37.5, 38.8, 48.6),
    "PGD": (26.4, 30.4, 34.4, 35.4, 38.4, 38.3, 41.7, 43.1, 51.1),
    "SI-PGD": (27.5, 31.6, 36.1, 37.1, 40.0, 40.1, 43.5, 44.8, 52.4),
    "MI-DI-PGD": (22.9, 26.2, 29.3, 30.0, 33.2, 32.1, 36.0, 37.5, 48.0),
    "MI-TI-PGD": (20.1, 23.7, 24.9, 25.4, 30.1, 27.4, 32.8, 34.5, 47.1),
    "Dfool": (23.3, 2.5, 29.2, 29.8, 33.3, 32.9, 36.5, 38.0, 47.5),
    "Loc": (21.9, 0.2, 25.8, 26.6, 29.8, 29.4, 33.2, 33.2, 45.2),
    "DAG": (20.8, 0.6, 22.8, 23.4, 26.8, 25.6, 28.9, 31.0, 40.6), "RAD": _RAD_SI})
#: Table 7 (Appendix C): node selection, dynamic (pre-softmax threshold) and static (m boxes)
TABLE7 = _table("RAD Table 7", "COCO val, surrogate YOLOv3 (M2), no SI, box mAP", {
    "dynamic −1": (18.3, 1.2, 20.0, 20.6, 24.3, 22.8, 26.7, 28.3, 40.0),
    "dynamic −2": (18.2, 1.2, 20.1, 20.7, 24.2, 22.8, 26.6, 28.0, 39.8),
    "dynamic −3": (18.4, 1.3, 20.3, 20.8, 24.3, 22.9, 26.7, 28.5, 40.2),
    "static 10": (18.2, 1.1, 19.9, 20.5, 24.2, 22.8, 26.2, 28.0, 39.8), "static 20": _RAD,
    "static 30": (18.2, 1.3, 20.1, 20.7, 24.3, 22.8, 26.0, 27.9, 40.1)})
#: Table 8 (Appendix D): RAD (with SI) from three surrogates
TABLE8 = _table("RAD Table 8", "COCO val, RAD with SI, box mAP", {
    "YOLOv3": _RAD_SI, "Mask R-CNN": (20.4, 24.2, 25.7, 26.5, 1.1, 28.9, 33.1, 34.9, 45.4),
    "RetinaNet": (20.7, 6.1, 2.3, 25.7, 29.3, 28.2, 31.7, 33.8, 44.1)})
#: Table 5: AOCO detection (RMSE in pixel levels, 0-255)
TABLE5 = _table("RAD Table 5", "COCO val 2017 and AOCO detection (RAD on YOLOv3), box mAP", {
    "COCO": _NONE, "AOCO": _RAD_SI})
TABLE5_RMSE = {"COCO": 0.0, "AOCO": 6.469}


# ------------------------------------------------------------------ claims
def _black_box(frame: pd.DataFrame, white_box: list[str] | tuple[str, ...]) -> list[str]:
    cols = [c for c in frame.columns if c not in set(white_box)]
    if not cols:
        raise ValueError(f"no black-box model among {list(frame.columns)} (white-box: {list(white_box)})")
    return cols


def _mean(frame: pd.DataFrame, row: str, cols: list[str]) -> float:
    return float(frame.loc[row, cols].mean()) if row in frame.index else math.nan


def claims(*, similarity: dict, nodes: pd.DataFrame, updates: pd.DataFrame, attacks: pd.DataFrame,
           selection: pd.DataFrame, eps_curve: pd.DataFrame, white_box: list[str] | tuple[str, ...]) -> list[Claim]:
    """The scorecard from this run's tables (rows × models, mAP; ``white_box`` names the
    surrogate columns, left out of every black-box number).

    Args:
        similarity: ``{"same_image": mean rank correlation of two models' maps of one image,
            "chance": the same models' maps of different images}``.
        nodes: Table 1 rows ``Size``, ``Localization``, ``Classification``.
        updates: Table 2 rows ``None``, ``DI``, ``TI``, ``SI``.
        attacks: Table 3 rows, including ``No attack``, ``Gaussian (σ = 9)`` and ``RAD``.
        selection: Table 7 rows (every node-selection setting).
        eps_curve: rows = ε (ascending), columns = models (Fig. 7).
    """
    out = []
    same, chance = float(similarity["same_image"]), float(similarity["chance"])
    out.append(check("Relevance maps of different detectors are more alike than chance (Fig. 1: same image, "
                     f"different models; by more than {SIMILARITY_MARGIN} in mean rank correlation)",
                     same - chance > SIMILARITY_MARGIN, source=f"{SOURCE}, Sec. 1 / Fig. 1",
                     same_image=same, chance=chance, margin=SIMILARITY_MARGIN))
    bb = _black_box(nodes, white_box)
    cls_, size, loc = (_mean(nodes, r, bb) for r in ("Classification", "Size", "Localization"))
    out.append(check("Attacking classification nodes transfers better than size or localisation nodes (Table 1: "
                     "lower mean black-box mAP)", cls_ < min(size, loc), source=f"{SOURCE}, Table 1",
                     classification=cls_, size=size, localization=loc))
    bb = _black_box(updates, white_box)
    means = {r: _mean(updates, r, bb) for r in ("None", "DI", "TI", "SI")}
    out.append(check("SI transfers better than no technique, DI and TI (Table 2: lowest mean black-box mAP)",
                     means["SI"] < min(means["None"], means["DI"], means["TI"]), source=f"{SOURCE}, Table 2",
                     **{f"mean black-box mAP {k}": v for k, v in means.items()}))
    bb = _black_box(attacks, white_box)
    others = [r for r in attacks.index if r not in ("No attack", "RAD")]
    lowest = [m for m in bb if float(attacks.loc["RAD", m]) <= float(attacks.loc[others, m].min())]
    drop = {m: float(attacks.loc["No attack", m] - attacks.loc["RAD", m]) for m in bb}
    gauss = {m: float(attacks.loc["No attack", m] - attacks.loc["Gaussian (σ = 9)", m]) for m in bb}
    twice = all(drop[m] >= GAUSSIAN_FACTOR * max(gauss[m], 0.0) for m in bb)
    out.append(check(f"RAD gives the lowest black-box mAP on most black-box models among Table 3's attacks, and "
                     f"its drop is at least {GAUSSIAN_FACTOR:g}× the Gaussian ablation's on every black-box model",
                     len(lowest) > len(bb) / 2 and twice, source=f"{SOURCE}, Table 3",
                     lowest_on=lowest, black_box_models=bb, rad_drop=drop, gaussian_drop=gauss))
    bb = _black_box(selection, white_box)
    spread = {m: float(selection[m].max() - selection[m].min()) for m in bb}
    out.append(check(f"Node-selection hyper-parameters change black-box mAP by less than {NODE_SPREAD * 100:g} points "
                     "(Table 7, every black-box model)", max(spread.values()) < NODE_SPREAD,
                     source=f"{SOURCE}, Appendix C", spread=spread))
    bb = _black_box(eps_curve, white_box)
    curve = eps_curve.sort_index()
    rises = {m: float(curve[m].diff().max()) for m in bb}
    falls = all(rises[m] <= EPS_TOLERANCE and curve[m].iloc[-1] < curve[m].iloc[0] for m in bb)
    out.append(check(f"Black-box mAP falls as ε grows (Fig. 7: every black-box model lower at the largest ε than at "
                     f"the smallest, no step up by more than {EPS_TOLERANCE})", falls, source=f"{SOURCE}, Fig. 7",
                     largest_rise=rises, eps=[float(e) for e in curve.index]))
    return out


__all__ = ["EPS_TOLERANCE", "GAUSSIAN_FACTOR", "MODELS", "NODE_SPREAD", "SIMILARITY_MARGIN", "SOURCE", "TABLE1",
           "TABLE2", "TABLE3", "TABLE5", "TABLE5_RMSE", "TABLE7", "TABLE8", "claims"]
