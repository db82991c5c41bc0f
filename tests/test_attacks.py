"""The attack engine and objectives: invariants, hand-computed reducers, batch == per image."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advlib.attacks import AttackSpec, attack, fgsm, make_objective, pgd, preset
from advlib.attacks.engine import gaussian_kernel, run_attack
from advlib.attacks.objectives import DAGObjective
from advlib.losses import Terms, cwa_loss, owa_loss, toa_loss
from conftest import make_model


@pytest.fixture(scope="module")
def model():
    return make_model(seed=1, num_classes=12, size=64).eval()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4., 4, 30, 30], [34, 34, 60, 62]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10., 12, 40, 44]]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([[2., 30, 22, 50], [30, 2, 50, 22], [40, 40, 62, 62], [8, 8, 20, 20]]),
         "labels": torch.tensor([1, 1, 1, 4])},
    ]
    return x, targets


# ------------------------------------------------------------------------- invariants
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(b=st.integers(1, 3), eps=st.floats(0.0, 0.1), steps=st.integers(1, 3),
       objective=st.sampled_from(["cls", "loc", "multibox", "cwa", "dag"]),
       update=st.sampled_from(["sign", "l1", "linf"]), random_start=st.booleans())
def test_projection_invariants(model, batch, b, eps, steps, objective, update, random_start):
    x, targets = batch
    spec = AttackSpec(objective, eps=eps, step_size=max(eps / 2, 1e-3), steps=steps,
                      random_start=random_start, update=update)
    adv = attack(model, x[:b], targets[:b], spec)
    assert adv.shape == x[:b].shape
    assert (adv - x[:b]).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("transforms,momentum", [(("di",), 0.0), (("ti",), 1.0), (("si",), 0.0), (("di", "ti", "si"), 1.0)])
def test_transforms_and_momentum_respect_the_budget(model, batch, transforms, momentum):
    x, targets = batch
    spec = AttackSpec("cls", eps=4 / 255, step_size=1 / 255, steps=2, transforms=transforms, momentum=momentum)
    adv = attack(model, x, targets, spec)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_fgsm_is_one_signed_step(model, batch):
    x, targets = batch
    spec = fgsm("cls", eps=2 / 255)
    obj = make_objective(spec)
    state = obj.prepare(model, x, targets)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.loss(model, xr, state).sum(), xr)
    expected = (x + 2 / 255 * g.sign()).clamp(0, 1)
    assert torch.allclose(run_attack(model, x, obj, spec, state), expected, atol=1e-6)


def test_engine_restores_mode_and_leaves_no_parameter_gradients(batch):
    x, targets = batch
    m = make_model(seed=2).train()
    attack(m, x, targets, pgd("multibox", steps=2))
    assert m.training
    assert all(p.grad is None for p in m.parameters())
    m.eval()
    attack(m, x, targets, pgd("multibox", steps=1))
    assert not m.training


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="eps"):
        AttackSpec("cls", eps=8, step_size=2, steps=10)
    with pytest.raises(ValueError, match="update"):
        AttackSpec("cls", eps=0.1, step_size=0.01, steps=1, update="l2")
    with pytest.raises(ValueError, match="transforms"):
        AttackSpec("cls", eps=0.1, step_size=0.01, steps=1, transforms=("jpeg",))
    with pytest.raises(ValueError, match="unknown attack objective .nope.; registered: .*cls"):
        attack(make_model(), torch.rand(1, 3, 64, 64), None, pgd("nope"))
    with pytest.raises(ValueError, match="unknown attack preset"):
        preset("FGSM++")


def test_spec_carries_its_settings():
    d = preset("CWA").to_dict()
    assert d["eps_px"] == 8 and d["step_px"] == 2 and d["steps"] == 10 and d["random_start"]
    assert d["objective"] == "cwa" and d["params"] == {"beta": 6.0} and "seed" in d
    assert pgd("toa", beta_cls=math.inf).to_dict()["params"]["beta_cls"] is None  # JSON has no inf


def test_gaussian_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel(5)
    assert k.sum().item() == pytest.approx(1.0) and torch.allclose(k, k.T) and k[2, 2] == k.max()


# ------------------------------------------------------------- each objective increases
@pytest.mark.parametrize("name,params", [("cls", {}), ("loc", {}), ("multibox", {}), ("toa", {"beta_cls": 6.0}),
                                          ("owa", {"beta": 6.0}), ("cwa", {"beta": 6.0}), ("dag", {}),
                                          ("dfool", {"score_thresh": 0.05}), ("shrink", {"score_thresh": 0.05}),
                                          ("rap", {"score_thresh": 0.05}), ("rad", {"m": 5})])
def test_each_objective_increases_under_its_own_attack(model, batch, name, params):
    x, targets = batch
    update = {"dag": "linf", "rad": "l1"}.get(name, "sign")
    spec = AttackSpec(name, eps=8 / 255, step_size=2 / 255, steps=5, random_start=False, update=update,
                      params=tuple(sorted(params.items())))
    obj = make_objective(spec)
    state = obj.prepare(model, x, targets)
    with torch.no_grad():
        before = obj.loss(model, x, state)
        after = obj.loss(model, run_attack(model, x, obj, spec, state), state)
    assert after.sum() > before.sum(), (before, after)


# ------------------------------------------------------------------ reducers by hand
def _terms():
    """One image, 4 objects: classes 1 (object 0) and 2 (objects 1, 2, 3); 6 positive anchors.

    anchor: 0   1   2   3   4   5   6(neg)
    object: 0   0   1   2   3   3   -
    cls:    2   4   1   9   3   5   7
    loc:    1   1   2   0.5 8   2   0
    """
    obj = torch.tensor([[0, 0, 1, 2, 3, 3, -1]])
    return Terms(
        cls=torch.tensor([[2., 4, 1, 9, 3, 5, 7]]), loc=torch.tensor([[1., 1, 2, 0.5, 8, 2, 0]]),
        positive=obj >= 0, hard_negative=torch.tensor([[False] * 6 + [True]]), object_index=obj,
        labels=torch.tensor([[1, 1, 2, 2, 2, 2, 0]]), object_labels=torch.tensor([[1, 2, 2, 2]]),
        num_positive=torch.tensor([6.0]))


def test_toa_clipping_by_hand():
    t = _terms()
    # L_cls = (2+4+1+9+3+5 + 7 [hard negative]) / 6 = 31/6 ; L_loc = 14.5/6
    assert toa_loss(t, 100, 100).item() == pytest.approx(31 / 6 + 14.5 / 6)
    assert toa_loss(t, 3.0, 2.0).item() == pytest.approx(3.0 + 2.0)
    assert toa_loss(t, 6.0, 6.0).item() == pytest.approx(31 / 6 + 14.5 / 6)


def test_owa_per_object_sums_by_hand():
    t = _terms()
    # per object (mean over its anchors): cls [3, 1, 9, 4], loc [1, 2, 0.5, 5]
    assert owa_loss(t, beta=math.inf).item() == pytest.approx((3 + 1 + 9 + 4) + (1 + 2 + 0.5 + 5))
    # clipped at 4: cls [3, 1, 4, 4], loc [1, 2, 0.5, 4]
    assert owa_loss(t, beta=4.0).item() == pytest.approx(12 + 7.5)


def test_cwa_class_means_by_hand():
    t = _terms()
    # per object clipped at 6: [3+1, 1+2, 6+0.5, 4+5] = [4, 3, 6.5, 9]
    # class 1 (1 object): 4 ; class 2 (3 objects): (3 + 6.5 + 9) / 3 = 18.5/3 ; mean over 2 classes
    assert cwa_loss(t, beta=6.0).item() == pytest.approx((4 + 18.5 / 3) / 2)


# ------------------------------------------------------------------------------- DAG
def test_dag_labels_are_never_true_and_fooled_targets_stop(model, batch):
    x, targets = batch
    obj = DAGObjective(until="argmax")
    state = obj.prepare(model, x, targets)
    assert state.targets.any()
    assert (state.adv[state.targets] != state.true[state.targets]).all()
    assert ((state.adv >= 1) & (state.adv <= 12)).all()
    # a fooled target does not contribute: make every target already fooled -> loss 0, gradient 0
    fooled = obj.prepare(model, x, targets)
    with torch.no_grad():
        pred = model(x).cls_logits.argmax(-1)
    fooled.true = torch.where(fooled.targets, (pred % 12) + 1, fooled.true)  # true != prediction
    xr = x.clone().requires_grad_(True)
    loss = obj.loss(model, xr, fooled)
    (g,) = torch.autograd.grad(loss.sum(), xr)
    assert loss.abs().sum() == 0 and g.abs().sum() == 0
    assert obj.done(model, x, fooled).all()
    spec = preset("DAG", steps=3)
    adv = run_attack(model, x, obj, spec, fooled)
    assert torch.isfinite(adv).all() and torch.equal(adv, x)  # nothing to fool: no step, no NaN


def test_dag_score_rule_keeps_a_target_until_its_true_probability_is_below_the_threshold(model, batch):
    x, targets = batch
    obj = DAGObjective()  # until="score", threshold = the model's score threshold
    state = obj.prepare(model, x, targets)
    assert state.stop_prob == pytest.approx(model.score_thresh)
    with torch.no_grad():
        out = model(x)
    z = out.cls_logits
    p_true = torch.softmax(z, -1).gather(-1, state.true[..., None]).squeeze(-1)
    active = obj._active(out, state)
    assert torch.equal(active, state.targets & (p_true >= model.score_thresh))
    # the argmax rule (original DAG) drops a target as soon as another class wins
    argmax_state = DAGObjective(until="argmax").prepare(model, x, targets)
    assert argmax_state.stop_prob is None
    assert torch.equal(DAGObjective(until="argmax")._active(out, argmax_state),
                       state.targets & (z.argmax(-1) == state.true))
    with pytest.raises(ValueError, match="until"):
        DAGObjective(until="flip")
    with pytest.raises(ValueError, match="stop_prob"):
        DAGObjective(stop_prob=1.5)


def test_dag_presets_sign_steps_and_the_original_labelled_apart():
    s = preset("DAG")
    assert s.update == "sign" and s.steps == 10 and s.early_stop and not s.random_start
    assert s.eps == pytest.approx(8 / 255) and s.step_size == pytest.approx(2 / 255)
    o = preset("DAG-orig")
    assert o.update == "linf" and o.steps == 150 and o.step_size == pytest.approx(0.5 / 255)
    assert o.kwargs == {"until": "argmax"}


def test_rap_shape_target_geometry_by_hand():
    from advlib.attacks.objectives import box_shift_in_offsets, shifted_box_iou

    # the old target: tau = (1, 1, -1, -1) encoded with weights (10, 10, 5, 5) is a move of 0.1
    # box and a scale of exp(-1/5); the new default a move of 0.3 box and a scale of 0.55
    assert box_shift_in_offsets(0.1, math.exp(-0.2), (10, 10, 5, 5)) == pytest.approx((1, 1, -1, -1))
    assert box_shift_in_offsets(0.3, 0.55, (10, 10, 5, 5)) == pytest.approx((3, 3, 5 * math.log(0.55),
                                                                             5 * math.log(0.55)))
    # unit box vs a box of side s centred at 0.5 + d: overlap side = 1 - (0.5 + d - s/2) when it
    # pokes out past 1; IoU = inter / (1 + s^2 - inter)
    s, d = 0.55, 0.3
    side = 1 - (0.5 + d - s / 2)
    assert shifted_box_iou(d, s) == pytest.approx(side**2 / (1 + s * s - side**2))
    assert shifted_box_iou(0.3, 0.55) < 0.5 < shifted_box_iou(0.1, math.exp(-0.2))
    assert shifted_box_iou(0.0, 1.0) == pytest.approx(1.0)


def test_unknown_attack_parameters_are_named():
    with pytest.raises(ValueError, match="'betta'"):
        make_objective(pgd("cwa", betta=6.0))
    with pytest.raises(ValueError, match="'seeds'"):
        make_objective(AttackSpec("dag", 8 / 255, 2 / 255, 2, params=(("seeds", 1),)))
    with pytest.raises(ValueError, match="'shift_px'"):
        make_objective(AttackSpec("rap", 8 / 255, 2 / 255, 2, params=(("shift_px", 1),)))
    with pytest.raises(ValueError, match="no field 'step'"):
        preset("A_cls", step=3)
    with pytest.raises(ValueError, match="registered: .*A_cls"):
        preset("A-cls")


def test_presets_are_data():
    from advlib.attacks import PRESETS

    assert PRESETS["A_cls"].replace(steps=20).steps == 20 and PRESETS["A_cls"].steps == 10
    assert preset("A_cls", seed=3) == PRESETS["A_cls"].replace(seed=3)


# ---------------------------------------------------------------- batch == per image
@pytest.mark.parametrize("spec", [
    AttackSpec("cwa", eps=8 / 255, step_size=2 / 255, steps=3, update="l1", params=(("beta", 6.0),)),
    AttackSpec("mda", eps=8 / 255, step_size=2 / 255, steps=2, update="l1"),
    AttackSpec("cls", eps=8 / 255, step_size=2 / 255, steps=2, update="l1", transforms=("di",)),
])
def test_batched_attack_equals_per_image_attack(model, batch, spec):
    x, targets = batch
    together = attack(model, x, targets, spec)
    alone = torch.cat([attack(model, x[i:i + 1], targets[i:i + 1], spec) for i in range(x.shape[0])])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("name", ["cwa", "mda"])
def test_batched_sign_attack_matches_per_image_loss(model, batch, name):
    # sign() turns float noise in near-zero gradients into +-1 steps on a few pixels, so compare
    # what the attack achieves per image rather than every pixel
    x, targets = batch
    spec = pgd(name, steps=3, **({"beta": 6.0} if name == "cwa" else {}))
    together = attack(model, x, targets, spec)
    alone = torch.cat([attack(model, x[i:i + 1], targets[i:i + 1], spec) for i in range(x.shape[0])])
    assert ((together - alone).abs() > 1e-5).float().mean() < 0.02
    obj = make_objective(pgd("multibox"))
    state = obj.prepare(model, x, targets)
    with torch.no_grad():
        assert torch.allclose(obj.loss(model, together, state), obj.loss(model, alone, state), rtol=0.02)


def test_anchor_matching_happens_once_per_attack(model, batch, monkeypatch):
    import advlib.attacks.objectives as objectives

    calls = []
    real = objectives.match_targets

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(objectives, "match_targets", counting)
    x, targets = batch
    attack(model, x, targets, pgd("cwa", steps=5, beta=6.0))
    assert len(calls) == 1


def test_one_step_mda_shares_the_start_and_equals_two_separate_attacks(model, batch):
    # MTD Algorithm 1: one random start x~, one signed step of ε per task domain, per image the
    # example with the larger multibox loss. The fast path (one forward, two gradients) must
    # equal running the two single-domain attacks and picking by hand.
    from advlib.losses import match_anchors, multibox_terms, ssd_loss

    x, targets = batch
    spec = AttackSpec("mda", eps=8 / 255, step_size=8 / 255, steps=1, random_start=True, seed=3)
    fast = attack(model, x, targets, spec)
    x_cls = attack(model, x, targets, spec.replace(objective="cls"))
    x_loc = attack(model, x, targets, spec.replace(objective="loc"))
    matched = match_anchors(model.anchors, targets, model.box_coder)
    with torch.no_grad():
        l_cls = ssd_loss(multibox_terms(model.eval()(x_cls), matched))
        l_loc = ssd_loss(multibox_terms(model(x_loc), matched))
    by_hand = torch.stack([x_cls[i] if l_cls[i] >= l_loc[i] else x_loc[i] for i in range(x.shape[0])])
    assert ((fast - by_hand).abs() > 1e-5).float().mean() < 1e-3
    assert (fast - x).abs().max() <= 8 / 255 + 1e-6


def test_dag_success_check_shares_the_loss_forward(model, batch, monkeypatch):
    # the engine asks DAG for (loss, done) from one forward pass; the result must equal the
    # separate check-then-step loop, with one forward per step instead of two
    x, targets = batch

    from advlib.attacks import Objective

    class Separate(Objective):
        has_done = True

        def __init__(self, inner):
            self.inner = inner

        def loss(self, m, xx, st):
            return self.inner.loss(m, xx, st)

        def done(self, m, xx, st):
            return self.inner.done(m, xx, st)

    obj = DAGObjective()
    state = obj.prepare(model, x, targets)
    spec = preset("DAG", steps=6).replace(step_size=4 / 255)
    forwards = []
    hook = model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        fused = run_attack(model, x, obj, spec, state)
        n_fused = len(forwards)
        forwards.clear()
        separate = run_attack(model, x, Separate(obj), spec, state)
        n_separate = len(forwards)
    finally:
        hook.remove()
    assert torch.equal(fused, separate)
    assert n_fused <= 6 and n_separate >= 2 * n_fused - 1  # -1: the last check ends the loop early


# ------------------------------------------------------- SI / DI copies (RAD's update)
class _Linear:
    """loss_b = <w, x_b>: the input gradient of a copy scaled by s is s * w, known by hand."""

    name, has_done, fuses_done = "linear", False, False

    def __init__(self, w):
        self.w = w

    def loss(self, model, x, state):
        return (x * self.w).flatten(1).sum(1)


def test_si_normalised_copies_average_unit_gradients_and_raw_copies_average_scales():
    from advlib.attacks.engine import _input_gradient

    torch.manual_seed(0)
    w = torch.randn(1, 3, 4, 4)
    x = torch.rand(2, 3, 4, 4)
    raw = AttackSpec("cls", eps=0.1, step_size=0.01, steps=1, transforms=("si",), si_copies=4)
    g = _input_gradient(None, x, _Linear(w), raw, None, [])
    torch.testing.assert_close(g, w.expand_as(x) * (1 + 0.5 + 0.25 + 0.125) / 4)
    g = _input_gradient(None, x, _Linear(w), raw.replace(si_normalise=True), None, [])
    torch.testing.assert_close(g, w.expand_as(x) / w.abs().mean())  # each copy's s cancels in its L1 norm


def test_di_copies_draw_different_transforms_and_default_specs_keep_their_keys():
    from advlib.attacks.engine import _input_gradient, image_generators

    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    obj = _Linear(torch.randn(1, 3, 16, 16))
    one = AttackSpec("cls", eps=0.1, step_size=0.01, steps=1, transforms=("di",), di_prob=1.0)
    four = one.replace(di_copies=4)
    g1 = [_input_gradient(None, x, obj, one, None, image_generators(x, 0)) for _ in range(1)][0]
    gens = image_generators(x, 0)
    g4 = _input_gradient(None, x, obj, four, None, gens)
    # the first of the four draws is the one-copy draw; the average of four differs from it
    singles = [_input_gradient(None, x, obj, one, None, g) for g in [image_generators(x, 0)] for _ in range(4)]
    torch.testing.assert_close(singles[0], g1)
    torch.testing.assert_close(g4, torch.stack(singles).mean(0))
    assert not torch.allclose(g4, g1)
    # fields added later stay out of the key at their defaults
    d = one.to_dict()
    assert "di_copies" not in d and "si_normalise" not in d and four.to_dict()["di_copies"] == 4
    with pytest.raises(ValueError, match="di_copies"):
        one.replace(di_copies=0)


def test_rad_presets():
    from advlib.attacks import PRESETS

    rad, si = PRESETS["RAD"], PRESETS["RAD-SI"]
    assert (rad.objective, rad.eps, rad.step_size, rad.steps, rad.update, rad.random_start) == \
        ("rad", 16 / 255, 2 / 255, 10, "l1", False)
    assert si.transforms == ("si",) and si.si_copies == 4 and si.si_normalise


def test_gaussian_noise_is_seeded_per_image_clipped_and_of_its_sigma():
    from advlib.attacks import PRESETS

    torch.manual_seed(0)
    x = torch.full((2, 3, 64, 64), 0.5)
    x[1] = torch.rand(3, 64, 64)
    spec = PRESETS["Gaussian"]
    a = attack(None, x, None, spec)
    assert torch.equal(a, attack(None, x, None, spec))  # deterministic
    assert torch.equal(a[1:], attack(None, x[1:], None, spec))  # per image
    d = (a[0] - x[0]).flatten()  # far from the [0, 1] clip at 0.5
    assert abs(float(d.std()) - 9 / 255) < 0.05 * 9 / 255 and abs(float(d.mean())) < 0.002
    assert a.min() >= 0 and a.max() <= 1
    small = attack(None, x, None, spec.replace(eps=2 / 255))
    assert float((small - x).abs().max()) <= 2 / 255 + 1e-7


def test_dag_top_attacks_the_most_confident_clean_boxes_without_ground_truth(model, batch):
    from advlib.losses import class_scores

    x, _ = batch
    spec = AttackSpec("dag", 16 / 255, 2 / 255, 2, random_start=False, update="l1",
                      params=(("boxes", "top"), ("top_k", 7)))
    obj = make_objective(spec)
    state = obj.prepare(model, x, None, spec)
    with torch.no_grad():
        conf, label = class_scores(model(x)).max(-1)
    assert state.targets.sum(1).tolist() == [7, 7, 7]
    for b in range(3):
        chosen = state.targets[b].nonzero().squeeze(1)
        assert set(chosen.tolist()) == set(conf[b].topk(7).indices.tolist())
        assert torch.equal(state.true[b, chosen], label[b, chosen] + 1)
        assert not (state.adv[b, chosen] == state.true[b, chosen]).any()
    adv = attack(model, x, None, spec)
    assert float((adv - x).abs().max()) <= 16 / 255 + 1e-6
    with pytest.raises(ValueError, match="boxes"):
        make_objective(AttackSpec("dag", 0.1, 0.01, 1, params=(("boxes", "all"),)))
