"""Multi-node SGLRP relevance maps and the RAD loss (advlib.attacks.lrp, advlib.attacks.relevance).

Every expected number is computed independently: by hand (the two-layer example, node selection,
initial relevance), by a conservation law of the rules, by a finite difference, or by zennit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advlib.attacks.lrp import Trace, input_bounds, trace
from advlib.attacks.relevance import initial_relevance, rad_loss, relevance_map, select_nodes, sglrp
from advlib.models import DenseOutput, FocalOutput, build_retinanet, build_ssd


def _randomise_norms(model: nn.Module, gen: torch.Generator, zero_bias: bool = False) -> nn.Module:
    """Non-trivial batch-norm statistics and affine maps (some γ < 0); optionally every bias zero."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                sign = torch.where(torch.rand(m.weight.shape, generator=gen) < 0.2, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(m.weight.shape, generator=gen)))
                m.bias.copy_(0.0 if zero_bias else 0.1 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.running_mean.copy_(0.0 if zero_bias else 0.2 * torch.randn(m.running_mean.shape, generator=gen))
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.0 if zero_bias else 0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def _model(family: str, backbone: str, size: int = 48, zero_bias: bool = False, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    build = build_ssd if family == "ssd" else build_retinanet
    # RetinaNet: GroupNorm with 16 groups of 2 channels (with 1-channel groups a 1x1 level's GroupNorm
    # output is the constant β: no input relevance can reach it)
    kwargs = {"fpn_channels": 32, "head_convs": 2} if family == "retinanet" else {}
    return _randomise_norms(build(backbone, classes, size, **kwargs), torch.Generator().manual_seed(1), zero_bias)


MODELS = [("ssd", "tiny_vgg"), ("ssd", "tiny_resnet"), ("retinanet", "tiny_vgg")]


@pytest.mark.parametrize("family,backbone", MODELS)
def test_trace_reproduces_the_model_output(family, backbone):
    model = _model(family, backbone)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = model(x), trace(model, x).output
    assert type(out) is type(ref)
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.box_deltas, ref.box_deltas, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,backbone", MODELS)
def test_relevance_is_conserved_with_biases_zeroed(family, backbone):
    """z+ and z^B conserve relevance: the input map sums to the output relevance (both heads)."""
    model = _model(family, backbone, zero_bias=True).double()
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = trace(model, x)
    gen = torch.Generator().manual_seed(4)
    seeds = {"cls": torch.rand(2, *t.output.cls_logits.shape, generator=gen, dtype=torch.float64),
             "box": torch.randn(2, *t.output.box_deltas.shape, generator=gen, dtype=torch.float64)}
    low, high = input_bounds(model, t.input, "image")
    for name, r in seeds.items():
        h = t.propagate({name: r}, low, high, eps=1e-14)  # [2, B, 3, H, W]
        torch.testing.assert_close(h.sum((2, 3, 4)), r.sum((2, 3)), rtol=1e-6, atol=1e-9)
    # the SGLRP maps of both modes too (restricted: the softmax gradient sums to zero per anchor)
    official = sglrp(model, x, m=5, eps=1e-14, scaling="map")
    init = initial_relevance(t.output, official.nodes, "cls", "official")
    torch.testing.assert_close(official.target.sum((1, 2, 3)), init[0].sum((1, 2)), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(official.dual.sum((1, 2, 3)), init[1].sum((1, 2)), rtol=1e-6, atol=1e-9)
    # restricted mode (SSD: sums to zero per anchor; RetinaNet: targets only), z^B on the domain box
    domain = sglrp(model, x, nodes=official.nodes, mode="restricted", bounds="domain", eps=1e-14).relevance
    init = initial_relevance(t.output, official.nodes, "cls", "restricted")[0].sum((1, 2))
    torch.testing.assert_close(domain.sum((1, 2, 3)), init, rtol=1e-6, atol=1e-9)
    assert (domain > 0).any()


def test_two_layer_net_by_hand():
    """z+ on the second layer (bias ignored), z^B on the first with bounds [-1, 3] (App. A)."""
    net = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, -1.0], [1.0, 1.0]]).view(2, 2, 1, 1))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]).view(2, 2, 1, 1))
        net[2].bias.copy_(torch.tensor([10.0, -10.0]))  # must not matter
    x = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1)
    t = Trace(x)
    y = t.record(net.double(), x)
    # hidden a = relu(3 - 2, 1 + 2) = (1, 3); output relevance (1, 2)
    # z+: z0 = 1·1 = 1, z1 = 1·2 + 3·1 = 5; R_a = (1·(1/1 + 2·2/5), 3·(1·2/5)) = (1.8, 1.2)
    # z^B (l = -1, h = 3): z0 = [3 + 3] + [-2 + 3] = 7, z1 = [1 + 1] + [2 + 1] = 5
    # R_x0 = 6/7·1.8 + 2/5·1.2 = 354/175, R_x1 = 1/7·1.8 + 3/5·1.2 = 171/175
    r_out = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 1, 2, 1, 1)
    low, high = input_bounds(None, x, (-1.0, 3.0))
    h = t.propagate_tensors([(y, r_out)], low, high, eps=0.0)
    torch.testing.assert_close(h.flatten(), torch.tensor([354 / 175, 171 / 175], dtype=torch.float64))
    # the hidden layer's relevance, read from a second trace seeded at the hidden activation
    t2 = Trace(x)
    a = t2.record(net[:2], x)
    ha = t2.propagate_tensors([(a, torch.tensor([1.8, 1.2], dtype=torch.float64).view(1, 1, 2, 1, 1))],
                              low, high, eps=0.0)
    torch.testing.assert_close(ha, h)


