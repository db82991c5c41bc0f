"""SSD built from torchvision parts, exposing raw dense outputs for attacks.

``model(images) -> DenseOutput(cls_logits [B, A, C+1], box_deltas [B, A, 4])`` on images in
``[0, 1]`` (normalisation happens inside), ``model.anchors`` ``[A, 4]`` xyxy in input pixels, and
``model.detect(images) -> list[dict(boxes, scores, labels)]``. Parts: torchvision's
``DefaultBoxGenerator`` (anchors), ``SSDHead`` (per-level 3x3 conv heads), ``BoxCoder``
(weights 10, 10, 5, 5 as SSD) and ``batched_nms``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSDHead
from torchvision.ops import batched_nms, clip_boxes_to_image

from advlib.models.backbones import build_backbone
from advlib.utils import eval_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DenseOutput(NamedTuple):
    """Raw detector output before decoding/NMS.

    Shape:
        cls_logits: ``[B, A, C+1]`` (index 0 is background); box_deltas: ``[B, A, 4]``
        (BoxCoder-encoded offsets relative to ``model.anchors``).
    """

    cls_logits: Tensor
    box_deltas: Tensor


def default_anchor_generator(num_maps: int) -> DefaultBoxGenerator:
    """SSD default boxes for ``num_maps`` feature maps.

    Four maps (small inputs, strides 8-64): scales [0.14, 0.25, 0.42, 0.65, 0.9] and aspect ratio
    2 on every map (4 boxes per location, 1,360 at 128 px). With SSD300's smaller scales
    ([0.07, 0.15, 0.3, ...]) the boxes are sparse for these strides: only 63 % of the generated
    dataset's objects had a default box with IoU >= 0.5 (1.6 positives per object); with these
    97 % do (3.8 per object), and training converges much faster. Six maps (SSD300): the paper's scales
    [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05] and ratios {2} / {2, 3}. Otherwise linear scales.
    """
    if num_maps == 4:
        return DefaultBoxGenerator([[2]] * 4, scales=[0.14, 0.25, 0.42, 0.65, 0.9])
    if num_maps == 6:
        return DefaultBoxGenerator(
            [[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
        )
    return DefaultBoxGenerator([[2]] * num_maps, min_ratio=0.1, max_ratio=0.9)


class SSDDetector(nn.Module):
    """A single-shot detector with raw dense outputs (the white-box target of every paper).

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to a list of maps, with ``out_channels``.
        num_classes: number of foreground classes ``C`` (the head predicts ``C + 1``).
        image_size: ``(H, W)`` of the model input; anchors are fixed for it.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: post-processing settings
            (SSD's: 0.01, 0.45, 200, 400 per class).
        channels_last: run convolutions in NHWC (faster on CPU and on GPUs with tensor cores).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        image_size: tuple[int, int],
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 200,
        topk_candidates: int = 400,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad(), eval_mode(backbone):
            probe = backbone(torch.zeros(1, 3, *self.image_size))
        self.anchor_generator = default_anchor_generator(len(probe))
        num_anchors = self.anchor_generator.num_anchors_per_location()
        self.head = SSDHead(list(backbone.out_channels), num_anchors, num_classes + 1)
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        images = ImageList(torch.zeros(1, 3, *self.image_size), [self.image_size])
        anchors = self.anchor_generator(images, probe)[0]  # [A, 4] xyxy in input pixels
        self.register_buffer("anchors", anchors, persistent=False)
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the model was built for {self.image_size}; "
                "resize in the dataset (size=...)"
            )

    def forward(self, images: Tensor) -> DenseOutput:
        """Dense outputs for images in ``[0, 1]``.

        Shape:
            images ``[B, 3, H, W]`` -> ``DenseOutput([B, A, C+1], [B, A, 4])``.
        """
        self._check_images(images)
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # ~10 % faster convs on CPU
        feats = self.backbone(x)
        out = self.head(feats)
        return DenseOutput(out["cls_logits"], out["bbox_regression"])

    def decode(self, box_deltas: Tensor) -> Tensor:
        """Decode ``[B, A, 4]`` offsets into xyxy boxes ``[B, A, 4]`` in input pixels."""
        b, a, _ = box_deltas.shape
        boxes = self.box_coder.decode_single(box_deltas.reshape(b * a, 4), self.anchors.repeat(b, 1))
        return boxes.reshape(b, a, 4)  # [B*A, 4] -> [B, A, 4]

    @torch.no_grad()
    def postprocess(self, output: DenseOutput, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        """Scores, decoded boxes, per-class NMS; at most ``detections_per_img`` per image."""
        thresh = self.score_thresh if score_thresh is None else score_thresh
        scores_all = torch.softmax(output.cls_logits, dim=-1)[..., 1:]  # [B, A, C]
        boxes_all = clip_boxes_to_image(self.decode(output.box_deltas), self.image_size)
        results = []
        c = self.num_classes
        for scores, boxes in zip(scores_all, boxes_all):
            flat = scores.reshape(-1)  # [A, C] -> [A*C], index = anchor*C + class
            keep = torch.nonzero(flat > thresh).squeeze(1)
            limit = self.topk_candidates * min(c, 10)
            if keep.numel() > limit:
                keep = keep[flat[keep].topk(limit).indices]
            sc = flat[keep]
            anchor_idx = torch.div(keep, c, rounding_mode="floor")
            labels = keep % c + 1
            bx = boxes[anchor_idx]
            kept = batched_nms(bx, sc, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": bx[kept], "scores": sc[kept], "labels": labels[kept]})
        return results

    @torch.no_grad()
    def detect(self, images: Tensor, score_thresh: float | None = None, batch_size: int = 64) -> list[dict[str, Tensor]]:
        """Detections for a batch (eval mode restored afterwards).

        Returns:
            One dict per image: ``boxes`` ``[K, 4]`` xyxy, ``scores`` ``[K]``, ``labels`` ``[K]`` in 1..C.
        """
        out: list[dict[str, Tensor]] = []
        with eval_mode(self):
            for i in range(0, images.shape[0], batch_size):
                out.extend(self.postprocess(self(images[i : i + batch_size]), score_thresh))
        return out


def build_ssd(
    backbone: str,
    num_classes: int,
    image_size: int | tuple[int, int],
    pretrained_backbone: bool = False,
    **kwargs,
) -> SSDDetector:
    """Build an SSD by backbone name.

    Args:
        backbone: ``tiny_vgg`` / ``tiny_resnet`` (small inputs) or ``vgg16`` / ``vgg16_bn`` /
            ``resnet50`` (300 px, the papers' backbones).
        num_classes: foreground classes.
        image_size: input size (int for square).
        pretrained_backbone: ImageNet weights via torchvision (needs internet once).

    Returns:
        An :class:`SSDDetector`.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(size) < 32:
        raise ValueError(f"image_size must be at least 32 px, got {size}")
    if pretrained_backbone and backbone.startswith("tiny"):
        warnings.warn(f"backbone {backbone!r} has no pretrained weights; training from scratch", stacklevel=2)
        pretrained_backbone = False
    net = build_backbone(backbone, pretrained=pretrained_backbone)
    return SSDDetector(net, num_classes, size, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["DenseOutput", "SSDDetector", "build_ssd", "count_parameters", "default_anchor_generator"]
