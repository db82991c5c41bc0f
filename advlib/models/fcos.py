"""torchvision's FCOS as a :class:`~advlib.models.detector.Detector`: an anchor-free one-stage family.

:class:`FCOSDetector` holds a ``torchvision.models.detection.FCOS`` (``.net``) on one of our small
backbones (batch norms that train) with a torchvision ``FeaturePyramidNetwork`` on its maps
(:class:`~advlib.models.torchvision_family.FPNBody`), and exposes what attacks, recipes and evaluation
need:

* ``model(images) -> FCOSOutput(cls_logits [B, A, C+1], box_deltas [B, A, 4], centerness [B, A, 1])``:
  the head's raw outputs (one location per map cell, ``A`` = cells of every level), on images in
  ``[0, 1]`` (normalised inside), differentiable, in any mode. Class logits are per-class
  **sigmoid** logits; the net has ``C + 1`` outputs so that our labels ``1..C`` index them directly
  (column 0 is never a positive and is trained towards 0 like every negative). ``box_deltas`` are
  FCOS's distances (left, top, right, bottom) from the location to the box edges divided by the
  location's anchor size (torchvision's ``BoxLinearCoder``; >= 0 after the head's ReLU).
* ``model.match(targets) -> Matched``: torchvision's own FCOS assignment (``FCOS.compute_loss``'s
  matching: centre sampling within ``center_sampling_radius`` anchor sizes of the object's centre,
  the location inside the box, per-level ranges of ``max(l, t, r, b)`` in (4, 8) anchor sizes, the
  smallest object on ties), once per batch. Every location is either positive or background (none
  is ignored).
* :func:`fcos_terms` (what :func:`advlib.losses.multibox_terms` applies to an ``FCOSOutput``):
  per location the sigmoid focal loss summed over classes (every location counts), and on
  positives the GIoU loss plus the centre-ness BCE, so that ``ssd_loss(terms)`` per image is
  torchvision's ``classification + bbox_regression + bbox_ctrness`` normalised by the image's own
  positives. torchvision normalises by the positives of the whole batch: the two agree for one
  image, and in general ``sum_i N_i * ours_i / sum_i N_i`` is torchvision's (the batch mean of ours
  when every image has the same number of positives). Computed in **eval mode** from the head
  outputs: an attack never switches the model to ``.train()``.
* ``model.detect(images)``: torchvision's own ``postprocess_detections`` (score
  ``sqrt(sigmoid(class) * sigmoid(centre-ness))``, per-level top-k, class-wise NMS).

Sizes for small images. torchvision's FCOS sets each level's anchor size to its stride (8..128 on
800 px COCO images), which fixes the regression ranges ``max(l, t, r, b)`` in (4, 8) sizes. At
128 px (strides 8, 16, 32, 64) that would send every object below ~100 px to the first map. Here
the anchor size is **half the stride** (:data:`ANCHOR_SIZE_PER_STRIDE`: 4, 8, 16, 32 px at 128 px),
so the ranges are (0, 32), (32, 64), (64, 128), (128, inf) px: our 10-90 px objects spread over the
first three maps. The centre-sampling radius is 3 anchor sizes (torchvision: 1.5), i.e. 1.5 strides
as torchvision's, so an object still gets up to 3 x 3 positive locations (with 1.5 sizes a 30 x 40
px box got 1). Input size is fixed (``min_size = max_size`` = the image side; images are padded to
torchvision's multiple of 32 as its transform does).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from advlib.losses import FAMILY_TERMS, Matched, Terms, pad_targets
from advlib.models.torchvision_family import TorchvisionDetector, build_on_backbone
from advlib.models.ssd import IMAGENET_MEAN, IMAGENET_STD

#: anchor size of a level as a fraction of its stride (torchvision: 1 on 800 px images; see the
#: module docstring for why half at 128 px)
ANCHOR_SIZE_PER_STRIDE = 0.5


class FCOSOutput(NamedTuple):
    """Raw FCOS head outputs.

    Shape:
        cls_logits ``[B, A, C+1]`` sigmoid logits (column 0 unused); box_deltas ``[B, A, 4]``
        (l, t, r, b) / anchor size relative to ``model.anchors``; centerness ``[B, A, 1]`` logits.
    """

    cls_logits: Tensor
    box_deltas: Tensor
    centerness: Tensor

    #: which per-location loss decomposition :func:`advlib.losses.multibox_terms` applies
    family = "fcos"


def _ltrb_boxes(codes: Tensor) -> Tensor:
    """``(l, t, r, b)`` distances -> boxes ``(-l, -t, r, b)`` around the origin (same shape).

    GIoU is invariant under translation and per-axis scaling, so the GIoU of two such boxes equals
    that of the decoded boxes in pixels (the location's centre and anchor size cancel).
    """
    return torch.cat([-codes[..., :2], codes[..., 2:]], dim=-1)


def fcos_terms(output: FCOSOutput, matched: Matched, alpha: float = 0.25, gamma: float = 2.0) -> Terms:
    """Per-location FCOS loss terms, as torchvision's ``FCOSHead.compute_loss``.

    ``cls``: sigmoid focal loss summed over the ``C+1`` logits against the one-hot target (all zero
    for background), at every location (all marked ``hard_negative`` when not positive);
    ``loc``: on positives, the GIoU loss of the predicted box plus the BCE of the centre-ness
    logit against ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of the target.

    Shape:
        output ``[B, A, ...]``, matched ``[B, A]`` -> :class:`~advlib.losses.Terms` ``[B, A]``.
    """
    logits, deltas = output.cls_logits, output.box_deltas
    b, a, k = logits.shape
    if matched.labels.shape != (b, a):
        raise ValueError(f"matched labels {tuple(matched.labels.shape)} do not fit outputs {(b, a)}")
    pos = matched.labels > 0
    target = F.one_hot(matched.labels.clamp(min=0), k).to(logits.dtype)
    target[..., 0] = 0.0  # background locations have an all-zero target
    cls = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none").sum(-1)
    # off positives the targets are 0 (0/0 in the centre-ness target): use 1s there, then mask, so
    # that no NaN reaches the backward pass
    codes = torch.where(pos[..., None], matched.box_targets, torch.ones_like(matched.box_targets))
    giou = generalized_box_iou_loss(_ltrb_boxes(deltas), _ltrb_boxes(codes), reduction="none")  # [B, A]
    lr, tb = codes[..., [0, 2]], codes[..., [1, 3]]  # [B, A, 2] each
    ctr_target = torch.sqrt(lr.min(-1).values / lr.max(-1).values * (tb.min(-1).values / tb.max(-1).values))
    ctr = F.binary_cross_entropy_with_logits(output.centerness.squeeze(-1), ctr_target, reduction="none")
    loc = torch.where(pos, giou + ctr, torch.zeros_like(giou))
    return Terms(cls, loc, pos, ~pos, matched.object_index, matched.labels, matched.object_labels,
                 pos.sum(1).to(cls.dtype))


FAMILY_TERMS.add("fcos", fcos_terms, replace=True)


class FCOSDetector(TorchvisionDetector):
    """torchvision's FCOS behind our Detector interface (see the module docstring).

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to a list of maps, with ``out_channels``.
        num_classes: foreground classes ``C``.
        image_size: ``(H, W)`` of the model input.
        fpn_channels: channels of the FPN maps and of the heads' convolutions (a multiple of 32:
            torchvision's heads use ``GroupNorm(32)``).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: torchvision's
            post-processing (NMS 0.6 and top-1,000 per level as torchvision; score threshold 0.05
            as our RetinaNet for mAP, torchvision 0.2; at most 200 detections as our SSD).
        head_convs: 3×3 convolutions in each head before its output layers (torchvision: 4).
        center_sampling_radius: in anchor sizes (3 = torchvision's 1.5 strides; see the module
            docstring).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: tuple[int, int], fpn_channels: int = 64,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 200,
                 topk_candidates: int = 1000, head_convs: int = 4, center_sampling_radius: float = 3.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 1 <= head_convs <= 4:
            raise ValueError(f"head_convs must be 1..4 (torchvision's heads have 4), got {head_convs}")
        if fpn_channels % 32:
            raise ValueError(f"fpn_channels must be a multiple of 32 (GroupNorm(32) heads), got {fpn_channels}")
        # torchvision's transform pads every batch to a multiple of 32: so does forward()
        body, probe = self._init_body(backbone, num_classes, image_size, fpn_channels, pad=True)
        strides = [self.padded_size[0] // f.shape[-2] for f in probe]
        gen = AnchorGenerator(tuple((float(s * ANCHOR_SIZE_PER_STRIDE),) for s in strides), ((1.0,),) * len(probe))
        head = FCOSHead(fpn_channels, 1, num_classes + 1, num_convs=head_convs)
        self.net = FCOS(body, num_classes + 1, min_size=min(self.image_size), max_size=max(self.image_size),
                        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), anchor_generator=gen, head=head,
                        center_sampling_radius=center_sampling_radius, score_thresh=score_thresh,
                        nms_thresh=nms_thresh, detections_per_img=detections_per_img, topk_candidates=topk_candidates)
        anchors = gen(ImageList(torch.zeros(1, 3, *self.padded_size), [self.image_size]), probe)[0]
        self.register_buffer("anchors", anchors, persistent=False)  # [A, 4] xyxy in input pixels
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) for f in probe]

    # ------------------------------------------------------------ the Detector interface
    @property
    def box_coder(self):
        """torchvision's ``BoxLinearCoder`` (``encode(anchors, boxes)``, ``decode(codes, anchors)``)."""
        return self.net.box_coder

    def forward(self, images: Tensor) -> FCOSOutput:
        """Raw head outputs for images in ``[0, 1]``.

        Shape:
            images ``[B, 3, H, W]`` -> ``FCOSOutput([B, A, C+1], [B, A, 4], [B, A, 1])``.
        """
        self._check_images(images)
        x = (images - self.mean) / self.std
        ph, pw = self.padded_size[0] - x.shape[-2], self.padded_size[1] - x.shape[-1]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # zeros after normalisation, as torchvision's batch_images
        out = self.net.head(list(self.net.backbone(x).values()))
        return FCOSOutput(out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"])

    def match(self, targets: list[dict[str, Tensor]]) -> Matched:
        """torchvision's FCOS assignment of a batch (see the module docstring) as a :class:`Matched`.

        ``box_targets`` are the matched boxes encoded by the net's ``BoxLinearCoder`` (0 on
        background); labels 0 on background (FCOS ignores no location).
        """
        dev = self.anchors.device
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} needs 'boxes' and 'labels', got keys {sorted(t)}")
        boxes, labels = pad_targets(targets, dev)  # [B, M, 4], [B, M]
        tv_targets = [{"boxes": t["boxes"].to(dev, torch.float32).reshape(-1, 4)} for t in targets]
        # FCOS.compute_loss matches, then hands the result to head.compute_loss: run torchvision's
        # own matching code with a head that returns the matching instead of the loss
        capture = SimpleNamespace(compute_loss=lambda targets, head_outputs, anchors, matched_idxs: matched_idxs)
        proxy = SimpleNamespace(center_sampling_radius=self.net.center_sampling_radius, head=capture)
        idx = torch.stack(FCOS.compute_loss(proxy, tv_targets, {}, [self.anchors] * len(targets), self.level_sizes))
        fg = idx >= 0  # [B, A]
        object_index = torch.where(fg, idx, torch.full_like(idx, -1))
        out_labels = torch.where(fg, labels.gather(1, idx.clamp(min=0)), torch.zeros_like(idx))
        matched_boxes = boxes.gather(1, idx.clamp(min=0)[..., None].expand(*idx.shape, 4))  # [B, A, 4]
        encoded = self.box_coder.encode(self.anchors.expand_as(matched_boxes), matched_boxes)
        box_targets = torch.where(fg[..., None], encoded, torch.zeros_like(encoded))
        num_objects = torch.tensor([int(t["boxes"].shape[0]) for t in targets], device=dev)
        return Matched(out_labels, object_index, box_targets, labels, num_objects)

    def decode(self, box_deltas: Tensor) -> Tensor:
        """``[B, A, 4]`` (l, t, r, b) codes -> xyxy boxes ``[B, A, 4]`` in input pixels."""
        return self.box_coder.decode(box_deltas, self.anchors.expand_as(box_deltas))

    def _split(self, t: Tensor) -> list[Tensor]:
        return list(t.split(self.level_sizes, dim=1))

    @torch.no_grad()
    def postprocess(self, output: FCOSOutput, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` on the head outputs (labels in 1..C)."""
        logits = output.cls_logits.clone()
        logits[..., 0] = float("-inf")  # column 0 is no class of ours
        heads = {"cls_logits": self._split(logits), "bbox_regression": self._split(output.box_deltas),
                 "bbox_ctrness": self._split(output.centerness)}
        return self._dense_postprocess(heads, logits.shape[0], score_thresh)


def build_fcos(backbone: str, num_classes: int, image_size: int | tuple[int, int],
               pretrained_backbone: bool = False, **kwargs) -> FCOSDetector:
    """An :class:`FCOSDetector` on one of our backbones by name (``tiny_vgg``, ``tiny_resnet``,
    ...), for inputs of ``image_size``."""
    return build_on_backbone(FCOSDetector, backbone, num_classes, image_size, pretrained_backbone, **kwargs)


__all__ = ["ANCHOR_SIZE_PER_STRIDE", "FCOSDetector", "FCOSOutput", "build_fcos", "fcos_terms"]
