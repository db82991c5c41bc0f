"""RobustDet's adversarially-aware convolution and BN folding, checked against independent
computations: a per-image loop of ``F.conv2d`` with the image's own kernel, the plain convolution,
and the unfolded model in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advlib.models import build_ssd
from advlib.models.aaconv import IMPLS, AAConv2d, KernelMixing, to_aaconv
from advlib.models.fold import fold_batchnorm


def _layer(impl="aggregate", cin=4, cout=6, k=3, K=3, bias=True, seed=0, **conv_kw):
    torch.manual_seed(seed)
    layer = AAConv2d(cin, cout, k, K, KernelMixing(), bias=bias, impl=impl, **conv_kw)
    with torch.no_grad():  # K clearly distinct kernels
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    return layer


def _loop(x, weight, bias, pi, **conv_kw):
    """Per-image reference: image b convolved with Σ_k π_bk θ_k (plus Σ_k π_bk b_k)."""
    outs = []
    for b in range(x.shape[0]):
        w_b = (pi[b].view(-1, 1, 1, 1, 1) * weight).sum(0)  # [O, I/g, kh, kw]
        b_b = None if bias is None else (pi[b].view(-1, 1) * bias).sum(0)  # [O]
        outs.append(F.conv2d(x[b : b + 1], w_b, b_b, **conv_kw))
    return torch.cat(outs)


def _conv_kw(layer):
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)


@pytest.mark.parametrize("impl", IMPLS)
def test_one_hot_mixing_picks_each_images_kernel(impl):
    layer = _layer(impl, K=3)
    x = torch.randn(5, 4, 9, 7)
    choice = torch.tensor([0, 2, 1, 2, 0])
    layer.mixing.weights = F.one_hot(choice, 3).float()
    out = layer(x)
    for b in range(5):
        ref = F.conv2d(x[b : b + 1], layer.weight[choice[b]], layer.bias[choice[b]], padding=0)
        torch.testing.assert_close(out[b : b + 1], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_soft_mixing_equals_loop_over_mixed_kernels(impl):
    layer = _layer(impl, K=4)
    x = torch.randn(3, 4, 8, 8)
    pi = torch.softmax(torch.randn(3, 4), dim=1)
    layer.mixing.weights = pi
    torch.testing.assert_close(layer(x), _loop(x, layer.weight, layer.bias, pi), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias", [True, False])
def test_equal_kernels_equal_the_plain_conv_for_any_mixing(impl, bias):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias)
    layer = AAConv2d.from_conv(conv, K=4, mixing=KernelMixing(), impl=impl)
    assert layer.weight.shape == (4, 6, 4, 3, 3) and (layer.bias is None) == (not bias)
    x = torch.randn(5, 4, 11, 10)
    for seed in range(3):
        layer.mixing.weights = torch.softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(seed)) * 3, 1)
        torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_the_per_image_loop(impl):
    layer = _layer(impl, K=3, stride=2, padding=1)
    x = torch.randn(4, 4, 7, 9, requires_grad=True)
    pi = torch.softmax(torch.randn(4, 3), 1).requires_grad_()
    layer.mixing.weights = pi
    out = layer(x)
    ref = _loop(x, layer.weight, layer.bias, pi, stride=2, padding=1)
    g_out = torch.randn_like(ref)
    inputs = (layer.weight, layer.bias, x, pi)
    got = torch.autograd.grad(out, inputs, g_out)
    want = torch.autograd.grad(ref, inputs, g_out)
    for name, a, b in zip(("weight", "bias", "input", "mixing"), got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"gradient w.r.t. {name}")


VARIANTS = [
    dict(stride=2, padding=1),
    dict(stride=(1, 2), padding=(2, 0)),
    dict(padding=2, dilation=2),
    dict(padding=1, groups=2),
    dict(stride=2, padding=1, dilation=(2, 1), groups=2),
    dict(padding="same"),
    dict(padding=1, padding_mode="reflect"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_options_and_channels_last(impl, kw, channels_last):
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, **kw)
    layer = _layer(impl, K=3, **kw)
    x = torch.randn(3, 4, 10, 9)
    pi = torch.softmax(torch.randn(3, 3), 1)
    layer.mixing.weights = pi
    want = _loop(x, layer.weight, layer.bias, pi, **_conv_kw(layer)) if "padding_mode" not in kw else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = layer(x)
    if want is None:  # padding_mode: compare with nn.Conv2d holding each image's mixed kernel
        want = []
        for b in range(3):
            with torch.no_grad():
                conv.weight.copy_((pi[b].view(-1, 1, 1, 1, 1) * layer.weight).sum(0))
                conv.bias.copy_(pi[b] @ layer.bias)
            want.append(conv(x[b : b + 1]))
        want = torch.cat(want)
    assert out.shape == conv(x).shape
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("backbone", ["tiny_vgg", "tiny_resnet"])
def test_fold_batchnorm_keeps_the_eval_output(backbone):
    torch.manual_seed(0)
    model = _randomise_bn(build_ssd(backbone, 3, 64)).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert fold_batchnorm(model) == n_bn > 0
        out = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.box_deltas, ref.box_deltas, atol=1e-5, rtol=1e-5)
    assert fold_batchnorm(model) == 0  # nothing left to fold


def test_fold_batchnorm_keeps_an_existing_bias_and_a_bn_without_affine():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 5, 3, bias=True), nn.BatchNorm2d(5, affine=False), nn.ReLU())
    seq[1].running_mean.normal_()
    seq[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    ref = seq.eval()(x)
    assert fold_batchnorm(seq) == 1 and isinstance(seq[1], nn.Identity)
    torch.testing.assert_close(seq(x), ref, atol=1e-5, rtol=1e-5)


class _Unfoldable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ok = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)  # an attribute, not after a conv in a Sequential

    def forward(self, x):
        return self.bn(self.conv(self.ok(x)))


@pytest.mark.parametrize(
    "make, path",
    [
        (_Unfoldable, "'bn'"),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)), "'2'"),
        (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)), "'0'"),
        (lambda: nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))),
         "'0.1'"),
        (lambda: (lambda c: nn.Sequential(c, nn.BatchNorm2d(4), c, nn.BatchNorm2d(4)))(nn.Conv2d(4, 4, 1)), "'3'"),
    ],
)
def test_fold_batchnorm_names_a_bn_it_cannot_fold_and_changes_nothing(make, path):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=path):
        fold_batchnorm(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_to_aaconv_on_a_folded_ssd_equals_it_for_any_mixing():
    torch.manual_seed(0)
    model = _randomise_bn(build_ssd("tiny_vgg", 3, 64)).eval()
    fold_batchnorm(model)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        mixing = to_aaconv(model, K=4)
        assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
        aa = [m for m in model.modules() if isinstance(m, AAConv2d)]
        assert len(aa) == n_conv and all(m.mixing is mixing for m in aa)
        assert any("head" in n for n, m in model.named_modules() if isinstance(m, AAConv2d))
        for seed in range(2):
            mixing.weights = torch.softmax(torch.randn(3, 4, generator=torch.Generator().manual_seed(seed)) * 3, 1)
            out = model(x)
            torch.testing.assert_close(out.cls_logits, ref.cls_logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.box_deltas, ref.box_deltas, atol=1e-5, rtol=1e-5)


def test_to_aaconv_refuses_bn_a_second_conversion_and_no_conv():
    model = build_ssd("tiny_vgg", 3, 64)
    with pytest.raises(ValueError, match=r"BatchNorm2d at \['backbone.body.0.1'.*fold_batchnorm"):
        to_aaconv(model)
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())  # unchanged
    fold_batchnorm(model)
    to_aaconv(model, K=2)
    with pytest.raises(ValueError, match="already holds AAConv2d"):
        to_aaconv(model)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        to_aaconv(nn.Sequential(nn.ReLU()))


def test_to_aaconv_keeps_a_shared_conv_shared():
    conv = nn.Conv2d(3, 3, 1)
    seq = nn.Sequential(conv, nn.ReLU(), conv)
    to_aaconv(seq, K=2)
    assert seq[0] is seq[2] and isinstance(seq[0], AAConv2d)


def test_unset_or_misshaped_mixing_raises_a_clear_error():
    layer = _layer(K=3)
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match=r"mixing weights are unset.*\[B, K=3\]"):
        layer(x)
    for bad, got in [(torch.ones(3, 3) / 3, r"\(3, 3\)"), (torch.ones(2, 4) / 4, r"\(2, 4\)"),
                     (torch.ones(3) / 3, r"\(3,\)"), ([[1.0, 0, 0]] * 2, "list")]:
        layer.mixing.weights = bad
        with pytest.raises(ValueError, match=rf"must be \[B=2, K=3\], got {got}"):
            layer(x)
    layer.mixing.weights = torch.ones(2, 3) / 3
    with pytest.raises(ValueError, match=r"expects \[B, 4, H, W\]"):
        layer(torch.randn(2, 5, 6, 6))


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="K must be a positive int"):
        AAConv2d(4, 4, 3, 0, KernelMixing())
    with pytest.raises(ValueError, match="impl must be one of"):
        AAConv2d(4, 4, 3, 2, KernelMixing(), impl="loop")
    with pytest.raises(ValueError, match="divisible by groups"):
        AAConv2d(4, 6, 3, 2, KernelMixing(), groups=4)
    with pytest.raises(ValueError, match="mixing must be a KernelMixing"):
        AAConv2d(4, 4, 3, 2, None)