def test_agrees_with_zennit():
    zennit = pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.rules import ZBox, ZPlus

    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5),
        nn.Conv2d(5, 6, 1), nn.ReLU(),  # input of this 1x1 conv is signed: alpha1-beta0
        nn.Conv2d(6, 3, 3, stride=2, padding=1),
    )
    _randomise_norms(net, torch.Generator().manual_seed(6))
    x = torch.randn(2, 3, 12, 12)
    r_out = torch.rand(2, 3, 3, 3)
    low, high = x.min().item() - 0.1, x.max().item() + 0.1

    t = Trace(x)
    y = t.record(net, x)
    ours = t.propagate_tensors([(y, r_out.unsqueeze(0))], *input_bounds(None, x, (low, high)))[0]

    composite = SpecialFirstLayerMapComposite(
        layer_map=[(nn.Conv2d, ZPlus(zero_params="bias"))],
        first_map=[(nn.Conv2d, ZBox(low, high, zero_params="bias"))],
        canonizers=[SequentialMergeBatchNorm()],
    )
    with Gradient(model=net, composite=composite) as attributor:
        out, theirs = attributor(x, r_out)
    torch.testing.assert_close(out, y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.detach(), theirs, rtol=1e-4, atol=1e-6)
    assert zennit is not None


def test_rad_loss_gradient_matches_finite_differences():
    model = _model("ssd", "tiny_resnet", size=32).double()
    gen = torch.Generator().manual_seed(7)
    x = (0.1 + 0.8 * torch.rand(1, 3, 32, 32, generator=gen, dtype=torch.float64)).requires_grad_(True)
    with torch.no_grad():
        nodes = select_nodes(model(x), m=4)  # fixed: selection is piecewise constant
    for mode in ("official", "restricted"):
        loss = rad_loss(model, x, nodes=nodes, mode=mode, fallback_weight=0.0).sum()
        assert loss.item() > 0
        (grad,) = torch.autograd.grad(loss, x)
        for _ in range(2):
            v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            d = 1e-7  # ReLU / max-pool kinks lie within 1e-5 of this point in a random net
            with torch.no_grad():
                plus = rad_loss(model, x + d * v, nodes=nodes, mode=mode, fallback_weight=0.0).sum()
                minus = rad_loss(model, x - d * v, nodes=nodes, mode=mode, fallback_weight=0.0).sum()
            fd = (plus - minus) / (2 * d)
            assert math.isclose(fd.item(), (grad * v).sum().item(), rel_tol=1e-5, abs_tol=1e-10)


