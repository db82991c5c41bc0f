"""CWAT (advlib.papers.cwat): claims whose verdicts follow the numbers (hand-made tables where each
claim holds, then each broken), the helpers against by-hand arithmetic, and the reported numbers
against values read from the paper's text."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from advlib.papers import cwat
from advlib.papers.cwat import ADV_COLUMNS, claims as cwat_claims

COLS = ["clean", *ADV_COLUMNS]


def _table1():
    return pd.DataFrame([[0.80, 0.15, 0.25, 0.01, 0.04, 0.01, 0.30],
                         [0.50, 0.30, 0.40, 0.20, 0.35, 0.18, 0.48],
                         [0.52, 0.33, 0.43, 0.23, 0.37, 0.20, 0.50],
                         [0.51, 0.32, 0.42, 0.22, 0.36, 0.19, 0.49],
                         [0.50, 0.31, 0.41, 0.20, 0.35, 0.18, 0.48]],
                        index=["STD", "MTD-fast", "OWAT", "CWAT", "CWAT-fast"], columns=COLS)


def _attack_map():
    return pd.DataFrame({"MDA": [0.02, 0.20, 0.22, 0.21], "OWA": [0.03, 0.21, 0.23, 0.22],
                         "CWA": [0.01, 0.17, 0.20, 0.19]}, index=["STD", "MTD-fast", "OWAT", "CWAT"])


MTD_CWA = {"car": 0.40, "cat": 0.05, "dog": 0.10, "bus": 0.30}
CWAT_CWA = {"car": 0.30, "cat": 0.15, "dog": 0.20, "bus": 0.25}


def _per_class(cwat_values=CWAT_CWA):
    return {"MTD-fast": pd.Series({**MTD_CWA, "mAP": 0.2125}), "CWAT": pd.Series({**cwat_values, "mAP": 0.99})}


def _table5():
    return pd.DataFrame([[0.47, 0.27, 0.37, 0.17, 0.31, 0.16, 0.45],
                         [0.43, 0.30, 0.40, 0.22, 0.33, 0.20, 0.47]], index=["TOAT-inf", "TOAT-6"], columns=COLS)


BASE = dict(zip(ADV_COLUMNS, (0.33, 0.43, 0.23, 0.37, 0.20, 0.50)))


def _seed_rows(cwat_gap=0.01, owat_offsets=(0.0, 0.004, -0.004), cwat_offsets=(0.0, 0.002, -0.002)):
    """OWAT = BASE + offset per seed (sample std 0.004); CWAT = BASE - cwat_gap + offset (std 0.002)."""
    rows = []
    for seed in range(3):
        for c, v in BASE.items():
            rows.append({"seed": seed, "model": "OWAT", "attack": c, "map": v + owat_offsets[seed]})
            rows.append({"seed": seed, "model": "CWAT", "attack": c, "map": v - cwat_gap + cwat_offsets[seed]})
    return pd.DataFrame(rows)


SPEED = {"per_epoch_speedup": 3.5, "schedule_speedup": 12.0}


def _args(**changes):
    args = {"table1": _table1(), "attack_mAP": _attack_map(), "per_class_cwa": _per_class(), "table5": _table5(),
            "seed_rows": _seed_rows(), "speed": SPEED}
    args.update(changes)
    return args


def verdicts(**changes):
    return [c.verdict for c in cwat_claims(**_args(**changes))]


def test_all_claims_confirmed_on_numbers_where_they_hold():
    assert verdicts() == ["confirmed"] * 6


def _set(frame, row, col, value):
    frame = frame.copy()
    frame.loc[row, col] = value
    return frame


@pytest.mark.parametrize("idx, change", [
    (0, {"attack_mAP": _set(_attack_map(), "OWAT", "CWA", 0.225)}),  # CWA weaker than MDA (0.22) on OWAT
    (0, {"attack_mAP": _set(_attack_map(), "STD", "CWA", 0.025)}),  # and on STD (MDA 0.02)
    (1, {"table1": _set(_table1(), "CWAT", "CWA", 0.165)}),  # 0.165 < 0.18 - 0.01
    (1, {"table1": _set(_table1(), "OWAT", "PGD-10 A_reg", 0.335)}),  # 0.335 < 0.35 - 0.01
    (2, {"per_class_cwa": _per_class({"car": 0.60, "cat": 0.01, "dog": 0.20, "bus": 0.25})}),  # CWAT less even
    (3, {"table5": _set(_table5(), "TOAT-inf", "DAG", 0.62)}),  # inf mean 1.90/6: diff 0.0033 < spread 0.004
    (3, {"seed_rows": _seed_rows(owat_offsets=(0.0, 0.04, -0.04))}),  # seed spread 0.04 > diff 0.0317
    (4, {"speed": {"per_epoch_speedup": 3.0, "schedule_speedup": 12.0}}),  # 3.0 < 3.19
    (4, {"table1": _set(_table1(), "CWAT-fast", "PGD-10 A_cls", 0.18)}),  # 0.18 < 0.22 - 0.03
    (5, {"seed_rows": _seed_rows(cwat_gap=0.003)}),  # mean diff 0.003 < spread 0.004
    (5, {"seed_rows": _seed_rows(cwat_gap=-0.01)}),  # CWAT beats OWAT
])
def test_each_claim_breaks_when_its_numbers_do(idx, change):
    assert verdicts(**change)[idx] == "not confirmed"


def test_missing_numbers_make_a_claim_not_tested():
    assert verdicts(table1=_set(_table1(), "CWAT", "CWA", float("nan")))[1] == "not tested"
    one_seed = _seed_rows()[lambda d: d["seed"] == 0]  # no std over one seed
    got = verdicts(seed_rows=one_seed)
    assert got[3] == "not tested" and got[5] == "not tested"


def test_claim_numbers_are_the_inputs():
    c = cwat_claims(**_args())
    assert c[0].numbers["STD_CWA"] == 0.01 and c[0].numbers["OWAT_MDA"] == 0.22 and len(c[0].numbers) == 12
    assert c[1].numbers["MTD-fast_CWA"] == 0.18 and c[1].numbers["CWAT_PGD-10 A_reg"] == 0.36
    assert len(c[1].numbers) == 9
    assert c[2].numbers["std_CWAT"] == pytest.approx(statistics.stdev([0.30, 0.15, 0.20, 0.25]))
    assert c[2].numbers["std_MTD_fast"] == pytest.approx(statistics.stdev([0.40, 0.05, 0.10, 0.30]))
    assert c[2].numbers["worst_AP_CWAT"] == 0.15 and c[2].numbers["worst_AP_MTD_fast"] == 0.05
    assert "CWAT cat" in c[2].note and "MTD-fast cat" in c[2].note
    n4 = c[3].numbers
    assert n4["TOAT_6_mean_adv"] == pytest.approx(1.92 / 6) and n4["TOAT_inf_mean_adv"] == pytest.approx(1.73 / 6)
    assert n4["diff"] == pytest.approx(0.19 / 6) and n4["seed_spread"] == pytest.approx(0.004)
    assert "paper: 0.319 vs 0.291" in c[3].claim
    assert c[4].numbers == {"per_epoch_speedup": 3.5, "schedule_speedup": 12.0, "CWAT_fast_PGD10_A_cls": 0.20,
                            "CWAT_PGD10_A_cls": 0.22}
    assert "3.19x" in c[4].claim
    assert c[5].numbers["mean_diff"] == pytest.approx(0.01) and c[5].numbers["largest_spread"] == pytest.approx(0.004)
    assert c[5].numbers["columns_exceeding"] == 6 and c[5].note.startswith("6 of 6")


def test_seed_comparison_by_hand_on_three_seeds():
    rows = pd.DataFrame([{"seed": s, "model": m, "attack": a, "map": v} for s, m, a, v in (
        (0, "A", "x", 0.30), (1, "A", "x", 0.32), (2, "A", "x", 0.37),
        (0, "B", "x", 0.30), (1, "B", "x", 0.30), (2, "B", "x", 0.33),
        (0, "A", "y", 0.10), (1, "A", "y", 0.10), (2, "A", "y", 0.10),
        (0, "B", "y", 0.20), (1, "B", "y", 0.10), (2, "B", "y", 0.00),
        (0, "C", "x", 9.0))])
    t = cwat.seed_comparison(rows, "A", "B", ["x", "y"])
    # x: A mean 0.33, deviations -.03/-.01/.04 -> var (.0009+.0001+.0016)/2 = .0013; B mean .31, dev -.01/-.01/.02
    # -> var (.0001+.0001+.0004)/2 = .0003
    assert t.loc["x", "mean_a"] == pytest.approx(0.33) and t.loc["x", "std_a"] == pytest.approx(math.sqrt(0.0013))
    assert t.loc["x", "mean_b"] == pytest.approx(0.31) and t.loc["x", "std_b"] == pytest.approx(math.sqrt(0.0003))
    assert t.loc["x", "diff"] == pytest.approx(0.02) and t.loc["x", "spread"] == pytest.approx(math.sqrt(0.0013))
    assert not t.loc["x", "exceeds_spread"]  # 0.02 < 0.036
    # y: A constant 0.10 (std 0); B mean .10, std sqrt((.01+0+.01)/2) = 0.1; diff 0
    assert t.loc["y", "std_a"] == pytest.approx(0.0) and t.loc["y", "std_b"] == pytest.approx(0.1)
    assert t.loc["y", "diff"] == pytest.approx(0.0) and not t.loc["y", "exceeds_spread"]
    assert list(t.index) == ["x", "y"]
    assert list(t.columns) == ["mean_a", "std_a", "mean_b", "std_b", "diff", "spread", "exceeds_spread"]


def test_seed_spread_and_class_spread_by_hand():
    # per-seed means: OWAT = mean(BASE) + (0, .004, -.004) -> std .004; CWAT -> std .002
    assert cwat.seed_spread(_seed_rows()) == pytest.approx(0.004)
    s = cwat.class_spread(pd.Series({"a": 0.1, "b": 0.3, "c": float("nan"), "d": 0.2, "mAP": 0.0}))
    assert s == {"std": pytest.approx(0.1), "min": 0.1, "worst_class": "a", "mean": pytest.approx(0.2)}


def test_mean_adversarial_uses_the_present_columns():
    f = pd.DataFrame({"clean": [0.9, 0.9], "CWA": [0.1, 0.2], "PGD-10 A_cls": [0.3, float("nan")]}, index=["p", "q"])
    m = cwat.mean_adversarial(f)
    assert m["p"] == pytest.approx(0.2) and math.isnan(m["q"])  # clean is not an attack; q lacks a cell


# ------------------------------------------------------------------------ reported numbers
def test_transcription_against_the_paper_text():
    t1, t5, t3 = cwat.TABLE1.frame(), cwat.TABLE5.frame(), cwat.table3_frame()
    assert list(t1.columns) == COLS and list(t1.index) == ["STD", "CLS", "REG", "MTD-fast", "TOAT-6", "OWAT", "CWAT"]
    assert t1.loc["OWAT", "PGD-10 A_reg"] == 0.372 and t1.loc["STD", "FGSM A_reg"] == 0.25
    assert t1.loc["MTD-fast", "DAG"] == 0.486 and t1.loc["REG", "PGD-10 A_cls"] == 0.146
    assert "CWA" not in cwat.TABLE1.values["CLS"] and "DAG" not in cwat.TABLE1.values["REG"]
    assert t5.loc["TOAT-2-6", "CWA"] == 0.146 and t5.loc["TOAT-8", "clean"] == 0.343 and t5.index[0] == "TOAT-inf"
    assert t3.loc["car", ("CWAT", "CWA")] == 0.435 and t3.loc["cow", ("OWAT", "MDA")] == 0.054
    assert t3.loc["bicycle", ("STD", "OWA")] == 0.092 and t3.loc["sheep", ("CWAT", "MDA")] == 0.173
    assert t3.shape == (21, 9) and t3.index[-1] == "mAP" and t3.index[0] == "aeroplane"
    assert t3.columns.names == ["model", "attack"]
    assert t3.loc["mAP"].tolist() == [0.011, 0.015, 0.006, 0.225, 0.229, 0.203, 0.220, 0.224, 0.199]
    # the printed mAP row is the mean of the 20 printed class APs (to rounding): a check on every class cell
    assert (t3.drop("mAP").mean() - t3.loc["mAP"]).abs().max() < 0.0006
    t2, t4 = cwat.TABLE2.frame(), cwat.TABLE4.frame()
    assert list(t2.columns) == COLS[:-1] and t2.loc["CWAT", "PGD-10 A_cls"] == 0.142 and t2.loc["MTD", "clean"] == 0.190
    assert t4.loc["ResNet50 CWAT", "CWA"] == 0.250 and t4.loc["ResNet50 STD", "DAG"] == 0.795
    assert cwat.TABLE4.values["VGG16 STD"] == cwat.TABLE1.values["STD"]  # the same model in both tables
    assert cwat.TABLE5.values["TOAT-6"] == cwat.TABLE1.values["TOAT-6"]
    assert (cwat.PAPER_SPEEDUP, cwat.PAPER_BACKWARDS, cwat.FAST_REPLAYS) == (3.19, {"MTD-PGD10": 23, "CWAT-fast": 2}, 4)


def test_mean_adversarial_mAP_the_text_implies():
    m = cwat.mean_adversarial(cwat.TABLE5.frame())
    assert m["TOAT-6"] == pytest.approx((0.300 + 0.397 + 0.218 + 0.334 + 0.197 + 0.466) / 6)
    assert round(m["TOAT-6"], 3) == 0.319
    assert m["TOAT-inf"] == pytest.approx((0.266 + 0.374 + 0.173 + 0.310 + 0.165 + 0.456) / 6)
    assert round(m["TOAT-inf"], 3) == 0.291


def test_paper_numbers_bear_out_claims_wording():
    t1, t3 = cwat.TABLE1.frame(), cwat.table3_frame()
    diff = t1.loc["OWAT", ADV_COLUMNS] - t1.loc["CWAT", ADV_COLUMNS]  # claim 6: >= 0 and < 1 point
    assert (diff >= 0).all() and (diff < 0.01).all()
    for m in cwat.TABLE3_MODELS:  # claim 1 on the paper's mAP row
        assert t3.loc["mAP", (m, "CWA")] <= min(t3.loc["mAP", (m, "MDA")], t3.loc["mAP", (m, "OWA")])
