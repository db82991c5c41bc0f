"""Batch-norm folding: a ``Conv2d -> BatchNorm2d`` pair becomes one convolution.

In eval mode a BN layer is a per-channel affine map of its input,
``y = γ (z - μ) / sqrt(σ² + ε) + β`` with the running mean ``μ`` and variance ``σ²``, so after a
convolution ``z = W * x + b`` it folds into the convolution's weights:
``W' = W · s`` (per output channel) and ``b' = (b - μ) · s + β`` with ``s = γ / sqrt(σ² + ε)``.
RobustDet folds BN before its adversarially-aware convolutions (a BN shared by all kernels would
mix the clean and adversarial statistics the kernels are meant to separate); relevance
propagation folds BN for the same reason (one linear layer per step).
"""

from __future__ import annotations

import torch
from torch import nn


def _path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _foldable_pairs(module: nn.Module) -> list[tuple[str, nn.Sequential, str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """Every ``(seq path, seq, conv name, conv, bn name, bn)`` with the BN right after the conv."""
    pairs = []
    for prefix, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq._modules.items())  # execution order, repeats kept (named_children drops them)
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                pairs.append((prefix, seq, conv_name, conv, bn_name, bn))
    return pairs


def _check_pair(path: str, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"BatchNorm2d at {path!r} has no running statistics (track_running_stats=False): it "
            "normalises with batch statistics even in eval mode and cannot be folded"
        )
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"BatchNorm2d at {path!r} has {bn.num_features} features but the convolution before it "
            f"has {conv.out_channels} output channels"
        )


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv`` (computed in float64, stored in place)."""
    w = conv.weight
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)  # [O]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    w.copy_(w.double() * scale.view(-1, 1, 1, 1))  # copy_ keeps the weight's memory format
    new_bias = ((bias - mean) * scale + beta).to(dtype=w.dtype, device=w.device)  # [O]
    if conv.bias is not None:
        conv.bias.copy_(new_bias)
    else:
        conv.bias = nn.Parameter(new_bias, requires_grad=w.requires_grad)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential``, in place.

    For each such pair (searched recursively) the BN's running statistics and affine parameters go
    into the convolution's weight and bias (a bias is created when the convolution has none) and
    the BN is replaced by ``nn.Identity()``. The module's eval-mode output is unchanged (up to
    float rounding); in training mode the BN's batch statistics are gone, as intended. Nothing is
    changed when a BN cannot be folded.

    Args:
        module: any module (e.g. an :class:`~advlib.models.ssd.SSDDetector`); modified in place.

    Returns:
        The number of BatchNorm2d layers folded (0 for a module without BN).

    Raises:
        ValueError: naming the module path of each BatchNorm2d that cannot be folded (not directly
            after a Conv2d in a Sequential, without running statistics, with a channel count other
            than the convolution's, or a convolution / BN shared by two pairs).
    """
    pairs = _foldable_pairs(module)
    bad: list[str] = []
    foldable: set[int] = set()
    seen_convs: set[int] = set()
    for prefix, _seq, conv_name, conv, bn_name, bn in pairs:
        path = _path(prefix, bn_name)
        _check_pair(path, conv, bn)
        if id(bn) in foldable or id(conv) in seen_convs:
            raise ValueError(f"BatchNorm2d at {path!r} or the convolution {_path(prefix, conv_name)!r} "
                             "appears in two Conv2d -> BatchNorm2d pairs (a shared module); cannot fold")
        foldable.add(id(bn))
        seen_convs.add(id(conv))
    for name, m in module.named_modules():
        if isinstance(m, nn.BatchNorm2d) and id(m) not in foldable:
            bad.append(name or "<the module itself>")
    if bad:
        raise ValueError(
            f"BatchNorm2d at {bad} cannot be folded: only a BatchNorm2d directly after a Conv2d in an "
            "nn.Sequential is folded (the module was left unchanged)"
        )
    for _prefix, seq, _conv_name, conv, bn_name, bn in pairs:
        _fold_into(conv, bn)
        setattr(seq, bn_name, nn.Identity())
    return len(pairs)


__all__ = ["fold_batchnorm"]
