"""torchvision's RetinaNet as a :class:`~advlib.models.detector.Detector`: the second detector family.

:class:`RetinaNetDetector` holds a ``torchvision.models.detection.RetinaNet`` (``.net``) built on
one of our small backbones (:mod:`advlib.models.backbones`, whose batch norms train, unlike
torchvision's ``FrozenBatchNorm2d`` backbones) with a torchvision ``FeaturePyramidNetwork`` on its
maps, and exposes what attacks, recipes and evaluation need:

* ``model(images) -> FocalOutput(cls_logits [B, A, C+1], box_deltas [B, A, 4])``: the head's raw
  outputs, on images in ``[0, 1]`` (normalised inside), differentiable, in any mode. The net is
  built with ``num_classes = C + 1`` so that our labels ``1..C`` index its logits directly (the
  torchvision idiom, COCO's 91 includes a background index); column 0 is never a positive and is
  trained towards 0 like every negative.
* ``model.match(targets) -> Matched``: torchvision's own ``Matcher`` (IoU >= 0.5 positive,
  < 0.4 background, in between ignored: label ``-1``; low-quality matches allowed) and its box
  coder (weights 1, 1, 1, 1), once per batch (:func:`advlib.losses.match_targets` calls it).
* :func:`advlib.losses.multibox_terms` on a ``FocalOutput`` gives per-anchor sigmoid focal loss
  (summed over classes, α = 0.25, γ = 2) and L1 box loss, with every non-ignored negative counted
  (no hard-negative mining), so ``ssd_loss(terms)`` per image is exactly torchvision's per-image
  ``classification + bbox_regression`` loss, computed in **eval mode** from the head outputs (an
  attack never switches the model to ``.train()``).
* ``model.detect(images)``: torchvision's own ``postprocess_detections`` (per-level top-k, score
  threshold, class-wise NMS), so detections are the net's.

Input size is fixed at construction (``min_size = max_size`` = the image side: torchvision's
default ``min_size=800`` would resize our images); anchors are computed once for it.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from advlib.losses import Matched, pad_targets
from advlib.models.torchvision_family import TorchvisionDetector, build_on_backbone
from advlib.models.ssd import IMAGENET_MEAN, IMAGENET_STD


class FocalOutput(NamedTuple):
    """Raw RetinaNet head outputs (per-class **sigmoid** logits, not softmax).

    Shape:
        cls_logits ``[B, A, C+1]`` (column 0 unused: never positive); box_deltas ``[B, A, 4]``
        (encoded with weights 1, 1, 1, 1 relative to ``model.anchors``).
    """

    cls_logits: Tensor
    box_deltas: Tensor

    #: which per-anchor loss decomposition :func:`advlib.losses.multibox_terms` applies
    family = "focal"


#: anchor base sizes per map as fractions of the image side (the SSD's scales of the 4-map layout,
#: advlib.models.ssd.default_anchor_generator); each map has 3 octave scales x 3 aspect ratios
ANCHOR_FRACTIONS = (0.14, 0.25, 0.42, 0.65)


def anchor_generator(num_maps: int, side: int) -> AnchorGenerator:
    """RetinaNet anchors: per map a base size (:data:`ANCHOR_FRACTIONS` of the side for 4 maps,
    else doubling from side/8), octave scales 2^0, 2^(1/3), 2^(2/3), aspect ratios 0.5, 1, 2
    (the RetinaNet paper's 9 anchors per location)."""
    if num_maps == len(ANCHOR_FRACTIONS):
        bases = [f * side for f in ANCHOR_FRACTIONS]
    else:
        bases = [side / 8 * 2 ** i for i in range(num_maps)]
    sizes = tuple(tuple(float(b * 2 ** (k / 3)) for k in range(3)) for b in bases)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * num_maps)


