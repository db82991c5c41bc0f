"""Free adversarial training in the one loop (CWAT Algorithm 1), the pass counter, and the CWAT
recipes: m = 1 and ε = 0 is a standard step, δ stays in the ε-ball and follows ε·sign of the
attack gradient (recomputed here), the passes counted match what an independent wrapper sees."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import advlib.papers.cwat as cwat
import advlib.papers.mtd  # noqa: F401  (registers mtd)
from advlib.attacks import pgd
from advlib.data import collate
from advlib.losses import REDUCERS, match_anchors, multibox_terms
from advlib.passes import PassCounter
from advlib.recipes import AdversarialRecipe, FreeAdversarialRecipe, make_recipe
from advlib.train import StandardRecipe, TrainConfig, train
from conftest import make_model

CFG = TrainConfig(epochs=1, batch_size=8, optimizer="sgd", lr=1e-2, weight_decay=5e-4, augment=False, seed=1,
                  warmup_frac=0.0)


def _batches(ds, n=3, bs=4):
    return [collate([ds[i] for i in range(k * bs, (k + 1) * bs)]) for k in range(n)]


def test_free_at_with_one_replay_and_zero_eps_is_a_standard_step(tiny_train):
    a, b = make_model(seed=0), make_model(seed=0)
    train(a, tiny_train, StandardRecipe(), CFG, progress=False)
    free = FreeAdversarialRecipe("free", ("cwa",), eps=0.0, replays=1, beta=6.0)
    train(b, tiny_train, free, CFG, progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6, rtol=0), k
    assert float(free.delta.abs().max()) == 0.0


@settings(max_examples=6, deadline=None)
@given(eps_px=st.integers(0, 16), replays=st.integers(1, 3), domains=st.sampled_from([("cwa",), ("cls", "loc")]))
def test_delta_stays_in_the_ball_and_follows_the_sign_rule(tiny_train, eps_px, replays, domains):
    eps = eps_px / 255
    model = make_model(seed=2)
    rec = FreeAdversarialRecipe("free", domains, eps=eps, replays=replays)
    for images, targets in _batches(tiny_train):
        for _ in range(replays):
            before = rec.delta
            rec(model, images, targets)
            assert rec.delta.abs().max() <= eps + 1e-7
            if before is None:
                before = torch.zeros_like(rec.delta)
            # the attack gradient recomputed here at the previous δ: all domains in one train-mode
            # batch (BN statistics over the stacked domains, as the recipe forwards them)
            deltas = [before[j].clone().requires_grad_(True) for j in range(len(domains))]
            model.train()
            out = model(torch.cat([(images + d).clamp(0, 1) for d in deltas]))
            matched = match_anchors(model.anchors, list(targets) * len(domains), model.box_coder)
            terms = multibox_terms(out, matched)
            b = images.shape[0]
            loss = sum(REDUCERS[d](terms)[j * b:(j + 1) * b].sum() for j, d in enumerate(domains))
            grads = torch.autograd.grad(loss, deltas)
            expected = [(before[j] + eps * g.sign()).clamp(-eps, eps) for j, g in enumerate(grads)]
            # δ is carried: the update starts from the previous call's δ (across minibatches too)
            assert torch.allclose(rec.delta, torch.stack(expected), atol=1e-6)
    rec(model, images[:2], targets[:2])  # a new batch shape resets δ
    assert rec.delta.shape[1] == 2 and rec.delta.abs().max() <= eps


class Counting(nn.Module):
    """Counts its own forward calls; everything else is the wrapped detector's."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.mark.parametrize("recipe, fwd, bwd", [
    (StandardRecipe(), 1, 1),
    (AdversarialRecipe("cls3", pgd("cls", steps=3)), 4, 4),  # 3 attack steps + the update
    ("mtd2", 2 * 2 + 2 + 1, 2 * 2 + 1),  # two 2-step task attacks, two forwards to pick, the update
    (FreeAdversarialRecipe("free", ("cwa",), replays=2), 1, 2),  # Algorithm 1: 1 forward, 2 backward
    (FreeAdversarialRecipe("mfast", ("cls", "loc"), replays=2), 1, 2),
])
def test_pass_counter_counts_what_runs(tiny_train, monkeypatch, recipe, fwd, bwd):
    if recipe == "mtd2":
        recipe = make_recipe("mtd", steps=2)
    backward_calls = []
    grad, tensor_backward = torch.autograd.grad, torch.Tensor.backward
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backward_calls.append(1) or grad(*a, **k))
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: backward_calls.append(1) or tensor_backward(*a, **k))
    model = Counting(make_model(seed=0))
    hist = train(model, tiny_train, recipe, CFG, progress=False)
    iters = hist[0]["iterations"]
    assert iters == (len(tiny_train) // CFG.batch_size) * getattr(recipe, "replays", 1)
    assert model.calls == fwd * iters and len(backward_calls) == bwd * iters
    assert hist[0]["forward_per_iter"] == model.calls / iters
    assert hist[0]["backward_per_iter"] == len(backward_calls) / iters


def test_pass_counter_counts_a_loc_only_backward_once():
    model = make_model(seed=0).eval()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    with PassCounter(model) as c:
        out = model(x)
        torch.autograd.grad(out.box_deltas.sum(), x, retain_graph=True)  # reaches box_deltas only
        (out.cls_logits.sum() + out.box_deltas.sum()).backward()  # both outputs, one pass
        with torch.no_grad():
            model(x)
    assert c.counts() == {"forward": 2, "backward": 2, "images": 4}
    model(x).cls_logits.sum().backward()  # the hook is gone
    assert c.backward == 2


def test_cwat_recipes_train_on_the_evaluation_objectives():
    assert make_recipe("toat").attack_spec.objective == "toa"
    assert dict(make_recipe("toat", beta_cls=2, beta_loc=4).attack_spec.params) == {"beta_cls": 2.0, "beta_loc": 4.0}
    assert make_recipe("owat").attack_spec.objective == "owa" and make_recipe("cwat").attack_spec.objective == "cwa"
    assert make_recipe("cwat").attack_spec.steps == 10 and make_recipe("cwat", steps=3).attack_spec.steps == 3
    assert make_recipe("cwat-fast").domains == ("cwa",) and make_recipe("cwat-fast").replays == cwat.FAST_REPLAYS
    assert make_recipe("mtd-fast").domains == ("cls", "loc")
    assert cwat.toat_name(math.inf, math.inf) == "TOAT-inf" and cwat.toat_name(2, 4) == "TOAT-2-4"
    with pytest.raises(ValueError, match="gamma"):
        FreeAdversarialRecipe("x", ("cwa",), gamma=1.0)
    with pytest.raises(ValueError, match="nope"):
        FreeAdversarialRecipe("x", ("nope",))


def test_clip_rates_by_hand(tiny_test):
    model = make_model(seed=0).eval()
    images, targets = collate([tiny_test[i] for i in range(4)])
    rates = cwat.clip_rates(model, images, targets, None, betas=[0.0, 1e9])
    assert (rates.loc[1e9] == 0).all()  # nothing exceeds a huge β
    assert rates.loc[0.0, "image L_cls"] == 1.0  # every image has a positive classification loss
    with torch.no_grad():
        terms = multibox_terms(model(images), match_anchors(model.anchors, targets, model.box_coder))
    # objects' mean positive-anchor loss, recomputed with a loop
    vals = []
    for i, t in enumerate(targets):
        for o in range(len(t["labels"])):
            sel = terms.positive[i] & (terms.object_index[i] == o)
            vals.append(float(terms.cls[i][sel].mean()))
    beta = sorted(vals)[len(vals) // 2]
    assert cwat.clip_rates(model, images, targets, None, [beta]).loc[beta, "object l_cls"] == pytest.approx(
        sum(v > beta for v in vals) / len(vals))


def test_classes_per_image_groups(tiny_test):
    images, targets = collate([tiny_test[i] for i in range(8)])
    n = cwat.classes_per_image(targets)
    assert list(n) == [len(set(t["labels"].tolist())) for t in targets]
    table = cwat.ap_by_classes_in_image(make_model(seed=0).eval(), images, targets, 12)
    assert table["images"].sum() == 8
    assert list(table.index) == ["1", "2", "3", "4+"]


def test_row_names_say_how_a_model_was_trained_and_budgets_keep_whole_passes():
    assert cwat.model_name("cwat", 10) == "CWAT" and cwat.model_name("owat", 1) == "OWAT-1step"
    assert cwat.model_name("toat", 3, beta_cls=2, beta_loc=4) == "TOAT-2-4-PGD3"
    assert cwat.model_name("toat", 1, beta_cls=math.inf, beta_loc=math.inf) == "TOAT-inf-1step"
    assert cwat.model_name("cwat-fast", 1) == "CWAT-fast"
    with pytest.raises(ValueError, match="no CWAT row name"):
        cwat.model_name("std")
    with pytest.raises(ValueError, match="multiples of replays"):
        cwat.CWATBudget(train_steps=1, epochs=6, ablation=(), seeds=(0,), cost_images=8, cost_epochs=4)
    for b in cwat.BUDGETS.values():
        assert b.epochs % b.replays == 0 and b.cost_epochs % b.replays == 0


def test_free_at_delta_survives_a_kill_and_resume(tiny_train, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=1e-2, augment=False, seed=1, warmup_frac=0.0)
    ref, rec = make_model(seed=0), FreeAdversarialRecipe("free", ("cwa",), replays=2)
    train(ref, tiny_train, rec, cfg, checkpoint_dir=tmp_path / "a", progress=False)
    m = make_model(seed=0)
    train(m, tiny_train, FreeAdversarialRecipe("free", ("cwa",), replays=2), cfg, checkpoint_dir=tmp_path / "b",
          progress=False, stop_after_epochs=1)
    m2, rec2 = make_model(seed=0), FreeAdversarialRecipe("free", ("cwa",), replays=2)  # a new process
    train(m2, tiny_train, rec2, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert torch.equal(rec.delta, rec2.delta)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), m2.state_dict().values()))