def _ssd_output() -> DenseOutput:
    """Four anchors, two classes: softmax rows (0.2, 0.6, 0.2), (1/4, 1/4, 1/2),
    (8, 1.5, 1)/10.5 and (1, 9, 1)/11."""
    logits = torch.log(torch.tensor([[[1.0, 3.0, 1.0], [1.0, 1.0, 2.0], [8.0, 1.5, 1.0], [1.0, 9.0, 1.0]]]))
    return DenseOutput(logits, torch.arange(16.0).view(1, 4, 4) - 7.5)


def test_static_and_dynamic_node_selection_by_hand():
    out = _ssd_output()  # best foreground p: 0.6 (class 1), 0.5 (2), 1/7 (1), 9/11 (1)
    mask = select_nodes(out, m=2)
    expected = torch.zeros(1, 4, 3, dtype=torch.bool)
    expected[0, 3, 1] = expected[0, 0, 1] = True
    assert torch.equal(mask, expected)
    # logit(p): log 1.5 = 0.41, 0, log(1/6) = -1.79, log 4.5 = 1.50
    dyn = select_nodes(out, threshold=-1.0)
    assert dyn.nonzero().tolist() == [[0, 0, 1], [0, 1, 2], [0, 3, 1]]
    assert select_nodes(out, threshold=0.2).nonzero().tolist() == [[0, 0, 1], [0, 3, 1]]
    assert select_nodes(out, threshold=-3.0).any(-1).all()
    assert not select_nodes(out, threshold=2.0).any()
    size = select_nodes(out, kind="size", m=2)
    loc = select_nodes(out, kind="loc", m=2)
    assert size.nonzero().tolist() == [[0, 0, 2], [0, 0, 3], [0, 3, 2], [0, 3, 3]]
    assert loc.nonzero().tolist() == [[0, 0, 0], [0, 0, 1], [0, 3, 0], [0, 3, 1]]
    # RetinaNet: column 0 is never chosen, dynamic thresholds apply to the raw class logit
    focal = FocalOutput(torch.tensor([[[9.0, -1.0, 2.0], [9.0, -2.5, -3.0]]]), torch.zeros(1, 2, 4))
    assert select_nodes(focal, m=1).nonzero().tolist() == [[0, 0, 2]]
    assert select_nodes(focal, threshold=-2.6).nonzero().tolist() == [[0, 0, 2], [0, 1, 1]]
    with pytest.raises(ValueError, match="kind"):
        select_nodes(out, kind="shape")


