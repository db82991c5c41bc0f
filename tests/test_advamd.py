"""AdvAmd (notebook 04): α and Ā by hand, object predictions on a hand-made output, L_A by hand,
the stage-2 loss against a second computation on a copy of the model (BN routes included), the
distillation loss's gradient in closed form, stage 1's perturbations and its disk cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from advlib.data import collate
from advlib.losses import Matched, Terms, match_targets, multibox_terms, ssd_loss
from advlib.models.auxbn import dual_bns, use_bn
from advlib.models.retinanet import FocalOutput
from advlib.models.ssd import DenseOutput
from advlib.papers import advamd as am
from conftest import make_model


# ------------------------------------------------------------------ α and Ā
def test_attack_difficulty_and_vulnerability_by_hand():
    # 3 classes; class 1: 4 objects right before, of which 2 -> class 2, 1 -> class 3, 1 kept;
    # class 2: 2 right before, both kept; class 3: 1 right before -> class 1; one wrong-before object ignored
    true = torch.tensor([1, 1, 1, 1, 2, 2, 3, 3])
    before = torch.tensor([1, 1, 1, 1, 2, 2, 3, 1])
    after = torch.tensor([2, 2, 3, 1, 2, 2, 1, 2])
    alpha, correct = am.attack_difficulty(true, before, after, 3)
    want = 1 - np.array([[1 / 4, 2 / 4, 1 / 4], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(alpha.numpy(), want)
    np.testing.assert_array_equal(correct.numpy(), [4, 2, 1])
    # eq. 6 by hand: Ā_k = 1 - (Σ_{i≠k} α_k^i + Σ_{j≠k} α_j^k) / (2(N-1)), N = 3
    abar = am.vulnerability(alpha).numpy()
    a = want
    for k in range(3):
        s = sum(a[k, i] for i in range(3) if i != k) + sum(a[j, k] for j in range(3) if j != k)
        assert abar[k] == pytest.approx(1 - s / 4)
    # the closed form of the module docstring: (Σ_{i≠k} r_k^i + Σ_{j≠k} r_j^k) / (2(N-1))
    r = 1 - a
    np.testing.assert_allclose(abar, [(r[k].sum() - r[k, k] + r[:, k].sum() - r[k, k]) / 4 for k in range(3)])
    with pytest.raises(ValueError):
        am.vulnerability(torch.ones(1, 1))


class _FixedOutput(nn.Module):
    """A 'detector' whose output is a fixed tensor (for hand-made predictions)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return DenseOutput(self.logits, torch.zeros(*self.logits.shape[:2], 4))


def test_object_predictions_by_hand():
    # one image, 4 anchors, 2 classes (+ background); object 0 (class 1) on anchors 0, 1; object 1
    # (class 2) on anchor 3; anchor 2 background. Softmax by hand picks the classes below.
    logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [0.0, 3.0, 1.0]]])
    m = Matched(labels=torch.tensor([[1, 1, 0, 2]]), object_index=torch.tensor([[0, 0, -1, 1]]),
                box_targets=torch.zeros(1, 4, 4), object_labels=torch.tensor([[1, 2]]), num_objects=torch.tensor([2]))
    true, pred = am.object_predictions(_FixedOutput(logits), torch.zeros(1, 3, 8, 8), m)
    p = torch.softmax(logits[0], -1)[:, 1:]
    assert true.tolist() == [1, 2]
    assert pred.tolist() == [int(p[[0, 1]].mean(0).argmax()) + 1, int(p[3].argmax()) + 1] == [1, 1]
    # RetinaNet's sigmoid scores for a focal-family output
    model = _FixedOutput(logits)
    model.forward = lambda images: FocalOutput(logits, torch.zeros(1, 4, 4))
    _, pred = am.object_predictions(model, torch.zeros(1, 3, 8, 8), m)
    assert pred.tolist() == [1, 1]


# ------------------------------------------------------------------ L_A
def test_weighted_multibox_by_hand():
    terms = Terms(cls=torch.tensor([[1.0, 2.0, 3.0, 4.0]]), loc=torch.tensor([[0.5, 0.0, 0.25, 0.0]]),
                  positive=torch.tensor([[True, False, True, False]]),
                  hard_negative=torch.tensor([[False, True, False, False]]),
                  object_index=torch.tensor([[0, -1, 1, -1]]), labels=torch.tensor([[2, 0, 1, 0]]),
                  object_labels=torch.tensor([[2, 1]]), num_positive=torch.tensor([2.0]))
    w = torch.tensor([0.1, 0.3])  # Ā of class 1, class 2
    # positives: anchor 0 (class 2, weight 0.3) and anchor 2 (class 1, weight 0.1); hard negative unweighted
    want = (0.3 * 1.0 + 2.0 + 0.1 * 3.0 + 0.5 + 0.25) / 2
    assert float(am.weighted_multibox(terms, w)) == pytest.approx(want)
    assert float(am.weighted_multibox(terms, torch.ones(2))) == pytest.approx(float(ssd_loss(terms)))


