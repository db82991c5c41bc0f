"""RobustDet's adversarially-aware convolution (AAconv, Dong et al. 2022, sec. 4.2).

Each AAconv layer holds ``K`` kernels ``θ_1..θ_K``; the adversarial image discriminator gives every
image a probability vector ``π = D(x) ∈ Δ^K`` and the image is convolved with its own kernel
``θ̇ = Σ_k π_k θ_k`` (a dynamic convolution, as in CondConv / DynamicConv, which the official code
copies). All AAconv layers of one model read the same per-image vector from one shared
:class:`KernelMixing`, which the model sets before each forward.

Use (BN folded first, since one BN shared by all kernels would mix their statistics):

    fold_batchnorm(model)
    mixing = to_aaconv(model, K=4)   # every Conv2d -> AAConv2d with K copies of its weights
    mixing.weights = discriminator(images)   # [B, K]
    out = model(images)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

IMPLS = ("aggregate", "stacked")


class KernelMixing:
    """The per-image kernel weights shared by every :class:`AAConv2d` of one model (not a module).

    Attributes:
        weights: ``[B, K]`` per-image probability vectors (the discriminator's output), set before
            each forward; ``None`` until then. Gradients flow into it (the discriminator trains
            through the detector's loss).
    """

    def __init__(self, weights: Tensor | None = None) -> None:
        self.weights = weights

    def __repr__(self) -> str:
        shape = None if self.weights is None else tuple(self.weights.shape)
        return f"KernelMixing(weights shape={shape})"


class AAConv2d(nn.Module):
    """A 2-D convolution with ``K`` kernels mixed per image by ``mixing.weights`` (RobustDet's AAconv).

    ``y_b = conv(x_b, Σ_k π_bk θ_k) + Σ_k π_bk b_k`` for every image ``b``, computed batched.
    Two exact implementations (by linearity they agree for any ``π``):

    * ``"aggregate"`` (default, the official code's): per-image kernels ``π @ θ`` (``[B*O, I/g,
      kh, kw]``) and one grouped convolution over the batch folded into channels
      (``[1, B*C, H, W]``, ``groups = B*g``).
    * ``"stacked"``: one convolution with the ``K`` kernels stacked as ``K*O`` output channels,
      then the ``K`` outputs mixed per image (``K``x the convolution FLOPs).

    Measured on CPU (``benchmarks/robustdet.py``: one thread, batch 16, K=4, forward + backward
    with input and mixing gradients, every conv shape of the default profile's tiny_vgg SSD at
    128 px, taken on a loaded 2-core machine): over the whole model ``aggregate`` costs 1.64x the
    plain convolutions and ``stacked`` 4.8x. Per layer ``aggregate`` is 1.2-2.1x on the 16-64 px
    maps that hold most of the work, 3.9x on the 3-channel stem and 2-7x on the 2-8 px maps
    (small in absolute terms; ``stacked`` is about equal there), so ``aggregate`` is the default.

    Memory format: the grouped convolution needs the batch and channels adjacent, so a
    channels_last input is copied to contiguous NCHW once per layer and the output is contiguous
    NCHW (a channels_last grouped convolution with ``B*g`` groups was up to 10x slower on CPU for
    the small maps). ``stacked`` keeps the input's memory format. The kernel bank is a 5-D
    parameter, so ``model.to(memory_format=torch.channels_last)`` raises for a converted model, as
    for any 5-D parameter (Conv3d): convert the memory format before :func:`to_aaconv`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode: as :class:`torch.nn.Conv2d`.
        K: number of kernels.
        mixing: the shared :class:`KernelMixing` whose ``weights`` ``[B, K]`` the forward reads.
        impl: ``"aggregate"`` or ``"stacked"`` (see above).

    Shape:
        weight ``[K, O, I/groups, kh, kw]``, bias ``[K, O]``; ``x [B, I, H, W] -> [B, O, H', W']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        K: int,
        mixing: KernelMixing,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        impl: str = "aggregate",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be a positive int, got {K!r}")
        if not isinstance(mixing, KernelMixing):
            raise ValueError(f"mixing must be a KernelMixing, got {type(mixing).__name__}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}"
            )
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        self.in_channels, self.out_channels, self.K = in_channels, out_channels, K
        self.kernel_size = _pair(kernel_size)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.groups, self.padding_mode, self.impl = groups, padding_mode, impl
        self.mixing = mixing  # a plain attribute: shared, never a submodule or in the state dict
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(K, out_channels, in_channels // groups, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(K, out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise each kernel as :class:`torch.nn.Conv2d` initialises its one."""
        fan_in = self.weight[0].shape[1:].numel()
        for k in range(self.K):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(self.bias[k], -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, K: int, mixing: KernelMixing, impl: str = "aggregate") -> AAConv2d:
        """An AAConv2d whose ``K`` kernels are all copies of ``conv``'s weight and bias.

        RobustDet starts from a trained SSD this way (the official ``load_weights_expand``): with
        equal kernels the layer equals ``conv`` for any mixing vector that sums to one.
        """
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"from_conv needs an nn.Conv2d, got {type(conv).__name__}")
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, K, mixing, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, impl=impl, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w.detach().unsqueeze(0).expand_as(new.weight))  # [O, I/g, kh, kw] -> [K, ...]
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach().unsqueeze(0).expand_as(new.bias))  # [O] -> [K, O]
        new.weight.requires_grad_(w.requires_grad)
        if new.bias is not None:
            new.bias.requires_grad_(conv.bias.requires_grad)
        return new

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, K={self.K}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + f", impl={self.impl}"

    def _mixing_weights(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AAConv2d expects [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        pi = self.mixing.weights
        if pi is None:
            raise ValueError(
                "AAConv2d: the kernel mixing weights are unset; set the model's KernelMixing.weights to "
                f"the [B, K={self.K}] per-image probabilities (the discriminator's output) before the forward"
            )
        if not torch.is_tensor(pi) or pi.dim() != 2 or pi.shape != (x.shape[0], self.K):
            got = tuple(pi.shape) if torch.is_tensor(pi) else type(pi).__name__
            raise ValueError(f"AAConv2d: mixing weights must be [B={x.shape[0]}, K={self.K}], got {got}")
        return pi.to(self.weight.dtype)

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int] | str]:
        """Non-zero padding modes pad explicitly (as nn.Conv2d does); returns the conv's padding."""
        if self.padding_mode == "zeros":
            return x, self.padding
        if self.padding == "valid":
            return x, 0
        if self.padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            pad = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        else:
            ph, pw = self.padding
            pad = (pw, pw, ph, ph)
        return F.pad(x, pad, mode=self.padding_mode), 0

    def forward(self, x: Tensor) -> Tensor:
        """Convolve each image with its mixed kernel ``Σ_k π_bk θ_k``.

        Shape:
            ``x [B, I, H, W]`` with ``mixing.weights [B, K]`` -> ``[B, O, H', W']``.
        """
        pi = self._mixing_weights(x)
        x, padding = self._pad(x)
        if self.impl == "stacked":
            return self._forward_stacked(x, pi, padding)
        b, c, h, w = x.shape
        o, g = self.out_channels, self.groups
        # [B, K] @ [K, O*I/g*kh*kw] -> [B, O*I/g*kh*kw] -> [B*O, I/g, kh, kw]: image b's kernel Σ_k π_bk θ_k
        kernels = (pi @ self.weight.reshape(self.K, -1)).reshape(b * o, c // g, *self.kernel_size)
        bias = None if self.bias is None else (pi @ self.bias).reshape(b * o)  # [B, K]@[K, O] -> [B*O]
        xb = x.contiguous().view(1, b * c, h, w)  # [B, C, H, W] -> [1, B*C, H, W] (copies a channels_last x)
        y = F.conv2d(xb, kernels, bias, self.stride, padding, self.dilation, b * g)  # [1, B*O, H', W']
        return y.view(b, o, *y.shape[-2:])  # [1, B*O, H', W'] -> [B, O, H', W']

    def _forward_stacked(self, x: Tensor, pi: Tensor, padding: tuple[int, int] | str) -> Tensor:
        """One convolution with ``K*O`` output channels, then the ``K`` outputs mixed per image."""
        k, o, g = self.K, self.out_channels, self.groups
        og = o // g
        # [K, O, I/g, kh, kw] -> [K, g, O/g, ...] -> [g, K, O/g, ...] -> [g*K*O/g, I/g, kh, kw]: each
        # group's K*O/g output channels together, as a grouped convolution orders them
        tail = self.weight.shape[2:]  # (I/g, kh, kw)
        w = self.weight.reshape(k, g, og, *tail).transpose(0, 1).reshape(g * k * og, *tail)
        y = F.conv2d(x, w, None, self.stride, padding, self.dilation, g)  # [B, g*K*O/g, H', W']
        b, _, h, wd = y.shape
        if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
            yy = y.permute(0, 2, 3, 1).reshape(b, h * wd, g, k, og)  # NHWC memory -> [B, H'W', g, K, O/g] (a view)
            out = torch.einsum("bpgko,bk->bpgo", yy, pi)  # [B, H'W', g, O/g]
            out = out.reshape(b, h, wd, o).permute(0, 3, 1, 2)  # -> [B, O, H', W'] channels_last
        else:
            yy = y.reshape(b, g, k, og, h * wd)  # [B, g*K*O/g, H', W'] -> [B, g, K, O/g, H'W']
            out = torch.einsum("bgkop,bk->bgop", yy, pi).reshape(b, o, h, wd)  # -> [B, O, H', W']
        if self.bias is not None:
            out = out + (pi @ self.bias)[:, :, None, None]  # [B, K]@[K, O] -> [B, O, 1, 1]
        return out


def to_aaconv(module: nn.Module, K: int = 4, impl: str = "aggregate") -> KernelMixing:
    """Replace every ``nn.Conv2d`` in ``module`` by :meth:`AAConv2d.from_conv`, in place.

    All new layers share one new :class:`KernelMixing`, which is returned; set its ``weights``
    ``[B, K]`` before each forward. Convolutions inside ModuleLists (torchvision's ``SSDHead``)
    are replaced too; a convolution shared by two parents becomes one shared AAConv2d.

    Args:
        module: the model, BN already folded (:func:`~advlib.models.fold.fold_batchnorm`).
        K: kernels per layer (RobustDet uses 4).
        impl: :class:`AAConv2d`'s implementation, ``"aggregate"`` or ``"stacked"``.

    Returns:
        The shared :class:`KernelMixing`.

    Raises:
        ValueError: a ``BatchNorm2d`` remains (naming its path; one BN shared by all kernels would
            mix their statistics: fold it first), the module already holds AAConv2d layers, has no
            Conv2d, or is itself a Conv2d.
    """
    bns = [name or "<the module itself>" for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:
        raise ValueError(f"BatchNorm2d at {bns} would be shared by all K kernels; fold it first with fold_batchnorm")
    if any(isinstance(m, AAConv2d) for m in module.modules()):
        raise ValueError("module already holds AAConv2d layers (to_aaconv was applied before)")
    if isinstance(module, nn.Conv2d):
        raise ValueError("module is itself a Conv2d and cannot be replaced in place; use AAConv2d.from_conv")
    mixing = KernelMixing()
    replaced: dict[int, AAConv2d] = {}
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):  # not named_children: it skips repeats
            if isinstance(child, nn.Conv2d):
                if id(child) not in replaced:
                    replaced[id(child)] = AAConv2d.from_conv(child, K, mixing, impl=impl)
                setattr(parent, name, replaced[id(child)])
    if not replaced:
        raise ValueError("module has no nn.Conv2d to replace")
    return mixing


__all__ = ["IMPLS", "AAConv2d", "KernelMixing", "to_aaconv"]
