"""Differentiable deep-Taylor (LRP) relevance propagation through our one-stage detectors.

:func:`trace` re-runs a detector's forward pass on a tape of the operations it knows (the SSD on the
``tiny_vgg`` / ``tiny_resnet`` backbones, RetinaNet's FPN and GroupNorm heads) and
:meth:`Trace.propagate` carries relevance from the head outputs back to the normalised image with
explicit per-layer formulas over the recorded activations. Every formula is an ordinary tensor
expression, so the relevance map is a differentiable function of the images and autograd gives its
input gradient (double backpropagation, as RAD needs). Rules (RAD Appendix A, Iwana et al.'s SGLRP,
Montavon et al.'s deep Taylor decomposition); biases are ignored everywhere, so each rule conserves
relevance up to the stabiliser ``eps``:

* **z+** for a convolution whose input is non-negative (after ReLU / max-pool):
  ``R_i = a_i Σ_j w⁺_ij R_j / (Σ_i' a_i' w⁺_i'j + eps)``, computed as
  ``a * conv_transpose(R / (conv(a, W⁺) + eps), W⁺)``.
* **α1β0** (z+ generalised to signed inputs, what innvestigate's and zennit's z+ compute) for a
  convolution whose input can be negative (FPN sums, the FPN outputs feeding RetinaNet's heads):
  only positive contributions ``(x_i w_ij)⁺`` count (``x⁺`` with ``W⁺`` plus ``x⁻`` with ``W⁻``).
* **z^B** for the first convolution, whose input is the *normalised* image ``(x - mean) / std``
  (the models normalise inside; the pixel relevance is that input's, element for element):
  ``R_i = Σ_j (x_i w_ij - l_i w⁺_ij - h_i w⁻_ij) / Σ_i'(...) R_j`` with bounds ``l, h``
  (:func:`input_bounds`).
* **Batch norm** (eval mode, running statistics) is folded into the preceding convolution on the
  fly (``W · γ/σ``, as :mod:`advlib.models.fold`), the model is not modified. As z+ normalises per
  output channel this is z+ on ``W`` where ``γ > 0`` and z+ on the sign-flipped kernel where ``γ < 0``.
* **GroupNorm** (RetinaNet's heads) with its statistics taken as constants is a per-(image, channel)
  affine map ``y = s·x + t`` with ``s = γ/σ``. Folded into the preceding convolution like batch norm,
  the positive factor ``σ`` cancels in z+: the rule is z+ on ``W · sign(γ)`` and the GroupNorm
  itself passes relevance unchanged (bias ``t`` ignored). The statistics drop out of the rule, so
  nothing is detached; the forward activations keep their exact dependence on the input.
* **ReLU** passes relevance unchanged; **max-pool** is winner-take-all (relevance to the argmax);
  **sums of two branches** (residual additions, FPN merges) split relevance in proportion to each
  branch's value, ``R_a = a / (a + b) · R`` (stabilised); **nearest upsampling** sums the relevance
  of each copy back onto its source.

Only winner selection (max-pool indices, upsampling index maps) is piecewise constant in the input
and carries no gradient; weights are constants (gradients reach the images only); nothing else is
detached. Relevance tensors carry a leading ``K`` axis (maps propagated together): ``[K, B, C, H, W]``.
The official code (innvestigate 1.0's deep Taylor) differs where these rules follow the paper: it
keeps positive biases in z+ denominators, passes relevance through batch norm unchanged, copies it
to both inputs of an addition and averages it back through upsampling (none conserve relevance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSDHead
from torchvision.ops import FeaturePyramidNetwork

from advlib.models.backbones import _BodyThenExtras, _Residual
from advlib.models.retinanet import FocalOutput, RetinaNetDetector
from advlib.models.ssd import DenseOutput, SSDDetector

#: default stabiliser of every denominator (zennit's default)
EPS = 1e-6


@dataclass
class _Op:
    kind: str  # conv / pass / add / upsample / maxpool
    inputs: tuple[Tensor, ...]
    output: Tensor
    args: dict = field(default_factory=dict)


def _unsupported(m: nn.Module, where: str) -> TypeError:
    return TypeError(f"relevance propagation has no rule for module type {type(m).__name__} ({where}); "
                     "supported: Conv2d (+BatchNorm2d/GroupNorm), ReLU, MaxPool2d, Identity, nn.Sequential, "
                     "the tiny backbones' residual blocks, torchvision's FPN (no extra block), SSDHead, RetinaNetHead")


class Trace:
    """A recorded forward pass (build it with :func:`trace`).

    Attributes:
        input: the normalised image ``[B, 3, H, W]`` (the first convolution's input).
        output: the detector's dense output (``DenseOutput`` or ``FocalOutput``; ``box_deltas`` is
            ``None`` when the box head was not traced).
        levels: per head (``"cls"`` / ``"box"``) the per-level head convolution outputs
            ``[B, A_l·K, H_l, W_l]`` in output order.
    """

    def __init__(self, normalised: Tensor) -> None:
        self.input = normalised
        self.ops: list[_Op] = []
        self.nonneg: set[int] = set()  # ids of recorded tensors known to be >= 0
        self.levels: dict[str, list[Tensor]] = {}
        self.output: DenseOutput | FocalOutput | None = None

    # ---------------------------------------------------------------- forward (recording)
    def _conv(self, conv: nn.Conv2d, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None,
              rule_sign: Tensor | None = None) -> Tensor:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"Conv2d with padding {conv.padding!r} / mode {conv.padding_mode!r} is not supported")
        with torch.no_grad():  # weights are constants here: gradients go to the images only
            w = conv.weight if scale is None else conv.weight * scale.view(-1, 1, 1, 1)
            b = conv.bias
            if shift is not None:
                b = shift if b is None else b * scale + shift
            rule_w = w if rule_sign is None else w * rule_sign.view(-1, 1, 1, 1)
        z = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        rule = "zb" if x is self.input else ("zplus" if id(x) in self.nonneg else "signed")
        self.ops.append(_Op("conv", (x,), z, dict(w=rule_w, rule=rule, stride=conv.stride, padding=conv.padding,
                                                   dilation=conv.dilation, groups=conv.groups)))
        return z

    def _pass(self, x: Tensor, y: Tensor, nonneg: bool = False) -> Tensor:
        self.ops.append(_Op("pass", (x,), y))
        if nonneg:
            self.nonneg.add(id(y))
        return y

    def _add(self, a: Tensor, b: Tensor) -> Tensor:
        c = a + b
        self.ops.append(_Op("add", (a, b), c))
        return c

    def _seq(self, seq: nn.Sequential, x: Tensor) -> Tensor:
        children = list(seq._modules.values())
        i = 0
        while i < len(children):
            m, nxt = children[i], (children[i + 1] if i + 1 < len(children) else None)
            if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
                if nxt.running_var is None:
                    raise TypeError("BatchNorm2d without running statistics cannot be folded")
                scale = (nxt.weight if nxt.weight is not None else 1.0) / torch.sqrt(nxt.running_var + nxt.eps)
                bias = nxt.bias if nxt.bias is not None else 0.0
                x, i = self._conv(m, x, scale.detach(), (bias - nxt.running_mean * scale).detach()), i + 2
            elif isinstance(m, nn.Conv2d) and isinstance(nxt, nn.GroupNorm):
                sign = torch.sign(nxt.weight.detach()) if nxt.weight is not None else None
                z = self._conv(m, x, rule_sign=sign)
                x, i = self._pass(z, F.group_norm(z, nxt.num_groups, nxt.weight, nxt.bias, nxt.eps)), i + 2
            else:
                x, i = self._module(m, x), i + 1
        return x

    def _module(self, m: nn.Module, x: Tensor) -> Tensor:
        if isinstance(m, nn.Sequential):
            return self._seq(m, x)
        if isinstance(m, nn.Conv2d):
            return self._conv(m, x)
        if isinstance(m, nn.ReLU):
            return self._pass(x, F.relu(x), nonneg=True)
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, nn.MaxPool2d):
            y, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
            self.ops.append(_Op("maxpool", (x,), y, dict(idx=idx)))
            if id(x) in self.nonneg:
                self.nonneg.add(id(y))
            return y
        if isinstance(m, _Residual):  # relu(conv2(conv1(x)) + skip(x))
            r = self._seq(m.conv2, self._seq(m.conv1, x))
            c = self._add(r, self._module(m.skip, x))
            return self._pass(c, F.relu(c), nonneg=True)
        raise _unsupported(m, "backbone")

    def _backbone(self, m: nn.Module, x: Tensor) -> list[Tensor]:
        if isinstance(m, _BodyThenExtras):
            feats = [self._module(m.body, x)]
            for block in m.extras:
                feats.append(self._module(block, feats[-1]))
            return feats
        raise _unsupported(m, "backbone: expected tiny_vgg / tiny_resnet")

    def _fpn(self, fpn: nn.Module, feats: list[Tensor]) -> list[Tensor]:
        if not isinstance(fpn, FeaturePyramidNetwork):
            raise _unsupported(fpn, "feature pyramid")
        if fpn.extra_blocks is not None:
            raise _unsupported(fpn.extra_blocks, "FPN extra block")
        last = self._seq(fpn.inner_blocks[-1], feats[-1])
        results = [self._seq(fpn.layer_blocks[-1], last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self._seq(fpn.inner_blocks[i], feats[i])
            top_down = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            self.ops.append(_Op("upsample", (last,), top_down))
            last = self._add(lateral, top_down)
            results.insert(0, self._seq(fpn.layer_blocks[i], last))
        return results

    def _head(self, name: str, convs: list[tuple[nn.Module | None, nn.Conv2d]], feats: list[Tensor], k: int) -> Tensor:
        outs, flat = [], []
        for (tower, final), f in zip(convs, feats):
            o = self._conv(final, f if tower is None else self._seq(tower, f))
            n, _, h, w = o.shape
            outs.append(o)
            flat.append(o.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k))  # [B, H·W·A_l, K]
        self.levels[name] = outs
        return torch.cat(flat, dim=1)

    def record(self, module: nn.Module, x: Tensor) -> Tensor:
        """Run a plain module (``nn.Sequential`` of the supported layers) on ``x``, recording it."""
        return self._module(module, x)

    # ---------------------------------------------------------------- backward (relevance)

    def propagate(self, seeds: dict[str, Tensor], low: Tensor, high: Tensor, eps: float = EPS) -> Tensor:
        """Input relevance of head-output relevances ``seeds`` (``"cls"`` / ``"box"`` -> ``[K, B, A, K_out]``).

        Args:
            low, high: z^B bounds of the normalised image, broadcastable to ``[B, 3, H, W]``.
            eps: stabiliser added to every (non-negative) z+/z^B denominator.

        Returns:
            ``[K, B, 3, H, W]``: relevance of each normalised-input element.
        """
        pairs = []
        for name, r in seeds.items():
            if name not in self.levels:
                raise ValueError(f"head {name!r} was not traced; traced: {sorted(self.levels)}")
            start, kout = 0, r.shape[-1]
            for o in self.levels[name]:
                b, ak, h, w = o.shape
                n = ak // kout * h * w
                part = r[:, :, start:start + n].reshape(r.shape[0] * b, h, w, ak // kout, kout)
                # inverse of the head's flatten: [K·B, H, W, A_l, K_out] -> [K, B, A_l·K_out, H, W]
                pairs.append((o, part.permute(0, 3, 4, 1, 2).reshape(r.shape[0], b, ak, h, w)))
                start += n
        return self.propagate_tensors(pairs, low, high, eps)

    def propagate_tensors(self, seeds: list[tuple[Tensor, Tensor]], low: Tensor, high: Tensor,
                          eps: float = EPS) -> Tensor:
        """Input relevance of relevances ``[K, *t.shape]`` placed on recorded tensors ``t``.

        Returns:
            ``[K, *input.shape]`` (zeros where no relevance reaches the input).
        """
        rel: dict[int, Tensor] = {}
        for t, r in seeds:
            rel[id(t)] = rel[id(t)] + r if id(t) in rel else r
        for op in reversed(self.ops):
            r = rel.pop(id(op.output), None)
            if r is None:
                continue
            for x, rx in zip(op.inputs, _RULES[op.kind](op, r, low, high, eps)):
                rel[id(x)] = rel[id(x)] + rx if id(x) in rel else rx
        k = seeds[0][1].shape[0]
        return rel.get(id(self.input), self.input.new_zeros((k, *self.input.shape)))


def _convT(s: Tensor, w: Tensor, x: Tensor, a: dict) -> Tensor:
    """Transposed convolution of ``s [K, B, O, H', W']`` back to ``x``'s shape ``[K, B, C, H, W]``."""
    k, b = s.shape[:2]
    out_pad = []
    for d in range(2):
        full = (s.shape[3 + d] - 1) * a["stride"][d] - 2 * a["padding"][d] + a["dilation"][d] * (w.shape[2 + d] - 1) + 1
        out_pad.append(x.shape[2 + d] - full)
    y = F.conv_transpose2d(s.flatten(0, 1), w, None, a["stride"], a["padding"], tuple(out_pad), a["groups"],
                           a["dilation"])
    return y.view(k, b, *y.shape[1:])


