"""Notebook 06's matrix, trade-off and scorecard: numbers checked against hand computations and
against a direct evaluation of the attacked images."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import make_model


def test_pareto_front_by_hand():
    from advlib.papers.matrix import pareto_front

    clean = pd.Series({"A": 0.8, "B": 0.6, "C": 0.5, "D": 0.6, "E": float("nan"), "F": 0.8})
    adv = pd.Series({"A": 0.1, "B": 0.4, "C": 0.3, "D": 0.4, "E": 0.9, "F": 0.05})
    # C is beaten by B in both; F by A (same clean, lower adversarial); B and D tie: neither beats the other
    assert pareto_front(clean, adv).to_dict() == {"A": True, "B": True, "C": False, "D": True, "E": False, "F": False}
    # an excluded row is never on the front and beats no one: without A, F is on it
    assert pareto_front(clean, adv, exclude=["A"]).to_dict() == {"A": False, "B": True, "C": False, "D": True,
                                                                 "E": False, "F": True}


def test_summary_mean_std_missing_and_not_applicable():
    from advlib.papers.matrix import mean_adversarial, summary, surrogate_kinship, white_box_surrogate

    rows = [{"seed": 0, "model": "STD", "attack": "clean", "map": 0.8},
            {"seed": 1, "model": "STD", "attack": "clean", "map": 0.6},
            {"seed": 0, "model": "STD", "attack": "PGD", "map": 0.1},
            {"seed": 1, "model": "STD", "attack": "PGD", "map": 0.3},
            {"seed": 0, "model": "MagNet", "attack": "clean", "map": 0.5},
            {"seed": 0, "model": "MagNet", "attack": "PGD", "map": 0.4},
            {"seed": 0, "model": "MagNet", "attack": "adaptive", "map": 0.05},
            {"seed": 0, "model": "STD", "attack": "RAD", "map": 0.01, "kind": "white-box (surrogate)"},
            {"seed": 1, "model": "STD", "attack": "RAD", "map": 0.5, "kind": "transfer from the surrogate"},
            {"seed": 2, "model": "STD", "attack": "RAD", "map": 0.7, "kind": "transfer from the surrogate"}]
    s = summary(rows, ["STD", "X", "MagNet"], ["clean", "PGD", "adaptive", "RAD"])
    # the surrogate's own (white-box) RAD cell is not averaged with the transfers
    assert s["mean"].loc["STD", "RAD"] == pytest.approx(0.6) and s["n"].loc["STD", "RAD"] == 2
    assert white_box_surrogate(rows)["map"] == 0.01
    assert s["mean"].loc["STD", "clean"] == pytest.approx(0.7)
    assert s["std"].loc["STD", "PGD"] == pytest.approx(math.sqrt(0.02))  # (0.1 - 0.2)² + (0.3 - 0.2)² over 1
    assert s["n"].loc["STD", "PGD"] == 2 and math.isnan(s["std"].loc["MagNet", "PGD"])
    assert s["text"].loc["STD", "clean"] == "0.700 ± 0.141"
    assert s["text"].loc["X", "PGD"] == "missing" and s["text"].loc["STD", "adaptive"] == "n/a"
    assert s["text"].loc["MagNet", "adaptive"] == "0.050"
    adv = mean_adversarial(s["mean"][["clean", "PGD", "adaptive"]])  # clean and adaptive are not in the mean
    assert adv["STD"] == pytest.approx(0.2) and adv["MagNet"] == pytest.approx(0.4) and math.isnan(adv["X"])
    assert math.isnan(mean_adversarial(s["mean"])["MagNet"])  # MagNet lacks RAD: not comparable
    kin = surrogate_kinship(rows + [{"seed": 0, "model": "M", "attack": "RAD", "map": 0.2},
                                    {"seed": 1, "model": "M", "attack": "RAD", "map": 0.5},
                                    {"seed": 2, "model": "M", "attack": "RAD", "map": 0.6}], 0)
    assert list(kin.index) == ["M"] and kin.loc["M", "difference"] == pytest.approx(-0.35)


def _mean(rows: dict) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=["clean", "A", "B"])


def test_cross_method_claims_by_hand():
    from advlib.papers.matrix_claims import claims, seed_spread

    mean = _mean({"STD": [0.80, 0.05, 0.15], "MTD-1step": [0.70, 0.30, 0.40], "RobustDet": [0.75, 0.32, 0.40],
                  "MagNet": [0.81, 0.50, 0.50]})
    c = {x.claim.split(":")[0]: x for x in claims(mean, spread=0.02)}
    # both trained rows lose clean mAP (0.10, 0.05); MagNet is not adversarially trained
    assert c["Robustness bottleneck"].holds is True and c["Robustness bottleneck"].numbers["smallest_drop"] == pytest.approx(0.05)
    assert c["Robustness bottleneck"].note == ""  # 0.05 is outside the spread 0.02
    noisy = {x.claim.split(":")[0]: x for x in claims(mean, spread=0.3)}
    assert "smallest drop (RobustDet) 0.050 is smaller than the seed spread 0.300" in noisy["Robustness bottleneck"].note
    assert "(MTD-1step) 0.200" in noisy["Adversarial training pays"].note  # gain 0.25 - 0.05
    # mean adversarial: STD 0.10, MTD 0.35, RobustDet 0.36 -> gains 0.25, 0.26
    assert c["Adversarial training pays"].holds is True
    rd = next(x for k, x in c.items() if k.startswith("RobustDet or"))
    assert rd.holds is True and rd.numbers["margin"] == pytest.approx(0.01)
    assert "smaller than the seed spread" in rd.note  # 0.01 < 0.02
    mean.loc["RobustDet", "clean"] = 0.85
    assert {x.claim.split(":")[0]: x for x in claims(mean, 0.0)}["Robustness bottleneck"].holds is False

    rows = [{"seed": s, "model": "M", "attack": a, "map": v}
            for s, a, v in ((0, "clean", 0.9), (0, "A", 0.2), (0, "B", 0.4), (1, "A", 0.4), (1, "B", 0.6),
                            (1, "adaptive", 0.0))]
    assert seed_spread(rows) == pytest.approx(math.sqrt(0.02))  # per-seed means 0.3 and 0.5


def test_collect_counts_render_and_readme_block(tmp_path):
    from advlib.papers.matrix_claims import collect, counts, render
    from advlib.results import readme_block, replace_block

    def claim(text, verdict):
        return {"claim": text, "verdict": verdict, "numbers": {"a": 0.12345, "b": [0.1, 0.2]}, "source": "T1", "note": ""}
    (tmp_path / "01_mtd.json").write_text(json.dumps(
        {"profile": {"name": "default"}, "claims": [claim("x | y", "confirmed"), claim("z", "not tested")]}))
    (tmp_path / "02_cwat.json").write_text(json.dumps({"profile": {"name": "smoke"}, "claims": [claim("w", "confirmed")]}))
    (tmp_path / "04_advamd.json").write_text(json.dumps({"profile": {"name": "default"}, "claims": [claim("v", "not confirmed")]}))
    card, status = collect(tmp_path, "default")
    assert status == {"01": "ok", "02": "other profile (smoke)", "03": "missing", "04": "ok", "05": "missing"}
    assert list(card["paper"]) == ["MTD", "MTD", "AdvAmd"]
    assert list(card["verdict"]) == ["confirmed", "not testable on this data", "not confirmed"]
    assert card.loc[0, "numbers"] == "a=0.123, b=[0.100, 0.200]"
    n = counts(card)
    assert n == {"confirmed": 1, "not confirmed": 1, "not testable on this data": 1, "total": 3}
    md = render(card, status, "default")
    assert "**3 claims: 1 confirmed, 1 not confirmed, 1 not testable on this data.**" in md
    assert "| MTD | x \\| y | confirmed |" in md and "notebook 03 (RobustDet): missing" in md

    readme = "intro\n<!-- matrix:start -->\nold\n<!-- matrix:end -->\nrest\n"
    new = replace_block(readme, "matrix", readme_block(n, "figures/06_matrix_heatmap.png", "results/SCORECARD.md"))
    assert new.startswith("intro\n<!-- matrix:start -->\n![The cross-method matrix](figures/06_matrix_heatmap.png)")
    assert new.endswith("<!-- matrix:end -->\nrest\n") and "old" not in new and "1 confirmed, 1 not confirmed" in new
    assert replace_block(new, "matrix", "again") == "intro\n<!-- matrix:start -->\nagain\n<!-- matrix:end -->\nrest\n"
    with pytest.raises(ValueError, match="matrix:start"):
        replace_block("no block", "matrix", "x")


def test_reading_is_written_from_the_numbers():
    from advlib.papers.matrix import pareto_front
    from advlib.papers.matrix_claims import reading

    mean = _mean({"STD": [0.80, 0.05, 0.15], "MTD-1step": [0.70, 0.30, 0.40], "RobustDet": [0.75, 0.32, 0.40]})
    adv = mean[["A", "B"]].mean(axis=1)
    text = reading(mean, pareto_front(mean["clean"], adv), 0.02)
    assert "(white-box columns): RobustDet, mean adversarial mAP 0.360 against STD's 0.100" in text
    assert "A (0.223)" in text and "B (0.317)" in text  # strongest / weakest column means
    assert "Pareto front** (clean against mean adversarial mAP, white-box rows): STD, RobustDet." in text


def test_paper_matrix_takes_each_cell_from_the_first_table_reporting_it():
    from advlib.papers.matrix import paper_matrix

    values, source = paper_matrix(["STD", "RobustDet*", "MagNet"], ["clean", "FGSM A_cls", "PGD-10 A_cls", "RAP"], "default")
    # MTD Table 2 (STD 72.1 clean, 1.5 A_cls, 6.6 RAP) before CWAT Table 1 (75.2 clean, 16.2 FGSM A_cls)
    assert values.loc["STD", "clean"] == pytest.approx(0.721) and source.loc["STD", "clean"] == "MTD Table 2"
    assert values.loc["STD", "FGSM A_cls"] == pytest.approx(0.162) and source.loc["STD", "FGSM A_cls"] == "CWAT Table 1"
    assert values.loc["STD", "RAP"] == pytest.approx(0.066)
    assert values.loc["RobustDet*", "PGD-10 A_cls"] == pytest.approx(0.459)  # RobustDet Table 1
    assert values.loc["MagNet"].isna().all() and math.isnan(values.loc["RobustDet*", "RAP"])


def test_compute_magnet_cells_are_grey_box_and_adaptive(tiny_test, monkeypatch, tmp_path):
    """MagNet's white-box columns are crafted on the detector it protects and its adaptive column
    through the reformer: each equals the mAP of the MagNet model on the set crafted that way,
    computed here directly."""
    from advlib.attacks.presets import fgsm, preset
    from advlib.data import collate
    from advlib.evaluate import evaluate_voc
    from advlib.experiment import TrainedModel
    from advlib.models.magnet import AutoEncoder, MagNetDetector
    from advlib.papers import matrix
    from advlib.robustness import adversarial_images, detect_all
    from advlib.cache import round_8bit

    monkeypatch.setenv("ADVLIB_CACHE_DIR", str(tmp_path))  # the transfer sets MagNet's cells craft
    std = make_model(0).eval()
    torch.manual_seed(1)
    magnet = MagNetDetector(std, AutoEncoder(width=8), float("inf")).eval()
    from types import SimpleNamespace

    from advlib.robustness import Transfer

    cols = {"clean": None, "FGSM A_cls": fgsm("cls"), "PGD-2 A_cls": preset("A_cls", steps=2),
            "RAD": Transfer(matrix.SURROGATE, preset("A_loc", steps=1))}
    monkeypatch.setattr(matrix, "attacks", lambda exp: cols)
    # the RAD set is notebook 05's: crafted on its 6 images, the matrix evaluates the first 4
    monkeypatch.setattr(matrix.rad, "budget", lambda name: SimpleNamespace(images=6))
    all_images, all_targets = collate([tiny_test[i] for i in range(6)])
    images, targets = all_images[:4], all_targets[:4]
    classes = tiny_test.classes

    class Exp:  # what compute reads from an Experiment
        seed, data_id = 0, "tiny"
        profile = SimpleNamespace(attack_steps=2, name="default")
        eval_data = (all_images, all_targets)
    Exp.classes = classes
    per_seed = {0: {"STD": TrainedModel(std, {"key": "s"}), "MagNet": TrainedModel(magnet, {"key": "m"})}}
    rows = {(r["model"], r["attack"]): r for r in matrix.compute(Exp(), per_seed, images, targets)}

    def direct(model, adv):
        return evaluate_voc(detect_all(model, adv), targets, len(classes), class_names=classes).map
    for col in ("FGSM A_cls", "PGD-2 A_cls"):
        grey = round_8bit(adversarial_images(std, images, targets, cols[col], progress=False))
        assert rows[("MagNet", col)]["map"] == pytest.approx(direct(magnet, grey), abs=1e-9)
        assert rows[("MagNet", col)]["kind"] == "crafted on the protected detector"
        assert rows[("STD", col)]["map"] == pytest.approx(direct(std, grey), abs=1e-9)
        assert rows[("STD", col)]["kind"] == "white-box"
    adaptive = round_8bit(adversarial_images(magnet, images, targets, cols["PGD-2 A_cls"], progress=False))
    assert rows[("MagNet", "adaptive")]["map"] == pytest.approx(direct(magnet, adaptive), abs=1e-9)
    assert rows[("MagNet", "adaptive")]["kind"] == "adaptive" and ("STD", "adaptive") not in rows
    assert rows[("MagNet", "clean")]["map"] == pytest.approx(direct(magnet, images), abs=1e-9)
    rad_set = round_8bit(adversarial_images(std, all_images, all_targets, cols["RAD"].spec, progress=False))[:4]
    for m, kind in (("MagNet", "transfer from the surrogate"), ("STD", "white-box (surrogate)")):
        assert rows[(m, "RAD")]["map"] == pytest.approx(direct(per_seed[0][m].model, rad_set), abs=1e-9)
        assert rows[(m, "RAD")]["kind"] == kind and rows[(m, "RAD")]["spec"] == cols["RAD"].spec.label()
    sizes = sorted(len((d / "ImageSets" / "Main" / "test.txt").read_text().split())
                   for d in (tmp_path / "adv").iterdir() if d.is_dir())
    assert sizes == [4, 4, 6]  # MagNet's two grey-box sets and the one RAD set, on notebook 05's 6 images
