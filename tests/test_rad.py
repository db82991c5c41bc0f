"""Notebook 05's runs (advlib.papers.rad) on tiny models: specs, budget, similarity, RMSE, the saved
set re-read from disk, Fig. 8's frames."""

from __future__ import annotations

import pytest
import torch

from advlib.attacks import PRESETS
from advlib.papers import rad
from conftest import make_model


def test_rad_specs_follow_the_paper_and_keep_defaults_out_of_the_key():
    assert rad.rad() == PRESETS["RAD"] and rad.rad(technique="SI") == PRESETS["RAD-SI"]
    assert dict(rad.NODE_ROWS["Size"].params) == {"kind": "size"}
    assert dict(rad.SELECTION_ROWS["dynamic −3"].params) == {"threshold": -3.0}
    assert rad.SELECTION_ROWS["static 20"] == rad.NODE_ROWS["Classification"] == rad.TECHNIQUE_ROWS["None"]
    di, ti = rad.TECHNIQUE_ROWS["DI"], rad.TECHNIQUE_ROWS["TI"]
    assert (di.transforms, di.di_copies, di.di_prob) == (("di",), 4, 1.0) and (ti.transforms, ti.ti_kernel) == (("ti",), 15)
    rows = rad.table3_rows()
    assert rows["No attack"] is None and rows["RAD"] == PRESETS["RAD-SI"] and rows["DAG"] == PRESETS["DAG-top"]
    assert rows["MI-TI-PGD"].momentum == 1.0 and rows["PGD"].eps == 16 / 255 and not rows["PGD"].random_start
    cols = rad.transfer_columns(rows, "S", rad.budget("smoke"))
    assert cols["No attack"] is None and cols["RAD"].source == "S" and cols["RAD"].spec.steps == 2
    assert cols["Gaussian (σ = 9)"].spec.steps == 1  # one-step rows keep theirs
    assert rad.transfer_columns(rows, "S")["RAD"].spec.steps == 10
    with pytest.raises(ValueError, match="technique"):
        rad.rad(technique="XI")
    with pytest.raises(ValueError, match="surrogates"):
        rad.RADBudget(images=2, eps_images=2, similarity_images=2, surrogates=("FCOS",))


def test_rmse_in_pixel_levels_by_hand():
    clean = torch.zeros(2, 3, 4, 4)
    adv = clean.clone()
    adv[0] += 3 / 255  # every pixel 3 levels off: RMSE 3
    adv[1, 0, 0, 0] = 48 / 255  # one of 48 values 48 levels off: sqrt(48^2 / 48) = sqrt(48)
    assert rad.rmse_levels(adv, clean) == pytest.approx((3 + 48 ** 0.5) / 2, rel=1e-5)


def test_relevance_similarity_of_a_model_with_itself_is_one_on_the_same_image():
    a, b = make_model(seed=1, num_classes=3, size=64).eval(), make_model(seed=2, num_classes=3, size=64).eval()
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    maps, sim = rad.relevance_similarity({"A": a, "A again": a, "B": b}, x)
    assert maps["A"].shape == (3, 64, 64)
    assert sim.loc["A ~ A again", "same_image"] == pytest.approx(1.0)
    assert sim.loc["A ~ A again", "chance"] < 0.99 and list(sim.index) == ["A ~ A again", "A ~ B", "A again ~ B"]
    with pytest.raises(ValueError, match="2 images"):
        rad.relevance_similarity({"A": a}, x[:1])


def test_iteration_frames_are_the_attacks_snapshots():
    from advlib.attacks import attack

    model = make_model(seed=1, num_classes=3, size=64).eval()
    torch.manual_seed(0)
    x = torch.rand(3, 64, 64)
    spec = PRESETS["RAD"].replace(steps=3)
    frames = rad.iteration_frames(model, x, spec, show=(0, 1, 3, 7))
    assert [f["step"] for f in frames] == [0, 1, 3]  # step 7 is beyond the attack
    assert torch.equal(frames[0]["image"], x)
    assert torch.equal(frames[2]["image"], attack(model, x[None], None, spec)[0])
    assert frames[1]["map"].shape == (64, 64) and set(frames[1]["detections"]) >= {"boxes", "scores", "labels"}


def test_set_table_drop_in_points_against_direct_evaluation(tiny_test):
    from advlib.data import collate
    from advlib.evaluate import evaluate_voc

    x, t = collate([tiny_test[i] for i in range(4)])
    m = make_model().eval()
    noisy = (x + 0.2 * torch.rand_like(x)).clamp(0, 1)
    tab = rad.set_table({"a": m}, x, t, noisy, t, [str(i) for i in range(12)])
    with torch.no_grad():
        clean_map = evaluate_voc(m.detect(x), t, 12).map
        noisy_map = evaluate_voc(m.detect(noisy), t, 12).map
    assert list(tab.index) == ["a"]
    assert tab.loc["a", "clean"] == pytest.approx(clean_map) and tab.loc["a", "saved set"] == pytest.approx(noisy_map)
    assert tab.loc["a", "drop (points)"] == pytest.approx(100 * (clean_map - noisy_map))