def _const_conv(v: Tensor, w: Tensor, x: Tensor, conv) -> Tensor:
    """``conv`` of an image shaped like ``x`` whose pixels all equal ``v`` (a scalar, per image
    ``[B, 1, 1, 1]`` or per channel ``[1, C, 1, 1]``), without convolving a whole batch of constants."""
    v = v.view(1, 1, 1, 1) if v.dim() == 0 else v
    if v.shape[1] == 1:
        return v * conv(torch.ones_like(x[:1]), w)  # [B|1, 1, 1, 1] * [1, O, H', W']
    if v.shape[0] == 1:
        return conv(v.expand(1, *x.shape[1:]), w)
    return conv(v.expand_as(x), w)


def _rule_conv(op: _Op, r: Tensor, low: Tensor, high: Tensor, eps: float) -> tuple[Tensor]:
    (x,), a = op.inputs, op.args
    w = a["w"]
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    c = x.shape[1]

    def conv(t: Tensor, k: Tensor) -> Tensor:
        return F.conv2d(t, k, None, a["stride"], a["padding"], a["dilation"], a["groups"])

    def back(s: Tensor, *ks: Tensor) -> list[Tensor]:
        if a["groups"] == 1:  # one transposed convolution for all kernels: [K, B, n·C, H, W]
            return list(_convT(s, torch.cat(ks, dim=1), x, a).split(c, dim=2))
        return [_convT(s, k, x, a) for k in ks]

    if a["rule"] == "zplus":
        s = r / (conv(x, wp) + eps)
        return (x * _convT(s, wp, x, a),)
    if a["rule"] == "signed":
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        s = r / (conv(xp, wp) + conv(xn, wn) + eps)
        gp, gn = back(s, wp, wn)
        return (xp * gp + xn * gn,)
    s = r / (conv(x, w) - _const_conv(low, wp, x, conv) - _const_conv(high, wn, x, conv) + eps)
    g, gp, gn = back(s, w, wp, wn)
    return (x * g - low * gp - high * gn,)


