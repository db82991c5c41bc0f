"""RobustDet's detector (Dong et al., ECCV 2022, Fig. 6), composed onto a trained SSD.

``RobustDetector(ssd, K=4, cfr=False)`` folds the SSD's batch norms into its kernels (the paper's
VGG16 has none), turns every convolution of backbone, extras and heads into an
:class:`~advlib.models.aaconv.AAConv2d` holding K copies of the trained kernel, and adds the
adversarial image discriminator (:class:`~advlib.models.aid.AID`) whose K-way softmax mixes the
kernels per image (§4.2-4.3). With ``cfr=True`` (RobustDet*, §4.4) the convolution that produces
the first detection map predicts a mean and a log-variance (:class:`~advlib.models.cfr.ProbConv2d`),
a sample is passed on in training and the mean at test, and a decoder reconstructs the clean
image from the sample.

It is a :class:`~advlib.models.detector.Detector` like the SSD: ``model(images) -> DenseOutput``,
``anchors``, ``detect``; attacks differentiate through the discriminator and the kernel mixing
(as the official evaluation does). ``model(images, mixing=pi)`` runs with given mixing weights
instead (the official training's third group; fixed-mixing attacks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advlib.models.aaconv import AAConv2d, KernelMixing, to_aaconv
from advlib.models.aid import AID
from advlib.models.cfr import CFRDecoder, ProbConv2d
from advlib.models.fold import fold_batchnorm
from advlib.models.ssd import DenseOutput, SSDDetector
from advlib.utils import eval_mode


def first_map_module(backbone: nn.Module) -> nn.Module:
    """The sub-network of ``backbone`` whose output is the first (finest) detection map:
    ``body`` (tiny backbones), ``extractor.features`` (SSD300 VGG16: up to conv4_3) or ``stem``
    (ResNet-50: up to C3).

    Raises:
        ValueError: a backbone with none of these.
    """
    for path in ("body", "extractor.features", "stem"):
        mod = backbone
        try:
            for part in path.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        return mod
    raise ValueError(f"cannot find the first-map layers of backbone {type(backbone).__name__} "
                     "(expected an attribute body, extractor.features or stem)")


def _last_conv_slot(module: nn.Module) -> tuple[nn.Module, str]:
    """``(parent, attribute name)`` of the last (module order) AAConv2d inside ``module``."""
    slot = None
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, AAConv2d):
                slot = (parent, name)
    if slot is None:
        raise ValueError(f"no convolution inside {type(module).__name__}")
    return slot


class RobustDetector(nn.Module):
    """SSD with adversarially-aware convolutions, the adversarial image discriminator and,
    optionally, consistent features with reconstruction (RobustDet / RobustDet*).

    Args:
        ssd: a trained :class:`SSDDetector` (converted in place: BN folded, convolutions replaced).
        K: kernels per convolution (4, as the official code).
        cfr: add CFR (RobustDet*).
        aid_width: channels of the discriminator's first block (ours is a small CNN trained from
            scratch; the official one is an ImageNet ResNet-18).

    Attributes:
        last_mixing: ``[B, K]`` mixing weights of the last forward pass (for the triplet loss).
        last_cfr: ``(z, mu, logvar)`` of the last forward pass (``cfr=True``).
    """

    def __init__(self, ssd: SSDDetector, K: int = 4, cfr: bool = False, aid_width: int = 16) -> None:
        super().__init__()
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        fold_batchnorm(ssd)
        #: the one holder every AAConv2d reads its per-image mixing weights from (a plain
        #: attribute: not a module, not in the state dict; deepcopy keeps it shared)
        self.mixing: KernelMixing = to_aaconv(ssd, K)
        self.ssd, self.K, self.cfr = ssd, int(K), bool(cfr)
        self.aid = AID(K=K, width=aid_width)
        self.prob_conv: ProbConv2d | None = None
        self.decoder: CFRDecoder | None = None
        if cfr:
            parent, name = _last_conv_slot(first_map_module(ssd.backbone))
            self.prob_conv = ProbConv2d.from_conv(getattr(parent, name), keep_shared=[self.mixing])
            setattr(parent, name, self.prob_conv)
            with torch.no_grad(), eval_mode(ssd):
                self.mixing.weights = torch.full((1, K), 1.0 / K)
                first = ssd.backbone(torch.zeros(1, 3, *ssd.image_size))[0]  # [1, C, h, w]
            stride = ssd.image_size[0] // first.shape[-2]
            self.decoder = CFRDecoder(self.prob_conv.conv_mean.out_channels, stride)
        self.mixing.weights = None
        self.last_mixing: Tensor | None = None
        self.last_cfr: tuple[Tensor, Tensor, Tensor] | None = None

    def forward(self, images: Tensor, mixing: Tensor | None = None) -> DenseOutput:
        """Dense outputs for images in ``[0, 1]``, the kernels mixed per image by the
        discriminator (or by ``mixing`` ``[B, K]`` when given).

        Shape:
            images ``[B, 3, H, W]`` -> ``DenseOutput([B, A, C+1], [B, A, 4])``.
        """
        pi = self.aid(images) if mixing is None else mixing
        if pi.shape != (images.shape[0], self.K):
            raise ValueError(f"mixing must be [{images.shape[0]}, {self.K}], got {tuple(pi.shape)}")
        holder = self.mixing
        holder.weights = pi
        try:
            out = self.ssd(images)
        finally:
            holder.weights = None
        self.last_mixing = pi
        if self.prob_conv is not None:
            self.last_cfr = (self.prob_conv.z, self.prob_conv.mu, self.prob_conv.logvar)
        return out

    def reconstruct(self) -> Tensor:
        """CFR's reconstruction of the clean images from the last forward pass's sample ``z``.

        Shape:
            ``[B, 3, H, W]`` in ``[0, 1]``.
        """
        if self.decoder is None or self.last_cfr is None:
            raise ValueError("reconstruct() needs cfr=True and a forward pass first")
        return self.decoder(self.last_cfr[0])

    # ------------------------------------------------------- the Detector protocol (delegated)
    @property
    def num_classes(self) -> int:
        return self.ssd.num_classes

    @property
    def anchors(self) -> Tensor:
        return self.ssd.anchors

    @property
    def num_anchors(self) -> int:
        return self.ssd.num_anchors

    @property
    def box_coder(self):
        return self.ssd.box_coder

    @property
    def image_size(self) -> tuple[int, int]:
        return self.ssd.image_size

    @property
    def score_thresh(self) -> float:
        return self.ssd.score_thresh

    def decode(self, box_deltas: Tensor) -> Tensor:
        return self.ssd.decode(box_deltas)

    def postprocess(self, output: DenseOutput, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        return self.ssd.postprocess(output, score_thresh)

    #: per-image detections, kernels mixed by the discriminator (the SSD's own method: it only
    #: calls ``self(...)`` and ``self.postprocess``)
    detect = SSDDetector.detect

__all__ = ["RobustDetector", "first_map_module"]