# ------------------------------------------------------------------ stage 1 and stage 2
def _stage1(model, x, targets, eps=0.03, kind="FGSM"):
    return am.compute_stage1(model, x, targets, am.setting_spec(kind, eps), am.PHI[kind], key="test")


def test_stage1_perturbations_are_in_float_within_eps_and_looked_up_by_id(tiny_train):
    model = make_model().eval()
    x, t = collate([tiny_train[i] for i in range(6)])
    s1 = _stage1(model, x, t, eps=0.01, kind="PGD")
    assert s1.delta.dtype == torch.float16 and s1.delta.shape == x.shape
    assert float(s1.delta.float().abs().max()) <= 0.01 + 1e-4
    levels = torch.unique((s1.delta.float() * 255).round()).numel()
    assert levels > 5 and not torch.allclose(s1.delta.float() * 255, (s1.delta.float() * 255).round(), atol=1e-3)
    assert s1.alpha.shape == (12, 12) and ((s1.abar >= 0) & (s1.abar <= 1)).all()
    order = [3, 0]
    got = s1.lookup([t[i] for i in order], x[order])
    torch.testing.assert_close(got, s1.delta[order].float())
    with pytest.raises(ValueError, match="augment=False"):
        s1.lookup([t[0]], x[[0]].flip(-1) * 0.9)
    with pytest.raises(ValueError, match="not in stage 1"):
        s1.lookup([{**t[0], "image_id": "nope"}], x[[0]])


@pytest.mark.parametrize("switches", [dict(mediate=False, aux_bn=False, amd_loss=False),
                                      dict(mediate=True, aux_bn=True, amd_loss=True),
                                      dict(mediate=False, aux_bn=True, amd_loss=False)])
def test_stage2_loss_equals_a_second_computation_on_a_copy(tiny_train, switches):
    vanilla = make_model().eval()
    x, t = collate([tiny_train[i] for i in range(4)])
    s1 = _stage1(vanilla, x, t)
    s1.abar = torch.linspace(0.05, 0.6, 12, dtype=torch.float64)  # visible weights
    recipe = am.AdvAmdRecipe("advamd", s1, **switches)
    model = recipe.prepare_model(copy.deepcopy(vanilla))
    assert (sum(1 for _ in dual_bns(model)) > 0) == switches["aux_bn"]
    ref = copy.deepcopy(model)
    got = recipe(model, x, t)

    ref.train()
    m = match_targets(ref, t)
    delta = s1.delta.float()
    want = ssd_loss(multibox_terms(ref(x), m)).mean()
    if switches["mediate"]:
        want = want + ssd_loss(multibox_terms(ref((x + 0.7 * delta).clamp(0, 1)), m)).mean()
    x_adv = (x + delta).clamp(0, 1)
    if switches["aux_bn"]:
        with use_bn(ref, "aux"):
            terms = multibox_terms(ref(x_adv), m)
    else:
        terms = multibox_terms(ref(x_adv), m)
    if switches["amd_loss"]:  # by hand: positives' classification weighted by Ā of their class
        w = torch.where(terms.positive, s1.abar.float()[(terms.labels - 1).clamp(min=0)], torch.ones_like(terms.cls))
        adv = ((terms.cls * w * (terms.positive | terms.hard_negative)).sum(1) + terms.loc.sum(1)) / terms.num_positive
    else:
        adv = ssd_loss(terms)
    torch.testing.assert_close(got, want + adv.mean(), rtol=1e-5, atol=1e-6)
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):  # the same BN statistics moved
        torch.testing.assert_close(a, b)
    assert recipe.spec()["stage1"] == "test"


def test_distillation_gradient_in_closed_form():
    torch.manual_seed(0)
    s = torch.randn(2, 5, 4, requires_grad=True)
    tch = torch.randn(2, 5, 4)
    T = 4.0
    loss = am.soft_class_loss(DenseOutput(s, None), DenseOutput(tch, None), T).sum()
    (g,) = torch.autograd.grad(loss, s)
    # d/dz [-T² Σ p log softmax(z/T)] = T (softmax(z/T) - p)
    torch.testing.assert_close(g, T * (torch.softmax(s / T, -1) - torch.softmax(tch / T, -1)))
    s2 = torch.randn(2, 5, 4, requires_grad=True)
    loss = am.soft_class_loss(FocalOutput(s2, None), FocalOutput(tch, None), T).sum()
    (g,) = torch.autograd.grad(loss, s2)
    want = T * (torch.sigmoid(s2 / T) - torch.sigmoid(tch / T))
    want[..., 0] = 0  # column 0 is no class
    torch.testing.assert_close(g, want)


