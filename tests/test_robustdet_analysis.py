"""RobustDet's analyses (Figs. 1, 3, 4, 5, 7c), each against an independent computation: a
hand-rolled SGD step, a batched second implementation of the per-image layer gradients, a toy
detector whose gradient is known in closed form, hand-counted TP/FP orders, evaluate_voc."""

from __future__ import annotations

import copy

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from advlib.attacks import AttackSpec, attack
from advlib.cache import round_8bit
from advlib.data import collate
from advlib.evaluate import evaluate_voc
from advlib.losses import cls_loss, loc_loss, match_anchors, multibox_terms, ssd_loss
from advlib.models.robustdet import RobustDetector
from advlib.models.ssd import DenseOutput
from advlib.papers import robustdet_analysis as ra
from advlib.papers import robustdet_plots as rp
from conftest import make_model

matplotlib.use("Agg")

KINDS = ["ssd", "robustdet"]


def _model(kind: str, seed: int = 0):
    ssd = make_model(seed=seed)
    return ssd.eval() if kind == "ssd" else RobustDetector(ssd, K=2).eval()


def _batch(ds, start: int, n: int):
    return collate([ds[i] for i in range(start, start + n)])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------ Fig. 3
@pytest.mark.parametrize("kind", KINDS)
def test_no_step_no_change_and_one_step_matches_a_hand_rolled_sgd_step(tiny_train, kind):
    model = _model(kind).train()  # a training-mode model: the analysis must run in eval and restore train
    before_state = _state(model)
    (xa, ta), (xb, tb) = _batch(tiny_train, 0, 3), _batch(tiny_train, 3, 3)
    assert torch.equal(ra.loss_changes(model, xa, ta, xb, tb, steps=0, lr=0.1), torch.zeros(3))
    lr = 0.05
    got = ra.loss_changes(model, xa, ta, xb, tb, steps=1, lr=lr)
    assert model.training and _same_state(model, before_state)

    ref = copy.deepcopy(model).eval()  # by hand: gradient of the mean train loss, w -= lr * g
    ma = match_anchors(ref.anchors, ta, ref.box_coder)
    mb = match_anchors(ref.anchors, tb, ref.box_coder)
    with torch.no_grad():
        l0 = ssd_loss(multibox_terms(ref(xb), mb))
    params = [p for p in ref.parameters() if p.requires_grad]
    grads = torch.autograd.grad(ssd_loss(multibox_terms(ref(xa), ma)).mean(), params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= lr * g
        l1 = ssd_loss(multibox_terms(ref(xb), mb))
    assert got.shape == (3,) and (got != 0).any()
    torch.testing.assert_close(got, l1 - l0, rtol=1e-4, atol=1e-5)


def test_weights_and_grads_are_restored_after_an_exception(tiny_train, monkeypatch):
    model = _model("ssd")
    (xa, ta), (xb, tb) = _batch(tiny_train, 0, 2), _batch(tiny_train, 2, 2)
    before_state = _state(model)
    marker = torch.full_like(next(model.parameters()), 7.0)
    next(model.parameters()).grad = marker
    step = torch.optim.SGD.step

    def failing_step(self, *args, **kwargs):
        step(self, *args, **kwargs)  # the weights have moved when it fails
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.optim.SGD, "step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        ra.loss_changes(model, xa, ta, xb, tb, steps=2, lr=1.0)
    assert _same_state(model, before_state) and not model.training
    assert next(model.parameters()).grad is marker
    assert all(p.grad is None for p in list(model.parameters())[1:])


def test_three_settings_each_from_the_same_weights(tiny_train):
    model = _model("ssd")
    (xa, ta), (xb, tb) = _batch(tiny_train, 0, 2), _batch(tiny_train, 2, 3)
    adv_a, adv_b = (x.flip(-1) for x in (xa, xb))  # any other images stand in for "adversarial"
    out = ra.loss_change_histograms(model, xa, adv_a, ta, xb, adv_b, tb, steps=1, lr=0.05)
    assert list(out) == list(ra.SETTINGS) and all(v.shape == (3,) for v in out.values())
    torch.testing.assert_close(out["clean→adv"], ra.loss_changes(model, xa, ta, adv_b, tb, 1, 0.05))
    torch.testing.assert_close(out["adv→clean"], ra.loss_changes(model, adv_a, ta, xb, tb, 1, 0.05))
    torch.testing.assert_close(out["clean→clean"], ra.loss_changes(model, xa, ta, xb, tb, 1, 0.05))


# ------------------------------------------------------------------------------ Fig. 4
def test_entanglement_of_one_layer_matches_a_batched_second_implementation(tiny_train):
    model = _model("ssd")
    x, t = _batch(tiny_train, 0, 3)
    adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    df = ra.gradient_entanglement(model, x, adv, t)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert df["layer"].tolist() == names and df["n_images"].iloc[0] == 3
    # a coarse map's head gets no gradient from an image with no positive or hard-negative anchor on
    # it (g_adv = 0, R undefined): that image is left out of the layer's mean
    assert df["n_images"].between(0, 3).all()

    layer = dict(model.named_modules())["backbone.body.2.0"]
    matched = match_anchors(model.anchors, t, model.box_coder).repeat(2)
    losses = ssd_loss(multibox_terms(model(torch.cat([x, adv])), matched))  # [2N]: clean then adv
    r = []
    for i in range(3):
        gc, ga = (torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[j], list(layer.parameters()),
                                                                         retain_graph=True)]).double()
                  for j in (i, i + 3))
        r.append(float(gc @ ga / (ga @ ga)))
    row = df.set_index("layer").loc["backbone.body.2.0"]
    assert row["R_mean"] == pytest.approx(np.mean(r), rel=1e-4, abs=1e-6)
    assert row["R_std"] == pytest.approx(np.std(r), rel=1e-3, abs=1e-6)
    assert row["n_params"] == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_entanglement_is_one_when_the_adversarial_image_is_the_clean_one(tiny_train, kind):
    model = _model(kind).train()
    x, t = _batch(tiny_train, 0, 2)
    df = ra.gradient_entanglement(model, x, x.clone(), t)
    assert model.training
    seen = df[df["n_images"] > 0]
    assert len(seen) > 10 and df["R_mean"][df["n_images"] == 0].isna().all()
    np.testing.assert_allclose(seen["R_mean"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(seen["R_std"], 0.0, atol=1e-6)
    if kind == "robustdet":  # the discriminator's convolutions come last; exclude drops them
        assert df["layer"].iloc[0].startswith("ssd.") and df["layer"].iloc[-1].startswith("aid.")
        kept = ra.gradient_entanglement(model, x, x, t, exclude=("aid",))["layer"]
        assert not kept.str.startswith("aid").any() and len(kept) == 21


class _ToyDetector(nn.Module):
    """Box offsets = the spatial mean of one 1x1 convolution (weight w, bias b); logits 0. With
    offsets far above every target, smooth-L1 is linear: the loss gradient is 4 * [channel means, 1]."""

    def __init__(self, ref):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1000.0)
            self.conv.bias.zero_()
        self.anchors, self.box_coder, self.num_classes = ref.anchors, ref.box_coder, ref.num_classes

    def forward(self, x):
        s = self.conv(x).mean((1, 2, 3))  # [B]
        a = self.anchors.shape[0]
        return DenseOutput(torch.zeros(x.shape[0], a, self.num_classes + 1), s[:, None, None].expand(-1, a, 4))


def test_entanglement_by_hand_on_a_toy_detector(tiny_train):
    _, t = _batch(tiny_train, 0, 1)
    clean = torch.tensor([0.2, 0.4, 0.0])[None, :, None, None].expand(1, 3, 64, 64)
    adv = torch.tensor([0.6, 0.0, 0.2])[None, :, None, None].expand(1, 3, 64, 64)
    df = ra.gradient_entanglement(_ToyDetector(make_model()), clean, adv, t)
    # g = 4 * (m, 1): R = (m_c . m_a + 1) / (|m_a|^2 + 1) = (0.12 + 1) / (0.40 + 1) = 0.8
    # (dividing by |g_clean|^2 instead would give 1.12 / 1.2 = 0.933)
    assert df["layer"].tolist() == ["conv"] and df["n_params"].tolist() == [4]
    assert df["R_mean"].iloc[0] == pytest.approx(0.8, rel=1e-5)  # float32 gradients


# ------------------------------------------------------------------------------ Fig. 5 right
@pytest.mark.parametrize("kind", KINDS)
def test_task_loss_changes_vanish_at_zero_eps_and_are_positive_under_attack(tiny_train, kind):
    model = _model(kind)
    x, t = _batch(tiny_train, 0, 3)
    zero = {k: AttackSpec(k, 0.0, 2 / 255, 2) for k in ("cls", "loc")}
    df = ra.task_loss_changes(model, x, t, zero["cls"], zero["loc"])
    assert list(df.columns[:2]) == ["dL_cls", "dL_loc"] and len(df) == 3
    np.testing.assert_allclose(df[["dL_cls", "dL_loc"]], 0.0, atol=1e-6)
    real = {k: AttackSpec(k, 8 / 255, 2 / 255, 3) for k in ("cls", "loc")}
    df = ra.task_loss_changes(model, x, t, real["cls"], real["loc"], rounding=False)
    assert (df["dL_cls"] > 0).all() and (df["dL_loc"] > 0).all() and not model.training


def test_task_loss_changes_by_hand_for_one_image(tiny_train):
    model = _model("ssd")
    x, t = _batch(tiny_train, 0, 3)
    spec_cls, spec_loc = AttackSpec("cls", 8 / 255, 2 / 255, 2, seed=3), AttackSpec("loc", 8 / 255, 2 / 255, 2, seed=3)
    df = ra.task_loss_changes(model, x, t, spec_cls, spec_loc)
    x1, t1 = x[1:2], t[1:2]  # image 1 alone (the engine's per-image generators make it equal)
    m1 = match_anchors(model.anchors, t1, model.box_coder)
    with torch.no_grad():
        terms = multibox_terms(model(x1), m1)
        a_cls = multibox_terms(model(round_8bit(attack(model, x1, t1, spec_cls))), m1)
        a_loc = multibox_terms(model(round_8bit(attack(model, x1, t1, spec_loc))), m1)
    assert df["dL_cls"][1] == pytest.approx(float(cls_loss(a_cls) - cls_loss(terms)), rel=1e-4, abs=1e-5)
    assert df["dL_loc"][1] == pytest.approx(float(loc_loss(a_loc) - loc_loss(terms)), rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------------------ Fig. 7c
@pytest.mark.parametrize("kind", KINDS)
def test_confidence_scores_are_the_detections_above_the_threshold(tiny_train, kind):
    model = _model(kind)
    with torch.no_grad():  # sharper class logits so that some scores pass 0.3
        for name, m in model.named_modules():
            if "classification_head.module_list." in name and hasattr(m, "weight"):
                m.weight.mul_(300.0)
    x, _ = _batch(tiny_train, 0, 4)
    got = ra.confidence_scores(model, x, 0.3)
    dets = model.detect(x, score_thresh=0.2)  # a lower threshold, then filtered by hand
    cap = (model.ssd if kind == "robustdet" else model).detections_per_img
    assert all(len(d["scores"]) < cap for d in dets)  # the per-image cap cut nothing
    by_hand = torch.cat([d["scores"][d["scores"] > 0.3] for d in dets]).double().numpy()
    assert got.size > 0 and (got > 0.3).all()
    np.testing.assert_allclose(np.sort(got), np.sort(by_hand), rtol=1e-6)


# ------------------------------------------------------------------------------ Fig. 1
def _det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_pooled_pr_by_hand():
    a, b, far = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
    targets = [{"boxes": torch.tensor([a, b], dtype=torch.float32), "labels": torch.tensor([1, 2]),
                "difficult": torch.tensor([False, False])},
               {"boxes": torch.tensor([a, far], dtype=torch.float32), "labels": torch.tensor([1, 1]),
                "difficult": torch.tensor([False, True])}]
    dets = [_det([a, a, b, a], [0.9, 0.6, 0.8, 0.7], [1, 1, 2, 2]),  # TP, duplicate FP, TP, FP (wrong place)
            _det([a, far, a], [0.5, 0.95, 0.85], [1, 1, 2])]  # TP, ignored (difficult), FP (no class 2)
    out = ra.pooled_pr(dets, targets, num_classes=2)
    # pooled by score: .9 TP, .85 FP, .8 TP, .7 FP, .6 FP, .5 TP; npos = 3
    np.testing.assert_allclose(out["scores"], [0.9, 0.85, 0.8, 0.7, 0.6, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["precision"], [1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 3 / 6])
    np.testing.assert_allclose(out["recall"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])


def test_pooled_pr_with_one_class_is_evaluate_vocs_curve():
    g = torch.Generator().manual_seed(0)
    targets, dets = [], []
    for _ in range(5):
        xy = torch.rand(3, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 10 + torch.rand(3, 2, generator=g) * 10], 1)  # [3, 4]
        targets.append({"boxes": boxes, "labels": torch.ones(3, dtype=torch.int64),
                        "difficult": torch.tensor([False, False, True])})
        jitter = boxes.repeat(2, 1) + torch.randn(6, 4, generator=g) * 3  # some hit, some miss, duplicates
        scores = (torch.rand(6, generator=g) * 10).round() / 10  # ties
        dets.append({"boxes": jitter, "scores": scores, "labels": torch.ones(6, dtype=torch.int64)})
    out = ra.pooled_pr(dets, targets, num_classes=1)
    ref = evaluate_voc(dets, targets, num_classes=1)
    assert 0 < out["recall"][-1] < 1 and out["precision"].min() < 1
    np.testing.assert_array_equal(out["precision"], ref.precision[0])
    np.testing.assert_array_equal(out["recall"], ref.recall[0])


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_pr_curve_of_a_model(tiny_test, kind):
    x, t = _batch(tiny_test, 0, 4)
    out = ra.pooled_pr_curve(_model(kind), x, t, num_classes=12)
    assert out["precision"].shape == out["recall"].shape == out["scores"].shape
    assert (np.diff(out["recall"]) >= 0).all() and (np.diff(out["scores"]) <= 0).all()


# ------------------------------------------------------------------------------ figures
def test_figures_have_one_axis_per_panel():
    import matplotlib.pyplot as plt

    changes = {m: {s: torch.randn(8) for s in ra.SETTINGS} for m in ("SSD", "RobustDet")}
    fig = rp.plot_loss_change_histograms(changes)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 6
    fig2, grid = plt.subplots(2, 3)
    assert rp.plot_loss_change_histograms(changes, ax_grid=grid) is fig2
    import pandas as pd

    frame = pd.DataFrame({"layer": ["a", "b"], "R_mean": [0.5, -0.1], "R_std": [0.1, 0.2], "n_images": [2, 2]})
    fig3 = rp.plot_gradient_entanglement({"SSD": frame, "RobustDet": frame})
    assert isinstance(fig3, matplotlib.figure.Figure) and len(fig3.axes) == 2
    plt.close("all")


# ------------------------------------------------------ the loss-change calibration and AID discrimination
def test_calibration_picks_the_smallest_lr_whose_hand_rolled_steps_lower_the_batch_loss_enough(tiny_train):
    model = _model("ssd")
    state = _state(model)
    xa, ta = _batch(tiny_train, 0, 4)
    lrs, steps = (1e-4, 1e-2, 1e-1), 2

    def hand_fall(lr: float) -> float:  # m plain SGD steps on the batch's mean loss, by hand
        ref = copy.deepcopy(model).eval()
        ma = match_anchors(ref.anchors, ta, ref.box_coder)
        with torch.no_grad():
            before = ssd_loss(multibox_terms(ref(xa), ma)).mean()
        for _ in range(steps):
            ref.zero_grad()
            ssd_loss(multibox_terms(ref(xa), ma)).mean().backward()
            with torch.no_grad():
                for p in ref.parameters():
                    if p.grad is not None:
                        p -= lr * p.grad
        with torch.no_grad():
            after = ssd_loss(multibox_terms(ref(xa), ma)).mean()
        return float((before - after) / before)

    falls = [hand_fall(lr) for lr in lrs]
    assert falls[0] < falls[-1] and falls[-1] > 0  # the grid straddles the midpoint below
    fall = (falls[0] + falls[-1]) / 2
    want = next(lr for lr, f in zip(lrs, falls) if f >= fall)
    chosen, table = ra.calibrate_loss_change(model, xa, ta, steps, lrs, fall)
    assert chosen == want and _same_state(model, state)
    np.testing.assert_allclose(table["fall"], falls, rtol=1e-3, atol=1e-6)
    assert list(table["lr"]) == list(lrs)
    chosen, _ = ra.calibrate_loss_change(model, xa, ta, steps, lrs[:1], 0.5)
    assert chosen is None
    with pytest.raises(ValueError):
        ra.calibrate_loss_change(model, xa, ta, steps, (), 0.1)


class _FixedAID(nn.Module):
    """A discriminator whose mixing is the image's mean pixel in slot 1 (by hand)."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([1 - m, m], 1)


def test_aid_discrimination_by_hand():
    model = nn.Module()
    model.aid = _FixedAID()
    model.register_parameter("w", nn.Parameter(torch.zeros(1)))
    full = lambda vals: torch.stack([torch.full((3, 4, 4), v) for v in vals])  # noqa: E731
    ca, aa = full([0.1, 0.2]), full([0.8, 0.9])  # centroids: [0.85, 0.15] clean, [0.15, 0.85] adversarial
    cb, ab = full([0.1, 0.6, 0.3]), full([0.7, 0.4, 0.9])  # right: clean 0.1, 0.3; adv 0.7, 0.9 -> 4 of 6
    got = ra.aid_discrimination(model, ca, aa, cb, ab)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["clean_max"] == pytest.approx(np.mean([0.9, 0.6, 0.7]))
    assert got["adv_max"] == pytest.approx(np.mean([0.7, 0.6, 0.9]))

    def d(p, q):  # the official pdist_js of two rows, by hand: mean over K of p log p - p log m + q log q - q log m
        p, q = np.array(p), np.array(q)
        m = (p + q) / 2
        return float(np.mean(p * np.log(p) - p * np.log(m) + q * np.log(q) - q * np.log(m)))

    want = np.mean([d([0.9, 0.1], [0.3, 0.7]), d([0.4, 0.6], [0.6, 0.4]), d([0.7, 0.3], [0.1, 0.9])])
    assert got["js"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="discriminator"):
        ra.aid_discrimination(nn.Linear(1, 1), ca, aa, cb, ab)
