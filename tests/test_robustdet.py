"""RobustDet's detector and training recipe: built from a trained SSD it computes what the SSD
computes (all K kernels equal, BN folded) whatever the mixing; attacks reach the discriminator;
the recipe's training attack stays in the ε-ball, follows MTD's per-image choice recomputed here,
refreshes its originals every `steps` updates; the model cache rebuilds the architecture."""

from __future__ import annotations

import copy

import pytest
import torch

from advlib.attacks.mda import task_input_gradients
from advlib.data import collate
from advlib.losses import match_anchors, multibox_terms, ssd_loss
from advlib.models.aaconv import AAConv2d
from advlib.models.cfr import ProbConv2d
from advlib.models.robustdet import RobustDetector
from advlib.papers import robustdet
from advlib.train import TrainConfig, train
from conftest import make_model


def _randomised_bn(seed: int = 0):
    model = make_model(seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("cfr", [False, True])
def test_built_from_an_ssd_it_computes_the_ssd_whatever_the_mixing(cfr):
    ssd = _randomised_bn()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ssd(x)
    model = RobustDetector(copy.deepcopy(ssd), K=4, cfr=cfr).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.ssd.modules())
    assert sum(isinstance(m, AAConv2d) for m in model.ssd.modules()) == sum(
        isinstance(m, torch.nn.Conv2d) for m in ssd.modules()) + (1 if cfr else 0)  # + CFR's log-variance conv
    assert any(isinstance(m, ProbConv2d) for m in model.modules()) == cfr
    with torch.no_grad():
        for pi in (None, torch.softmax(torch.randn(3, 4), -1), torch.eye(4)[[0, 3, 1]]):
            out = model(x, mixing=pi)
            assert torch.allclose(out.cls_logits, ref.cls_logits, atol=1e-4)
            assert torch.allclose(out.box_deltas, ref.box_deltas, atol=1e-4)
    assert torch.equal(model.anchors, ssd.anchors) and len(model.detect(x)) == 3


def test_attacks_differentiate_through_the_discriminator(tiny_train):
    model = RobustDetector(make_model(seed=0), K=4).eval()
    images, targets = collate([tiny_train[i] for i in range(4)])
    matched = match_anchors(model.anchors, targets, model.box_coder)
    x = images.clone().requires_grad_(True)
    loss = ssd_loss(multibox_terms(model(x), matched)).sum()
    loss.backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.aid.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.aid.parameters()) > 0


def test_training_attack_stays_in_the_ball_picks_per_image_and_refreshes(tiny_train):
    torch.manual_seed(0)
    rec = robustdet.RobustDetRecipe(steps=2, eps=8 / 255)
    model = rec.prepare_model(make_model(seed=0))
    batches = [collate([tiny_train[i] for i in range(k * 4, k * 4 + 4)]) for k in range(3)]
    origins = []
    for images, targets in batches:
        prev = None if rec.state is None or rec.state["t"] >= rec.steps else rec.state["adv"].clone()
        # the expected next iterate, recomputed here: one signed step per task domain from the
        # current iterate, projected, then per image the larger multibox loss
        cur = images if prev is None else prev
        origin = images if prev is None else rec.state["origin"]
        tg = targets if prev is None else rec.state["targets"]
        matched = match_anchors(model.anchors, tg, model.box_coder)
        model.eval()
        g_cls, g_loc = task_input_gradients(model, cur, matched)
        cands = [torch.min(torch.max(cur + 8 / 255 * g.sign(), origin - 8 / 255), origin + 8 / 255).clamp(0, 1)
                 for g in (g_cls, g_loc)]
        with torch.no_grad():
            losses = [ssd_loss(multibox_terms(model(c), matched)) for c in cands]
        expected = torch.where((losses[0] >= losses[1]).view(-1, 1, 1, 1), cands[0], cands[1])
        loss = rec(model, images, targets)
        assert torch.isfinite(loss) and loss.requires_grad
        assert torch.allclose(rec.state["adv"], expected, atol=1e-6)
        assert (rec.state["adv"] - rec.state["origin"]).abs().max() <= 8 / 255 + 1e-6
        origins.append(rec.state["origin"].clone())
    assert torch.equal(origins[0], origins[1]) and torch.equal(origins[2], batches[2][0])  # refreshed after 2