def _rule_add(op: _Op, r: Tensor, low: Tensor, high: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    a, b = op.inputs
    c = op.output
    den = c + eps * (2.0 * (c >= 0).to(c.dtype) - 1.0)  # signed stabiliser (sign(0) = +1)
    return r * (a / den), r * (b / den)


def _nearest_index(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """One-hot ``[n_out, n_in]``: which source row nearest upsampling copies to each output row."""
    src = torch.arange(n_in, dtype=like.dtype, device=like.device).view(1, 1, n_in, 1)
    idx = F.interpolate(src, size=(n_out, 1), mode="nearest").view(n_out).round().long()
    return F.one_hot(idx, n_in).to(like.dtype)


def _rule_upsample(op: _Op, r: Tensor, *_) -> tuple[Tensor]:
    (x,) = op.inputs
    mh = _nearest_index(x.shape[2], r.shape[3], r)
    mw = _nearest_index(x.shape[3], r.shape[4], r)
    return (torch.einsum("kbchw,hH,wW->kbcHW", r, mh, mw),)


def _rule_maxpool(op: _Op, r: Tensor, *_) -> tuple[Tensor]:
    (x,) = op.inputs
    k, (b, c, h, w) = r.shape[0], x.shape
    idx = op.args["idx"].flatten(2).unsqueeze(0).expand(k, -1, -1, -1)  # [K, B, C, H'·W']
    out = r.new_zeros(k, b, c, h * w).scatter_add(3, idx, r.flatten(3))
    return (out.view(k, b, c, h, w),)


_RULES = {"conv": _rule_conv, "pass": lambda op, r, *_: (r,), "add": _rule_add, "upsample": _rule_upsample,
          "maxpool": _rule_maxpool}


def trace(model: nn.Module, images: Tensor, box_head: bool = True) -> Trace:
    """Run ``model`` on ``images`` recording what relevance propagation needs.

    Batch norm uses its running statistics (eval-mode semantics) whatever the model's mode, so the
    traced output equals ``model(images)`` in eval mode. The model is not modified.

    Args:
        model: an :class:`~advlib.models.ssd.SSDDetector` or
            :class:`~advlib.models.retinanet.RetinaNetDetector` on ``tiny_vgg`` / ``tiny_resnet``.
        images: ``[B, 3, H, W]`` in ``[0, 1]`` (may require grad).
        box_head: also trace the box-regression head (not needed for classification nodes).

    Returns:
        A :class:`Trace`.

    Raises:
        TypeError: naming the first module type it has no rule for.
    """
    if not isinstance(model, (SSDDetector, RetinaNetDetector)):
        raise _unsupported(model, "detector: expected SSDDetector or RetinaNetDetector")
    model._check_images(images)
    x = (images - model.mean) / model.std
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)  # as the SSD's own forward (faster convs)
    t = Trace(x)
    k_cls = model.num_classes + 1
    if isinstance(model, SSDDetector):
        head = model.head
        if not isinstance(head, SSDHead):
            raise _unsupported(head, "SSD head")
        feats = t._backbone(model.backbone, t.input)
        cls = t._head("cls", [(None, c) for c in head.classification_head.module_list], feats, k_cls)
        box = (t._head("box", [(None, c) for c in head.regression_head.module_list], feats, 4) if box_head else None)
        t.output = DenseOutput(cls, box)
        return t
    net = model.net
    if not isinstance(net.head, RetinaNetHead):
        raise _unsupported(net.head, "RetinaNet head")
    feats = t._fpn(net.backbone.fpn, t._backbone(net.backbone.body, t.input))
    ch, rh = net.head.classification_head, net.head.regression_head
    cls = t._head("cls", [(ch.conv, ch.cls_logits)] * len(feats), feats, k_cls)
    box = t._head("box", [(rh.conv, rh.bbox_reg)] * len(feats), feats, 4) if box_head else None
    t.output = FocalOutput(cls, box)
    return t


def input_bounds(model: nn.Module | None, normalised: Tensor,
                 bounds: str | tuple[float, float] = "image") -> tuple[Tensor, Tensor]:
    """z^B bounds ``(low, high)`` of the normalised image, broadcastable to ``[B, 3, H, W]``.

    Args:
        model: the detector (its ``mean`` / ``std`` buffers).
        normalised: the first convolution's input ``[B, 3, H, W]``.
        bounds: ``"image"`` (the official code's: each image's own minimum and maximum over all
            channels and pixels, ``[B, 1, 1, 1]``, differentiable as in its TF graph), ``"domain"``
            (where pixels 0 and 1 land after normalisation, per channel, ``[1, 3, 1, 1]``), or a
            ``(low, high)`` pair in normalised units.
    """
    if bounds == "image":
        flat = normalised.flatten(1)
        return flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    if bounds == "domain":
        return (0.0 - model.mean) / model.std, (1.0 - model.mean) / model.std
    if isinstance(bounds, tuple) and len(bounds) == 2:
        return normalised.new_tensor(float(bounds[0])), normalised.new_tensor(float(bounds[1]))
    raise ValueError(f"bounds must be 'image', 'domain' or a (low, high) pair, got {bounds!r}")


__all__ = ["EPS", "Trace", "input_bounds", "trace"]
