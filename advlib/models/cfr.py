"""RobustDet's consistent features with reconstruction (CFR, Sec. 4.4, eqs. 3-4).

The convolution that produces the first detection feature map (conv4_3 in the paper's VGG)
becomes a probabilistic one (:class:`ProbConv2d`): it predicts a mean ``μ`` and a log-variance
``log σ²`` per feature; in training a sample ``z = μ + σ·ε`` is passed on (to the detector and to a
decoder that reconstructs the CLEAN image, :class:`CFRDecoder`), at test ``μ`` is. The losses
(:func:`cfr_losses`) are the reconstruction error (eq. 3) and the VAE KL term (eq. 4), with the
official code's normalisation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``log σ²`` is clipped at this value before sampling (as the official code).
LOGVAR_MAX = 10.0

#: Our weights b, c of eq. 5 for images in [0, 1], equivalent to the official code's. The official
#: training script adds ``(0.16 · MSE + 5 · KLD) / 255`` with pixels in 0-255 (mean-subtracted;
#: the decoder ends in tanh · 160). An MSE in 0-255 units is 255² times ours, so
#: ``0.16 · 255² / 255 = 0.16 · 255 = 40.8`` on our MSE; the KLD does not depend on pixel units:
#: ``5 / 255 ≈ 0.0196``. (The paper's b = 0.16, c = 5 leave out the / 255 and the pixel scale.)
OFFICIAL_RECON_WEIGHTS: dict[str, float] = {"b": 0.16 * 255.0**2 / 255.0, "c": 5.0 / 255.0}


def _is_bias(name: str, p: Tensor) -> bool:
    return name.rsplit(".", 1)[-1] == "bias" or p.dim() == 1


class ProbConv2d(nn.Module):
    """A convolution predicting a Gaussian feature ``N(μ, σ²)`` (CFR, Sec. 4.4).

    ``conv_mean`` is the wrapped convolution (it predicts ``μ``, keeping its trained weights);
    ``conv_std`` is a deep copy of it, re-initialised, that predicts ``log σ²`` (clipped at
    ``LOGVAR_MAX`` = 10). The wrapped module is a black box: an ``nn.Conv2d`` or any module with
    the same call signature returning ``[B, C, H, W]`` (e.g. an adversarially-aware convolution);
    extra positional / keyword arguments of :meth:`forward` go to both copies. The copy is a
    full deep copy: plain attributes shared with other modules (an AAConv2d's ``KernelMixing``)
    are copied too unless named in ``keep_shared``.

    Initialisation of ``conv_std`` (our change): every parameter with more than one dimension
    (weights) is zeroed and every bias (a one-dimensional parameter, or any parameter named
    ``bias``, e.g. the ``[K, O]`` bias of a K-kernel convolution, whose mixing weights sum to 1) is
    filled with ``init_logvar`` = log(1e-2), so ``log σ²`` starts at log(1e-2) everywhere (σ = 0.1).
    If the convolution has no bias (a conv followed by BN), ProbConv2d adds its own per-channel
    ``logvar_bias`` (initialised to ``init_logvar``; needs ``conv.out_channels``). The official code
    re-initialises conv_std with zero bias and small Xavier weights (gain 1/256 for layers up to
    conv3_3; gain 1 at its default conv4_3, where Xavier's fans over the 5-D K-kernel bank give
    weights of std ≈ 1e-3): ``log σ²`` starts near 0 (σ of order 1), noise that is small next to
    the large activations of a VGG without BN on 0-255 pixels. Our small backbones' activations
    are O(1), so σ ≈ 1 noise would swamp the features; we start at σ = 0.1 and let training move it.

    Training mode returns ``z = μ + exp(½ log σ²)·ε``, ``ε ~ N(0, 1)`` (from ``self.generator``
    when set, else torch's global generator); eval mode returns ``μ`` and skips ``conv_std``. The
    last call's ``mu``, ``logvar`` and ``z`` are kept on the module for the losses (in eval mode
    ``logvar`` is ``None`` and ``z`` is ``μ``); copies and pickles of the module drop them.

    Shape:
        x ``[B, C_in, H, W]`` -> ``[B, C, H', W']`` (whatever the wrapped convolution returns).
    """

    def __init__(
        self, conv: nn.Module, init_logvar: float = math.log(1e-2), keep_shared: Iterable[object] = ()
    ) -> None:
        super().__init__()
        self.conv_mean = conv
        self.conv_std = copy.deepcopy(conv, {id(obj): obj for obj in keep_shared})
        for attr in ("in_channels", "out_channels", "K"):
            if hasattr(conv, attr):
                setattr(self, attr, getattr(conv, attr))
        has_bias = False
        with torch.no_grad():
            for name, p in self.conv_std.named_parameters():
                if _is_bias(name, p):
                    p.fill_(init_logvar)
                    has_bias = True
                elif p.dim() > 1:
                    p.zero_()
        self.logvar_bias: nn.Parameter | None = None
        if not has_bias:
            channels = getattr(conv, "out_channels", None)
            if not isinstance(channels, int):
                raise ValueError(
                    f"{type(conv).__name__} has no bias and no integer out_channels; ProbConv2d needs one "
                    "of them to start log σ² at init_logvar"
                )
            self.logvar_bias = nn.Parameter(torch.full((channels,), float(init_logvar)))
        self.generator: torch.Generator | None = None
        self.mu: Tensor | None = None
        self.logvar: Tensor | None = None
        self.z: Tensor | None = None

    @classmethod
    def from_conv(
        cls, conv: nn.Module, init_logvar: float = math.log(1e-2), keep_shared: Iterable[object] = ()
    ) -> ProbConv2d:
        """Wrap ``conv`` (kept as ``conv_mean``); ``conv_std`` is its re-initialised deep copy.

        Args:
            conv: the convolution producing the first detection map (a black box).
            init_logvar: the initial ``log σ²`` (log 1e-2).
            keep_shared: objects the copy must share with ``conv`` rather than copy, e.g. the
                ``KernelMixing`` an adversarially-aware convolution reads its weights from (a deep
                copy would otherwise give ``conv_std`` a holder of its own that nothing sets).
        """
        return cls(conv, init_logvar, keep_shared)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        """``z`` (training) or ``μ`` (eval); stores ``mu``, ``logvar``, ``z``.

        Shape:
            x ``[B, C_in, H, W]`` -> ``[B, C, H', W']``.
        """
        mu = self.conv_mean(x, *args, **kwargs)
        if not self.training:
            self.mu, self.logvar, self.z = mu, None, mu
            return mu
        logvar = self.conv_std(x, *args, **kwargs)
        if self.logvar_bias is not None:
            logvar = logvar + self.logvar_bias.view(1, -1, 1, 1)  # [C] -> [1, C, 1, 1]
        logvar = logvar.clamp(max=LOGVAR_MAX)
        eps = torch.randn(mu.shape, generator=self.generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        self.mu, self.logvar, self.z = mu, logvar, z
        return z

    def __getstate__(self) -> dict:
        # The last call's tensors carry autograd graphs that deepcopy / pickle refuse; drop them.
        state = dict(super().__getstate__())
        state.update(mu=None, logvar=None, z=None)
        return state


class CFRDecoder(nn.Module):
    """Reconstructs the clean image from the sampled feature ``z`` (the generator G of eq. 3).

    conv3x3-BN-LeakyReLU to ``width`` channels, then ``log2(stride)`` upsampling blocks
    (ConvTranspose2d kernel 4, stride 2, padding 1 (exactly doubles the size; an even kernel
    overlaps evenly, so no checkerboard from uneven overlap), BN, LeakyReLU) halving the channels
    (at least 16), then a 3×3 conv to 3 channels and a sigmoid: our images are in ``[0, 1]``. The
    official decoder (``decoder_large_21``) is deeper, uses 3×3 transposed convolutions with
    output padding and ends in ``tanh · 160`` for mean-subtracted 0-255 pixels.

    Args:
        in_channels: channels of the feature map.
        stride: the feature map's stride w.r.t. the image, a power of 2 (8 for our first map).
        width: channels after the first convolution.

    Shape:
        z ``[B, in_channels, H, W]`` -> ``[B, 3, H·stride, W·stride]`` in ``(0, 1)``.
    """

    def __init__(self, in_channels: int, stride: int = 8, width: int = 64) -> None:
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"stride must be a power of 2, got {stride}")
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels}, {width}")
        self.stride = stride
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.01, inplace=True),
        ]
        c = width
        for _ in range(int(math.log2(stride))):
            out = max(c // 2, 16)
            layers += [
                nn.ConvTranspose2d(c, out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.01, inplace=True),
            ]
            c = out
        layers += [nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Reconstruction ``[B, 3, H·stride, W·stride]`` of ``z`` ``[B, C, H, W]``."""
        if z.dim() != 4:
            raise ValueError(f"z must be [B, C, H, W], got shape {tuple(z.shape)}")
        return self.net(z)


def cfr_losses(recon: Tensor, clean: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """The CFR losses (eqs. 3 and 4) with the official normalisation.

    ``L_re`` = mean squared error between the reconstruction and the CLEAN image (for an
    adversarial input, its clean counterpart), averaged over every element.
    ``L_kld`` = mean over images of ``-½ · mean over elements of (1 + log σ² - μ² - σ²)``
    (eq. 4's ``1/(2N) Σ`` per image, averaged over the batch).

    Args:
        recon: decoder output; clean: the clean images, both in ``[0, 1]``.
        mu, logvar: :class:`ProbConv2d`'s ``mu`` and ``logvar`` of the same call.

    Returns:
        ``(L_re, L_kld)``, two scalars.

    Shape:
        recon, clean ``[B, 3, H, W]``; mu, logvar ``[B, C, h, w]``.
    """
    if recon.shape != clean.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and clean {tuple(clean.shape)} must have one shape")
    if mu.shape != logvar.shape or mu.dim() < 2:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must be one [B, ...] shape")
    l_re = F.mse_loss(recon, clean)
    per_image = (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).mean(dim=1)  # [B, C, h, w] -> [B]
    return l_re, (-0.5 * per_image).mean()


__all__ = ["CFRDecoder", "LOGVAR_MAX", "OFFICIAL_RECON_WEIGHTS", "ProbConv2d", "cfr_losses"]
