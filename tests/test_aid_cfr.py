"""RobustDet's AID (triplet loss with JS mining) and CFR (ProbConv2d, decoder, losses): numbers
computed by hand from the formulas or by a second, loop-based implementation of the official
selector."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlib.models.aid import AID, js_distance_matrix, mine_triplets, triplet_loss
from advlib.models.cfr import OFFICIAL_RECON_WEIGHTS, CFRDecoder, ProbConv2d, cfr_losses

LN2 = math.log(2)


def _xlogx_over_m(x: float, m: float) -> float:
    return 0.0 if x == 0 else x * (math.log(x) - math.log(m))


def _d(p: list[float], q: list[float]) -> float:
    """pdist_js written out: mean_k [p log p - p log m + q log q - q log m]."""
    return sum(_xlogx_over_m(a, (a + b) / 2) + _xlogx_over_m(b, (a + b) / 2) for a, b in zip(p, q)) / len(p)


# ---- JS distance -------------------------------------------------------------------------------


def test_js_distance_two_element_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    d = js_distance_matrix(p)
    # [1,0] vs [0,1]: m = [.5,.5]; each entry 1·(log 1 - log .5) = ln 2; mean of two = ln 2
    assert d[0, 1].item() == pytest.approx(LN2, abs=1e-6)
    # [0,1] vs [.5,.5]: entry 0: .5(log .5 - log .25) = .5 ln 2;
    #                   entry 1: (log 1 - log .75) + .5(log .5 - log .75)
    e0 = 0.5 * (math.log(0.5) - math.log(0.25))
    e1 = -math.log(0.75) + 0.5 * (math.log(0.5) - math.log(0.75))
    assert d[1, 2].item() == pytest.approx((e0 + e1) / 2, abs=1e-6)
    assert d[2, 1].item() == pytest.approx((e0 + e1) / 2, abs=1e-6)
    assert torch.allclose(torch.diagonal(d), torch.zeros(3), atol=1e-7)
    assert torch.isfinite(d).all()


def test_js_distance_three_element_by_hand():
    p, q = [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]
    m = [0.4, 0.2, 0.4]
    by_hand = (
        0.2 * math.log(0.2 / 0.4) + 0.6 * math.log(0.6 / 0.4)
        + 0.3 * math.log(0.3 / 0.2) + 0.1 * math.log(0.1 / 0.2)
        + 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    ) / 3
    assert [(a + b) / 2 for a, b in zip(p, q)] == pytest.approx(m)
    d = js_distance_matrix(torch.tensor([p, q], dtype=torch.float64))
    assert d[0, 1].item() == pytest.approx(by_hand, rel=1e-12)
    # 2/K times the JS divergence (½KL(p‖m) + ½KL(q‖m))
    js = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    assert d[0, 1].item() == pytest.approx(2 / 3 * js, rel=1e-12)


# ---- triplet loss ------------------------------------------------------------------------------


def test_triplet_loss_with_forced_triplets_by_hand():
    # clean: 0, 1 = [1, 0]; adversarial: 2 = [0, 1], 3 = [.5, .5]
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], requires_grad=True)
    is_adv = torch.tensor([False, False, True, True])
    # pair (0, 1): d(a, p) = 0; n = 2: 0 - ln 2 + .6 < 0 (not mined); n = 3: 0 - d([1,0],[.5,.5]) + .6 > 0
    assert 0.0 - LN2 + 0.6 < 0 and 0.0 - _d([1, 0], [0.5, 0.5]) + 0.6 > 0
    # pair (2, 3): negatives 0 and 1 are the same vector, d(2, 3) - ln 2 + .6 > 0
    assert _d([0, 1], [0.5, 0.5]) - LN2 + 0.6 > 0
    trip = mine_triplets(probs, is_adv, generator=torch.Generator().manual_seed(0))
    assert trip[0].tolist() == [0, 1, 3]
    assert trip.shape == (2, 3) and trip[1, :2].tolist() == [2, 3] and trip[1, 2].item() in (0, 1)
    loss, n = triplet_loss(probs, is_adv, generator=torch.Generator().manual_seed(0))
    # (0, 1, 3): relu(0 - (.25 + .25) + .6) = .1; (2, 3, 0|1): relu(.5 - 2 + .6) = 0
    assert n == 2
    assert loss.item() == pytest.approx((0.1 + 0.0) / 2, abs=1e-6)
    loss.backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all() and probs.grad.abs().sum() > 0


def test_triplet_loss_with_a_margin_that_rejects_every_negative_uses_the_official_fallback():
    # clean pair (0, 1) identical, one adversarial image at the opposite corner: 0 - ln 2 + .6 < 0
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    is_adv = torch.tensor([0, 0, 1])
    assert mine_triplets(probs, is_adv).tolist() == [[0, 1, 2]]  # last pair, first negative
    loss, n = triplet_loss(probs, is_adv)
    assert n == 1 and loss.item() == pytest.approx(max(0.0 - 2.0 + 0.6, 0.0))
    # the fallback takes the LAST label with a pair: here label 1 (pair (2, 3)) and negative 0
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert mine_triplets(probs, torch.tensor([0, 1, 1, 1])).tolist() == [[2, 3, 0]]


@pytest.mark.parametrize("is_adv", [[0, 0, 0, 0], [1, 1, 1], [0, 1]])
def test_no_triplet_gives_a_zero_with_a_graph(is_adv):
    probs = torch.softmax(torch.randn(len(is_adv), 4), dim=1).requires_grad_()
    loss, n = triplet_loss(probs, torch.tensor(is_adv))
    assert n == 0 and loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(probs.grad, torch.zeros_like(probs))


def test_with_k4_and_margin_06_every_negative_is_mined():
    # d <= 2 ln 2 / K = .35 < .6: every (pair, negative) has a positive loss value
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(10, 4, generator=g), dim=1)
    assert js_distance_matrix(probs).max().item() <= 2 * LN2 / 4 + 1e-6
    is_adv = torch.tensor([0] * 6 + [1] * 4)
    assert mine_triplets(probs, is_adv, generator=g).shape[0] == math.comb(6, 2) + math.comb(4, 2)


def _reference_candidates(probs: list[list[float]], labels: list[int], margin: float):
    """A loop over the official selector: (anchor, positive, set of allowed negatives) per pair,
    and the fallback triplet (last pair and first negative of the last label with a pair)."""
    out, fallback = [], None
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        if len(idx) < 2:
            continue
        neg = [i for i, lab in enumerate(labels) if lab != label]
        pairs = list(itertools.combinations(idx, 2))
        fallback = [*pairs[-1], neg[0]] if neg else None
        for a, p in pairs:
            ok = {n for n in neg if _d(probs[a], probs[p]) - _d(probs[a], probs[n]) + margin > 0}
            if ok:
                out.append((a, p, ok))
    return out, fallback


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2), min_size=2, max_size=8),
    st.lists(st.integers(0, 1), min_size=8, max_size=8),
    st.sampled_from([0.05, 0.1, 0.2]),
    st.integers(0, 2**16),
)
def test_mining_matches_a_loop_over_the_official_selector(rows, labels, margin, seed):
    probs = [[a / (a + b), b / (a + b)] for a, b in rows]
    labels = labels[: len(probs)]
    ref, fallback = _reference_candidates(probs, labels, margin)
    got = mine_triplets(torch.tensor(probs, dtype=torch.float64), torch.tensor(labels), margin,
                        torch.Generator().manual_seed(seed)).tolist()
    if ref:
        assert [(a, p) for a, p, _ in ref] == [(a, p) for a, p, _ in got]
        assert all(n in ok for (_, _, ok), (_, _, n) in zip(ref, got))
    else:
        assert got == ([fallback] if fallback else [])


def test_triplet_loss_gradient_matches_finite_differences():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]], dtype=torch.float64, requires_grad=True)
    is_adv = torch.tensor([0, 0, 1, 1])

    def f(p):
        return triplet_loss(p, is_adv, margin=0.6, generator=torch.Generator().manual_seed(0))[0]

    assert torch.autograd.gradcheck(f, (probs,))


def test_triplet_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="is_adv must be"):
        triplet_loss(torch.rand(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="probs must be"):
        triplet_loss(torch.rand(3), torch.tensor([0, 1, 1]))


# ---- AID ---------------------------------------------------------------------------------------


def test_aid_outputs_probability_rows_and_is_seeded():
    torch.manual_seed(0)
    aid = AID(K=4, width=8)
    x = torch.rand(3, 3, 64, 64)
    p = aid(x)
    assert p.shape == (3, 4)
    assert torch.allclose(p.sum(dim=1), torch.ones(3), atol=1e-6) and (p > 0).all()
    torch.manual_seed(0)
    assert torch.equal(AID(K=4, width=8)(x), p)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        aid(torch.rand(3, 64, 64))


# ---- CFR ---------------------------------------------------------------------------------------


def test_probconv_returns_mu_in_eval_and_a_sample_in_training():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    pc = ProbConv2d.from_conv(conv)
    assert pc.conv_mean is conv and pc.out_channels == 6
    x = torch.randn(2, 4, 5, 5)
    mu = conv(x)
    z = pc.train()(x)
    assert torch.allclose(pc.logvar, torch.full_like(mu, math.log(1e-2)))  # zero weights, bias log 1e-2
    assert torch.allclose(pc.mu, mu) and not torch.allclose(z, mu)
    # z - μ = σ ε with σ = .1: the noise has std about .1
    assert 0.07 < (z - mu).std().item() < 0.13
    out = pc.eval()(x)
    assert torch.equal(out, mu) and pc.logvar is None
    assert conv.weight.abs().sum() > 0  # the mean conv keeps its weights


def test_probconv_without_bias_and_with_a_two_dim_bias():
    pc = ProbConv2d.from_conv(nn.Conv2d(3, 5, 1, bias=False)).train()
    pc(torch.randn(1, 3, 4, 4))
    assert torch.allclose(pc.logvar, torch.full((1, 5, 4, 4), math.log(1e-2)))

    class KConv(nn.Module):  # a K-kernel convolution with a [K, O] bias, mixed by weights summing to 1
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 5, 3, 3, 3))
            self.bias = nn.Parameter(torch.randn(2, 5))

        def forward(self, x, attn):
            w = torch.einsum("k,koihw->oihw", attn, self.weight)
            return nn.functional.conv2d(x, w, attn @ self.bias, padding=1)

    pc = ProbConv2d.from_conv(KConv()).train()
    z = pc(torch.randn(1, 3, 4, 4), torch.tensor([0.3, 0.7]))
    assert z.shape == (1, 5, 4, 4) and pc.logvar_bias is None
    assert torch.allclose(pc.logvar, torch.full((1, 5, 4, 4), math.log(1e-2)), atol=1e-6)
    copy.deepcopy(pc)  # the stored tensors carry graphs; copies drop them


def test_probconv_keeps_named_objects_shared():
    class Holder:
        weights = None

    class ReadsHolder(nn.Conv2d):
        def __init__(self, holder):
            super().__init__(2, 2, 1)
            self.holder = holder

    h = Holder()
    assert ProbConv2d.from_conv(ReadsHolder(h), keep_shared=[h]).conv_std.holder is h
    assert ProbConv2d.from_conv(ReadsHolder(h)).conv_std.holder is not h


def test_cfr_decoder_shape():
    dec = CFRDecoder(32, stride=8)
    out = dec(torch.randn(2, 32, 16, 16))
    assert out.shape == (2, 3, 128, 128) and (out > 0).all() and (out < 1).all()
    with pytest.raises(ValueError, match="power of 2"):
        CFRDecoder(32, stride=6)


def test_cfr_losses_by_hand():
    recon = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    clean = torch.tensor([0.5, 0.5, 0.0, 0.25]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    zero = torch.zeros(2, 3, 2, 2)
    l_re, l_kld = cfr_losses(recon, clean, zero, zero)
    assert l_re.item() == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    assert l_kld.item() == 0.0  # μ = 0, log σ² = 0
    # image 0: μ = 1, log σ² = 0 -> -½(1 + 0 - 1 - 1) = ½; image 1: μ = 0, log σ² = log 2 -> -½(1 + ln 2 - 2)
    mu = torch.stack([torch.ones(3, 2, 2), torch.zeros(3, 2, 2)])
    logvar = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), LN2)])
    _, l_kld = cfr_losses(recon, clean, mu, logvar)
    assert l_kld.item() == pytest.approx((0.5 + -0.5 * (1 + LN2 - 2)) / 2, rel=1e-6)


def test_official_recon_weights_in_unit_pixels():
    assert OFFICIAL_RECON_WEIGHTS["b"] == pytest.approx(40.8)
    assert OFFICIAL_RECON_WEIGHTS["c"] == pytest.approx(5 / 255)