def test_distillation_recipe_starts_from_its_teacher(tiny_train):
    vanilla = make_model().eval()
    x, t = collate([tiny_train[i] for i in range(4)])
    recipe = am.DistillRecipe("def-distill", temperature=5.0)
    with pytest.raises(RuntimeError, match="prepare_model"):
        recipe(vanilla, x, t)
    model = recipe.prepare_model(copy.deepcopy(vanilla))
    assert not any(p.requires_grad for p in recipe.teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())
    loss = recipe(model, x, t)
    loss.backward()
    assert torch.isfinite(loss) and recipe.spec()["temperature"] == 5.0


def test_stage1_disk_cache_round_trip(tiny_voc, tmp_path, monkeypatch):
    from advlib.experiment import Experiment

    monkeypatch.setenv("ADVLIB_CACHE_DIR", str(tmp_path / "cache"))
    exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", zoo_root=tmp_path / "zoo", progress=False)
    vanilla = make_model().eval()
    vanilla.zoo_key = "vanilla-test"
    spec = am.setting_spec("FGSM", 0.01)
    a = am.cached_stage1(exp, vanilla, spec, 0.7, 6)
    files = list((tmp_path / "cache" / "advamd").glob("*.pt"))
    assert len(files) == 1 and files[0].stem == a.key
    b = am.cached_stage1(exp, vanilla, spec, 0.7, 6)
    assert b.image_ids == a.image_ids == [str(exp.train_subset(6)[i][1]["image_id"]) for i in range(6)]
    assert torch.equal(a.delta, b.delta) and torch.equal(a.abar, b.abar) and b.spec == spec and b.phi == 0.7
    assert am.cached_stage1(exp, vanilla, am.setting_spec("FGSM", 0.1), 0.7, 6).key != a.key


def test_stage1_summary_by_hand():
    alpha = torch.tensor([[0.25, 0.5, 1.0], [1.0, 1.0, 0.8], [1.0, 1.0, 1.0]], dtype=torch.float64)
    s1 = am.Stage1("k", [], torch.zeros(0), torch.zeros(0), alpha, torch.tensor([4.0, 5.0, 0.0]),
                   am.vulnerability(alpha), am.setting_spec("FGSM", 0.01), 0.7)
    got = am.stage1_summary(s1)
    # flips out of class 1: 0.5 + 0 = 0.5 of 4 objects; class 2: 0 + 0.2 = 0.2 of 5 -> (2 + 1) / 9
    assert got["objects right before"] == 9 and got["flipped to another class"] == pytest.approx(3 / 9)
    assert got["mean Ā"] == pytest.approx(float(am.vulnerability(alpha).mean()))


def test_table3_and_seed_frames_by_hand():
    import pandas as pd

    from advlib.papers import advamd_claims as ac

    base = {"arch": "ssd", "seed": 0, "setting": "FGSM ε=0.01", "kind": "FGSM", "eps": 0.01}
    rows = [{**base, "defence": None, "mediate": None, "aux_bn": None, "amd_loss": None, "benign": 0.5,
             "adversarial": 0.3}]
    for i, (m, a, l_) in enumerate(ac.TABLE3_ORDER):
        rows.append({**base, "defence": "AdvAmd", "mediate": m, "aux_bn": a, "amd_loss": l_, "benign": 0.5 + i / 100,
                     "adversarial": 0.3 + i / 100})
    rows.append({**base, "defence": "Benign FT", "mediate": None, "aux_bn": None, "amd_loss": None, "benign": 0.52,
                 "adversarial": 0.31})
    df = pd.DataFrame(rows)
    t3 = ac.table3_frame(df, ["FGSM ε=0.01"])
    assert list(t3.index) == ["M", "A", "L", "M+A", "M+L", "A+L", "M+A+L"]
    assert t3.loc["A+L", "Δ benign FGSM ε=0.01"] == pytest.approx(0.05)
    assert t3.loc["M", "Δ adv FGSM ε=0.01"] == pytest.approx(-0.2)
    assert ac.table3_frame(df, []).empty
    long = ac.seed_frame(df, "FGSM ε=0.01")
    assert sorted(set(long.model)) == ["ssd AdvAmd", "ssd Benign FT", "ssd vanilla"]
    assert float(long[(long.model == "ssd AdvAmd") & (long.attack == "benign")]["map"].iloc[0]) == pytest.approx(0.56)