def test_initial_relevance_by_hand():
    out = _ssd_output()
    nodes = torch.zeros(1, 4, 3, dtype=torch.bool)
    nodes[0, 0, 1] = True  # y = (0.2, 0.6, 0.2)
    r = initial_relevance(out, nodes, mode="restricted", target_weight="sglrp")[0, 0]  # y_t (δ - y_n), anchor 0
    torch.testing.assert_close(r[0], torch.tensor([-0.12, 0.24, -0.12]))
    assert not r[1:].any()
    r = initial_relevance(out, nodes, mode="restricted")[0, 0]  # divided by 1 - y_t = 0.4
    torch.testing.assert_close(r[0], torch.tensor([-0.3, 0.6, -0.3]))
    official = initial_relevance(out, nodes, mode="official")  # target y_t, dual y_n y_t / (1 - y_t)
    torch.testing.assert_close(official[0, 0, 0], torch.tensor([0.0, 0.6, 0.0]))
    y = torch.softmax(out.cls_logits, -1)[0]
    torch.testing.assert_close(official[1, 0, 0], torch.tensor([0.2, 0.0, 0.2]) * 1.5)
    torch.testing.assert_close(official[1, 0, 1:], y[1:] * 1.5)
    sg = initial_relevance(out, nodes, mode="official", target_weight="sglrp")  # eq. 2: y(1-y), y_n ȳ_t
    torch.testing.assert_close(sg[0, 0, 0, 1], torch.tensor(0.24))
    torch.testing.assert_close(sg[1, 0, 1:], y[1:] * 0.6)
    focal = FocalOutput(torch.tensor([[[9.0, 0.0, math.log(3.0)]]]), torch.zeros(1, 1, 4))
    fn = torch.tensor([[[False, False, True]]])
    torch.testing.assert_close(initial_relevance(focal, fn, mode="restricted", target_weight="sglrp")[0, 0, 0],
                               torch.tensor([0.0, 0.0, 0.75 * 0.25]))  # σ(1-σ), no dual
    torch.testing.assert_close(initial_relevance(focal, fn, mode="restricted"), torch.tensor([[[[0.0, 0.0, 0.75]]]]))
    torch.testing.assert_close(initial_relevance(focal, fn, mode="official")[1, 0, 0],
                               torch.tensor([0.0, 0.5 * 3.0, 0.0]))  # column 0 excluded from the dual
    box = initial_relevance(out, select_nodes(out, kind="size", m=1), kind="size")
    torch.testing.assert_close(box[0, 0, 3], torch.tensor([0.0, 0.0, 6.5, 7.5]))


@pytest.mark.parametrize("family,backbone", [("ssd", "tiny_vgg"), ("retinanet", "tiny_resnet")])
def test_maps_and_loss(family, backbone):
    model = _model(family, backbone, size=32)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8)).requires_grad_(True)
    maps = sglrp(model, x)
    exact = sglrp(model, x, scaling="map")  # the official code's two propagations
    # scaling makes the official map sum to zero per image, with positive and negative parts
    torch.testing.assert_close(exact.relevance.sum((1, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)
    assert (maps.relevance > 0).any() and (maps.relevance < 0).any()
    # one propagation of R_t - c R_d with c from the initial relevance: the same up to what biases absorb
    assert (maps.relevance.sum((1, 2, 3)).abs() < 1e-3 * maps.relevance.abs().sum((1, 2, 3))).all()
    torch.testing.assert_close(maps.relevance, exact.relevance, rtol=0, atol=1e-3 * exact.relevance.abs().max().item())
    loss = rad_loss(model, x, fallback_weight=0.0)
    torch.testing.assert_close(loss, maps.relevance.clamp(min=0).sum((1, 2, 3)))
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    # each image's map is its own: a batch gives the same result as each image alone
    one = relevance_map(model, x[1:])
    torch.testing.assert_close(one[0], maps.relevance[1], rtol=1e-4, atol=1e-6)
    for kind in ("size", "loc"):
        assert torch.isfinite(relevance_map(model, x, kind=kind, mode="restricted")).all()
    # no node at all: the map is zero and only the fallback term steers
    none = torch.zeros_like(maps.nodes)
    fb = rad_loss(model, x, nodes=none, fallback_weight=1.0, fallback_topk=10)
    (g,) = torch.autograd.grad(fb.sum(), x)
    assert (fb > 0).all() and g.abs().sum() > 0


def test_unsupported_modules_raise_naming_the_type():
    model = _model("ssd", "tiny_vgg", size=32)
    model.backbone.body[1][2] = nn.ELU()
    with pytest.raises(TypeError, match="ELU"):
        trace(model, torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="Linear"):
        Trace(torch.rand(1, 4)).record(nn.Sequential(nn.Linear(4, 2)), torch.rand(1, 4))
    with pytest.raises(ValueError, match="mode"):
        sglrp(_model("ssd", "tiny_vgg", size=32), torch.rand(1, 3, 32, 32), mode="paper")