def test_cwat_model_helpers_by_hand():
    cb = cwat.CWATBudget(train_steps=1, epochs=4, ablation=((math.inf, math.inf), (2, 4)), seeds=(0,),
                         cost_images=8, cost_epochs=4)
    assert cwat.paper_names(cb) == {"TOAT-6-1step": "TOAT-6", "OWAT-1step": "OWAT", "CWAT-1step": "CWAT",
                                    "TOAT-inf-1step": "TOAT-inf", "TOAT-2-4-1step": "TOAT-2-4"}
    import pandas as pd
    cost = pd.DataFrame({"seconds": [80.0, 5.0], "seconds_per_epoch": [20.0, 5.0]}, index=["MTD-PGD10", "CWAT-fast"])
    assert cwat.speedups(cost) == {"per_epoch_speedup": 4.0, "schedule_speedup": 16.0}
    calls = []

    class FakeExp:
        train_set, test_set = range(30), range(12)

        def finetune_config(self, epochs, seed=None):
            return ("ft", epochs, seed)

        def trained(self, recipe, **kw):
            calls.append((recipe.spec(), kw))

    cwat.trained(FakeExp(), cb, "cwat", seed=2)
    cwat.trained(FakeExp(), cb, "cwat-fast")
    sub = dataclasses.replace(cb, train_images=20)
    cwat.trained(FakeExp(), sub, "owat")
    cwat.trained(FakeExp(), dataclasses.replace(cb, train_images=100), "owat")  # clamped to the split's 30
    kw = {"parent": "std", "seed": None, "train_images": None}
    assert calls[0] == (make_recipe("cwat", steps=1).spec(), dict(kw, seed=2, cfg=("ft", 4, 2)))
    assert calls[1] == (make_recipe("cwat-fast", replays=4).spec(), dict(kw, cfg=("ft", 1, None)))
    assert calls[2][1]["train_images"] == 20 and calls[3][1]["train_images"] == 30
    assert cwat.reductions(FakeExp(), sub, 8) == ("Budget: training attack 1 PGD step(s) (paper: 10); fine-tuned 4 "
                                                  "epochs (fast: 1 × m = 4 replays) on 20 of 30 training images (a "
                                                  "fixed subset); evaluated on 8 of 12 test images")
