"""What the wrapped torchvision detectors (RetinaNet, FCOS, Faster R-CNN) share: our backbone's maps
through a torchvision FPN (:class:`FPNBody`), and :class:`TorchvisionDetector`, the base class with
the parts of the Detector interface that do not depend on the family (anchor count, score
threshold, input check, batched detection with the mode restored, building on a backbone by name).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from advlib.models.backbones import build_backbone
from advlib.utils import eval_mode


class FPNBody(nn.Module):
    """Our backbone's maps through a torchvision FPN, as torchvision's detectors expect (an ordered
    dict of maps with one ``out_channels``); ``body`` is the backbone (:func:`backbone_of`)."""

    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), channels)
        self.out_channels = channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


class TorchvisionDetector(nn.Module):
    """Base of the wrapped torchvision detectors. A subclass sets ``net``, ``image_size``, the
    ``anchors`` buffer, and implements ``forward`` and ``postprocess``; ``score_owner`` names where
    torchvision keeps the score threshold (``net``, or ``net.roi_heads`` for Faster R-CNN)."""

    image_size: tuple[int, int]

    def _init_body(self, backbone: nn.Module, num_classes: int, image_size: tuple[int, int], fpn_channels: int,
                   pad: bool) -> tuple[FPNBody, list[Tensor]]:
        """The common start of a constructor: checks ``num_classes``, sets ``num_classes``,
        ``image_size``, ``padded_size`` (to a multiple of 32 with ``pad``, as torchvision's
        transform pads a batch; else the image size) and the ImageNet normalisation buffers, and
        returns the FPN body with its maps on a blank input (their shapes fix the anchors)."""
        from advlib.models.ssd import IMAGENET_MEAN, IMAGENET_STD

        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.padded_size = tuple(int(math.ceil(s / 32) * 32) for s in self.image_size) if pad else self.image_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        body = FPNBody(backbone, fpn_channels)
        with torch.no_grad(), eval_mode(body):
            probe = list(body(torch.zeros(1, 3, *self.padded_size)).values())
        return body, probe

    def _score_owner(self):
        return self.net

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    @property
    def score_thresh(self) -> float:
        return float(self._score_owner().score_thresh)

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self._score_owner().score_thresh = float(value)

    @contextmanager
    def score_threshold(self, value: float | None) -> Iterator[None]:
        """Post-process with score threshold ``value`` inside the block (``None``: the model's)."""
        owner = self._score_owner()
        old = owner.score_thresh
        try:
            if value is not None:
                owner.score_thresh = float(value)
            yield
        finally:
            owner.score_thresh = old

    def _dense_postprocess(self, heads: dict[str, list[Tensor]], batch: int,
                           score_thresh: float | None) -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` of a dense one-stage net on per-level ``heads``."""
        anchors = [list(self.anchors.split(self.level_sizes))] * batch
        with self.score_threshold(score_thresh):
            return self.net.postprocess_detections(heads, anchors, [self.image_size] * batch)

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[-2:])} but the model was built for "
                             f"{self.image_size}; resize in the dataset (size=...)")

    @torch.no_grad()
    def detect(self, images: Tensor, score_thresh: float | None = None, batch_size: int = 64) -> list[dict[str, Tensor]]:
        """Per-image detections ``{boxes [K, 4], scores [K], labels [K]}`` (mode restored)."""
        out: list[dict[str, Tensor]] = []
        with eval_mode(self):
            for i in range(0, images.shape[0], batch_size):
                out.extend(self.postprocess(self(images[i:i + batch_size]), score_thresh))
        return out


def build_on_backbone(cls, backbone: str, num_classes: int, image_size: int | tuple[int, int],
                      pretrained_backbone: bool = False, **kwargs):
    """A ``cls`` detector on one of our backbones by name (``tiny_vgg``, ``tiny_resnet``, ...), for
    inputs of ``image_size`` (an int for square images)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return cls(build_backbone(backbone, pretrained=pretrained_backbone), num_classes, size, **kwargs)


__all__ = ["FPNBody", "TorchvisionDetector", "build_on_backbone"]