def test_model_cache_rebuilds_the_architecture(tiny_voc, tmp_path):
    from advlib.experiment import Experiment

    exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", zoo_root=tmp_path, progress=False)
    std_cfg = TrainConfig(epochs=1, batch_size=8, augment=False)
    cfg = TrainConfig(epochs=1, batch_size=4, augment=False)
    rec = robustdet.RobustDetRecipe(steps=2)
    tm = exp.trained(rec, parent="std", parent_cfg=std_cfg, cfg=cfg, train_images=8)
    assert isinstance(tm.model, RobustDetector)
    again = exp.trained(robustdet.RobustDetRecipe(steps=2), parent="std", parent_cfg=std_cfg, cfg=cfg, train_images=8)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = tm.model.eval()(x), again.model.eval()(x)
    assert torch.equal(a.cls_logits, b.cls_logits) and again.key == tm.key
    assert sum(h["iterations"] for h in tm.meta["history"]) == 2


def test_resume_restores_the_attack_state(tiny_train, tmp_path):
    """A run killed after epoch 1 and resumed in a new process ends with the same weights and
    the same adversarial iterate as the uninterrupted run (the attack state is checkpointed)."""
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="sgd", lr=1e-3, augment=False, seed=1, warmup_frac=0.0)
    sub = torch.utils.data.Subset(tiny_train, range(12))  # 3 updates per epoch, attack refreshed every 2

    def run(ckpt, **kw):
        rec = robustdet.RobustDetRecipe(steps=2)
        model = rec.prepare_model(make_model(seed=0))
        train(model, sub, rec, cfg, checkpoint_dir=tmp_path / ckpt, progress=False, **kw)
        return model, rec

    ref, rec_ref = run("a")
    run("b", stop_after_epochs=1)
    resumed, rec_b = run("b")
    assert torch.equal(rec_ref.state["adv"], rec_b.state["adv"]) and rec_ref.state["t"] == rec_b.state["t"]
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()))


def test_beyond_the_paper_attacks_differentiate_through_what_they_say(tiny_train):
    from advlib.attacks import pgd
    from advlib.attacks.objectives import OBJECTIVES
    from advlib.losses import cls_loss

    model = RobustDetector(make_model(seed=0), K=4).eval()
    images, targets = collate([tiny_train[i] for i in range(3)])
    matched = match_anchors(model.anchors, targets, model.box_coder)
    fixed = OBJECTIVES.build("fixed-mixing", reducer="cls")
    st = fixed.prepare(model, images, targets)
    with torch.no_grad():
        assert torch.allclose(st.pi_clean, model.aid(images))
    x = (images + 0.01).clamp(0, 1).requires_grad_(True)
    fixed.loss(model, x, st).sum().backward()
    assert all(p.grad is None for p in model.aid.parameters())  # the discriminator is not in the graph
    ev = OBJECTIVES.build("aid-evasion", reducer="cls", weight=5.0)
    st = ev.prepare(model, images, targets)
    with torch.no_grad():
        got = ev.loss(model, x, st)
        pi = model.aid(x)
        want = cls_loss(multibox_terms(model(x), matched)) - 5.0 * ((pi - st.pi_clean) ** 2).sum(1)
    assert torch.allclose(got, want, atol=1e-5)
    from advlib.attacks import attack
    out = attack(model, images, targets, pgd("aid-evasion", steps=2, reducer="cls"))
    assert (out - images).abs().max() <= 8 / 255 + 1e-6


def test_budgets_and_variants():
    with pytest.raises(ValueError, match="invalid RobustDet budget"):
        robustdet.RobustDetBudget(train_images=None, epochs=0)
    with pytest.raises(ValueError, match="unknown RobustDet variant"):
        robustdet.trained(None, robustdet.budget("default"), "RobustDet-XL")
    assert robustdet.budget("coco") == robustdet.BUDGETS["default"]
    assert set(robustdet.VARIANTS) == {"RobustDet", "RobustDet*", "RobustDet w/o L_aid", "RobustDet* w/o L_re"}
