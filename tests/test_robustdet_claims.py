"""RobustDet's claims on hand-made numbers: each verdict flips when its numbers cross the threshold
fixed in the module, and a missing CWAT row leaves its claim untested (never filled in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from advlib.papers import robustdet_claims as rdc

ROWS = ["STD", "MTD", "CWAT", "RobustDet", "RobustDet*", "RobustDet w/o L_aid", "RobustDet* w/o L_re"]


def _inputs(**over):
    t = pd.DataFrame({"clean": [0.80, 0.60, 0.62, 0.79, 0.78, 0.77, 0.77],
                      "A_cls": [0.10, 0.30, 0.31, 0.45, 0.50, 0.40, 0.35],
                      "A_loc": [0.20, 0.35, 0.36, 0.50, 0.55, 0.45, 0.40],
                      "CWA": [0.05, 0.20, 0.22, 0.40, 0.45, 0.35, 0.30],
                      "DAG": [0.02, 0.30, 0.33, 0.50, 0.55, 0.45, 0.40]}, index=ROWS)
    lc = {"MTD": {"clean→clean": np.array([-0.2, -0.1, 0.1]), "clean→adv": np.array([0.3, 0.2, -0.1]),
                  "adv→clean": np.array([0.4, 0.1, -0.1])},
          "RobustDet": {"clean→clean": np.array([-0.2, -0.1, -0.1]), "clean→adv": np.array([0.05, -0.02, 0.01]),
                        "adv→clean": np.array([0.03, -0.04, 0.02])}}
    ent = {"MTD": pd.DataFrame({"R_mean": [0.6, 0.8]}), "RobustDet": pd.DataFrame({"R_mean": [0.05, -0.02]})}
    conf = {"MTD": np.array([0.5, 0.7]), "RobustDet": np.array([0.9, 0.95])}
    adaptive = {"A_cls": 0.45, "fixed-mixing": 0.40, "AID-evasion": 0.38}
    kw = dict(table1=t, adversarial_ssd="MTD", loss_changes=lc, entanglement=ent, confidences=conf, adaptive=adaptive)
    kw.update(over)
    return kw


def _verdicts(**over):
    return [c.holds for c in rdc.claims(**_inputs(**over))]


def test_all_hold_on_numbers_built_to_satisfy_them():
    assert _verdicts() == [True] * 8


def test_each_threshold_flips_its_verdict():
    kw = _inputs()
    t = kw["table1"].copy()
    t.loc["MTD", "clean"] = 0.66  # drop 0.14 < 0.15
    assert _verdicts(table1=t)[0] is False
    lc = {**kw["loss_changes"], "MTD": {**kw["loss_changes"]["MTD"], "clean→adv": np.array([-0.3, -0.2, 0.1])}}
    assert _verdicts(loss_changes=lc)[1] is False
    lc = {**kw["loss_changes"], "RobustDet": {**kw["loss_changes"]["RobustDet"], "adv→clean": np.array([0.3, -0.3, 0.2])}}
    v = _verdicts(loss_changes=lc)
    assert v[2] is False  # mean |change| = (0.0267 + 0.2667) / 2 = 0.147 >= 0.1
    ent = {**kw["entanglement"], "RobustDet": pd.DataFrame({"R_mean": [0.3, 0.1]})}
    assert _verdicts(entanglement=ent)[3] is False
    t = kw["table1"].copy()
    t.loc["RobustDet", "clean"] = 0.76  # 4 points below STD
    assert _verdicts(table1=t)[4] is False
    t = kw["table1"].copy()
    t.loc["RobustDet w/o L_aid", ["A_cls", "A_loc", "CWA", "DAG"]] = 0.6  # removing L_aid helps
    assert _verdicts(table1=t)[5] is False
    assert _verdicts(confidences={"MTD": np.array([0.9]), "RobustDet": np.array([0.8])})[6] is False
    assert _verdicts(adaptive={"A_cls": 0.45, "AID-evasion": 0.30})[7] is False  # a 15-point drop


def test_a_missing_cwat_row_is_not_tested():
    t = _inputs()["table1"].drop(index="CWAT")
    c = rdc.claims(**_inputs(table1=t))[4]
    assert c.holds is None and c.verdict == "not tested" and "CWAT row missing" in c.note


def test_numbers_are_the_inputs_differences():
    c = rdc.claims(**_inputs())
    assert c[0].numbers["drop"] == pytest.approx(0.20)
    assert c[5].numbers["CFR (RobustDet* − RobustDet)"] == pytest.approx(0.05)  # 0.5125 − 0.4625
    assert c[7].numbers["drop under AID-evasion"] == pytest.approx(0.07)