class RetinaNetDetector(TorchvisionDetector):
    """torchvision's RetinaNet behind our Detector interface (see the module docstring).

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to a list of maps, with ``out_channels``.
        num_classes: foreground classes ``C``.
        image_size: ``(H, W)`` of the model input.
        fpn_channels: channels of the FPN maps and of the heads' convolutions.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: torchvision's
            post-processing (score threshold 0.05 and top-1,000 per level as torchvision; at most
            200 detections per image, as our SSD).
        head_convs: 3×3 convolutions in each head before its output layer (torchvision: 4).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: tuple[int, int], fpn_channels: int = 64,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 200,
                 topk_candidates: int = 1000, head_convs: int = 4) -> None:
        super().__init__()
        body, probe = self._init_body(backbone, num_classes, image_size, fpn_channels, pad=False)
        gen = anchor_generator(len(probe), min(self.image_size))
        side = max(self.image_size)
        # GroupNorm in the heads (torchvision's RetinaNet v2 head): with our narrow FPN the v1 head's
        # N(0, 0.01) convolutions without normalisation shrink the signal ~4x per layer and the
        # detector barely trains (measured: 4 epochs, loss 1.56 -> 1.18, mAP 0.014)
        head = RetinaNetHead(fpn_channels, gen.num_anchors_per_location()[0], num_classes + 1,
                             norm_layer=partial(nn.GroupNorm, min(16, fpn_channels)))
        if not 1 <= head_convs <= 4:
            raise ValueError(f"head_convs must be 1..4 (torchvision's heads have 4), got {head_convs}")
        head.classification_head.conv = head.classification_head.conv[:head_convs]
        head.regression_head.conv = head.regression_head.conv[:head_convs]
        self.net = RetinaNet(body, num_classes + 1, min_size=min(self.image_size), max_size=side, head=head,
                             image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), anchor_generator=gen,
                             score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                             topk_candidates=topk_candidates)
        anchors = gen(ImageList(torch.zeros(1, 3, *self.image_size), [self.image_size]), probe)[0]
        self.register_buffer("anchors", anchors, persistent=False)  # [A, 4] xyxy in input pixels
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) * gen.num_anchors_per_location()[0] for f in probe]

    # ------------------------------------------------------------ the Detector interface
    @property
    def box_coder(self):
        return self.net.box_coder

    def forward(self, images: Tensor) -> FocalOutput:
        """Raw head outputs for images in ``[0, 1]``.

        Shape:
            images ``[B, 3, H, W]`` -> ``FocalOutput([B, A, C+1], [B, A, 4])``.
        """
        self._check_images(images)
        feats = list(self.net.backbone((images - self.mean) / self.std).values())
        out = self.net.head(feats)
        return FocalOutput(out["cls_logits"], out["bbox_regression"])

    def match(self, targets: list[dict[str, Tensor]]) -> Matched:
        """torchvision's matching of a batch (its ``Matcher``: positives at IoU >= 0.5, ignored in
        [0.4, 0.5) as label ``-1``, low-quality matches allowed) as a :class:`Matched`."""
        boxes, labels = pad_targets(targets, self.anchors.device)  # [B, M, 4], [B, M]
        b, a = len(targets), self.num_anchors
        out_labels = torch.zeros(b, a, dtype=torch.int64, device=self.anchors.device)
        out_index = torch.full((b, a), -1, dtype=torch.int64, device=self.anchors.device)
        box_targets = torch.zeros(b, a, 4, device=self.anchors.device)
        num_objects = torch.tensor([int(t["boxes"].shape[0]) for t in targets], device=self.anchors.device)
        for i, t in enumerate(targets):
            n = int(num_objects[i])
            if n == 0:
                continue
            gt = boxes[i, :n]
            idx = self.net.proposal_matcher(box_iou(gt, self.anchors))  # [A]: object, -1 below, -2 between
            fg = idx >= 0
            out_index[i, fg] = idx[fg]
            out_labels[i, fg] = labels[i, idx[fg]]
            out_labels[i, idx == self.net.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            box_targets[i, fg] = self.box_coder.encode_single(gt[idx[fg]], self.anchors[fg])
        return Matched(out_labels, out_index, box_targets, labels, num_objects)

    def decode(self, box_deltas: Tensor) -> Tensor:
        """``[B, A, 4]`` offsets -> xyxy boxes ``[B, A, 4]`` in input pixels."""
        b, a, _ = box_deltas.shape
        return self.box_coder.decode_single(box_deltas.reshape(b * a, 4), self.anchors.repeat(b, 1)).reshape(b, a, 4)

    @torch.no_grad()
    def postprocess(self, output: FocalOutput, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` on the head outputs (labels in 1..C)."""
        logits = output.cls_logits.clone()
        logits[..., 0] = float("-inf")  # column 0 is no class of ours
        heads = {"cls_logits": list(logits.split(self.level_sizes, dim=1)),
                 "bbox_regression": list(output.box_deltas.split(self.level_sizes, dim=1))}
        return self._dense_postprocess(heads, logits.shape[0], score_thresh)


def build_retinanet(backbone: str, num_classes: int, image_size: int | tuple[int, int],
                    pretrained_backbone: bool = False, **kwargs) -> RetinaNetDetector:
    """A :class:`RetinaNetDetector` on one of our backbones by name (``tiny_vgg``, ``tiny_resnet``,
    ...), for inputs of ``image_size``."""
    return build_on_backbone(RetinaNetDetector, backbone, num_classes, image_size, pretrained_backbone, **kwargs)


__all__ = ["ANCHOR_FRACTIONS", "FocalOutput", "RetinaNetDetector", "anchor_generator", "build_retinanet"]
