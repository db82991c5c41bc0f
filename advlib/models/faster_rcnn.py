"""torchvision's Faster R-CNN as a :class:`~advlib.models.detector.Detector`: the two-stage family.

:class:`FasterRCNNDetector` holds a ``torchvision.models.detection.FasterRCNN`` (``.net``) on one
of our small backbones (batch norms that train) with a torchvision ``FeaturePyramidNetwork`` on
its maps (:class:`~advlib.models.torchvision_family.FPNBody`).

A two-stage output is no single dense per-anchor tensor: the ROI head classifies the proposals the
RPN picked for this very input, so their number and boxes change with the image. The design:

* ``model(images) -> RCNNOutput``: the ROI head's softmax class logits ``cls_logits [B, P, C+1]``
  and per-class box deltas ``box_deltas [B, P, C+1, 4]`` (torchvision's ROI coder, weights 10, 10,
  5, 5, relative to the proposals), the proposals ``[B, P, 4]`` (detached, as torchvision does;
  padded with zeros to the batch's largest count, ``proposal_mask [B, P]``), and the RPN's
  ``objectness [B, A]`` logits and ``rpn_deltas [B, A, 4]`` on the fixed ``model.anchors``.
  Exactly torchvision's eval forward up to post-processing, differentiable wrt the images (through
  the features the ROI head pools and the RPN head), in any mode; in train mode the RPN keeps its
  training proposal counts (as torchvision).
* ``model.match(targets) -> RCNNMatched``: torchvision's RPN matcher and coder on the anchors, the
  padded ground truth, and the ROI matcher and coder, which :func:`advlib.losses_rcnn.rcnn_terms`
  uses to match the proposals at every call (what :func:`advlib.losses.multibox_terms` applies to
  an ``RCNNOutput``: RPN terms over torchvision's sample sizes with the hardest anchors instead of
  a random draw, ROI terms over every proposal; see :mod:`advlib.losses_rcnn`). ``ssd_loss`` per
  image is then torchvision's four losses added; the same terms train the model (``StandardRecipe``)
  and drive attacks in **eval mode** (an attack never switches the model to ``.train()``).
  ``StandardRecipe`` calls ``model(images)`` without targets, so its training cannot add the
  ground-truth boxes to the proposals as torchvision's training does; torchvision's own train-mode
  loss (``net(list(images), targets)``, through the same loop) trained better: VOC mAP@0.5 on 100
  test images 0.071 and 0.066 (seeds 0, 1) against 0.037 and 0.035 after 8 epochs of 600 generated
  128 px images (batch 16, augmented), at the same cost.
* ``model.detect(images)``: torchvision's own ``RoIHeads.postprocess_detections`` (softmax scores,
  score threshold, class-wise NMS), so detections are the net's.

Sizes for small images (128 px, objects ~10-90 px). RPN anchors: per map ``side × (0.09, 0.18,
0.36, 0.72)`` (geometric from 0.09 to 0.72 for other map counts) × scales 1, √2 × aspect ratios 0.5,
1, 2: 11.5 to 130 px at 128 px in √2 steps (torchvision: 32-512 px on 800 px images), 6 per
location, 2,040 anchors. Proposal counts (torchvision: 2,000 per level before NMS and 2,000 after
in training, 1,000 / 1,000 at test; its 320 px mobile model 150 / 150 at test): 300 per level before
NMS and 100 per image after, in training as at test, since the ROI terms count every proposal
(training sees what an attack sees). Our images hold at most 8 objects, and proposals are the CPU
cost of this family: torchvision's ``roi_align`` backward takes ~0.35 ms per proposal (64 channels,
one core); a training step at 128 px (batch 16, one thread) took 61-69 ms of CPU per image with
100 proposals, 93-104 ms with 200 (our SSD: 23-26 ms; two runs).
ROI pooling: torchvision's ``MultiScaleRoIAlign`` (7 × 7, sampling ratio 2, its FPN level rule:
a 224 px box on level 4, i.e. stride 16) over the maps that rule can reach at this input size (no
proposal exceeds the image): at 128 px only the stride-8 map, which skips the per-level scatter and
changes no pooled value (:func:`pooled_maps`); then a two-layer MLP head of ``representation_size``
(256; torchvision 1,024). Input size is fixed (``min_size = max_size`` = the image side; images
padded to torchvision's multiple of 32 as its transform does).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign, box_iou

from advlib.losses import FAMILY_TERMS, pad_targets
from advlib.losses_rcnn import RCNNMatched, rcnn_terms
from advlib.models.torchvision_family import TorchvisionDetector, build_on_backbone
from advlib.models.ssd import IMAGENET_MEAN, IMAGENET_STD

#: RPN anchor base sizes per map as fractions of the image side (4 maps); each map adds × √2
RPN_ANCHOR_FRACTIONS = (0.09, 0.18, 0.36, 0.72)


class RCNNOutput(NamedTuple):
    """Raw Faster R-CNN outputs of a batch (see the module docstring).

    Shape:
        cls_logits ``[B, P, C+1]`` softmax logits (0 = background; 0 on padding);
        box_deltas ``[B, P, C+1, 4]``; proposals ``[B, P, 4]`` xyxy; proposal_mask ``[B, P]`` bool;
        objectness ``[B, A]`` RPN logits; rpn_deltas ``[B, A, 4]`` relative to ``model.anchors``.
    """

    cls_logits: Tensor
    box_deltas: Tensor
    proposals: Tensor
    proposal_mask: Tensor
    objectness: Tensor
    rpn_deltas: Tensor

    #: which loss decomposition :func:`advlib.losses.multibox_terms` applies
    family = "rcnn"


FAMILY_TERMS.add("rcnn", rcnn_terms, replace=True)


def rpn_anchor_generator(num_maps: int, side: int) -> AnchorGenerator:
    """RPN anchors: per map a base size (:data:`RPN_ANCHOR_FRACTIONS` of the side, geometric from
    0.09 to 0.72 for other map counts), scales 1 and √2, aspect ratios 0.5, 1, 2."""
    if num_maps == 1:
        fractions = [RPN_ANCHOR_FRACTIONS[0]]
    else:
        fractions = [0.09 * 8 ** (i / (num_maps - 1)) for i in range(num_maps)]
    sizes = tuple((float(f * side), float(f * side * math.sqrt(2))) for f in fractions)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * num_maps)


def pooled_maps(map_sizes: list[int], side: int) -> list[str]:
    """Names of the maps torchvision's FPN level rule (``LevelMapper``: level
    ``floor(4 + log2(sqrt(area) / 224))``, clamped to the given maps) can assign a box of at most
    ``side`` px to, for maps of ``map_sizes`` cells along that side (finest first)."""
    levels = [round(math.log2(side / n)) for n in map_sizes]  # log2 of each map's stride
    top = max(levels[0], math.floor(4 + math.log2(side / 224) + 1e-6))
    return [str(i) for i, lvl in enumerate(levels) if lvl <= top]


class FasterRCNNDetector(TorchvisionDetector):
    """torchvision's Faster R-CNN behind our Detector interface (see the module docstring).

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to a list of maps, with ``out_channels``.
        num_classes: foreground classes ``C``.
        image_size: ``(H, W)`` of the model input.
        fpn_channels: channels of the FPN maps (and of the RPN head).
        representation_size: width of the ROI head's two fully connected layers.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: ``(training, testing)`` proposal counts per level
            before NMS and per image after.
        score_thresh, nms_thresh, detections_per_img: torchvision's ROI post-processing (0.05, 0.5
            as torchvision; at most 200 detections per image, as our SSD).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: tuple[int, int], fpn_channels: int = 64,
                 representation_size: int = 256, rpn_pre_nms_top_n: tuple[int, int] = (300, 300),
                 rpn_post_nms_top_n: tuple[int, int] = (100, 100), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 200) -> None:
        super().__init__()
        # torchvision's transform pads every batch to a multiple of 32: so does forward()
        body, probe = self._init_body(backbone, num_classes, image_size, fpn_channels, pad=True)
        gen = rpn_anchor_generator(len(probe), min(self.image_size))
        per_loc = gen.num_anchors_per_location()[0]
        names = pooled_maps([int(f.shape[-1]) for f in probe], max(self.padded_size))
        pool = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
        self.net = FasterRCNN(
            body, None, min_size=min(self.image_size), max_size=max(self.image_size), image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD), rpn_anchor_generator=gen, rpn_head=RPNHead(fpn_channels, per_loc),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n[0], rpn_pre_nms_top_n_test=rpn_pre_nms_top_n[1],
            rpn_post_nms_top_n_train=rpn_post_nms_top_n[0], rpn_post_nms_top_n_test=rpn_post_nms_top_n[1],
            box_roi_pool=pool, box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1), box_score_thresh=score_thresh,
            box_nms_thresh=nms_thresh, box_detections_per_img=detections_per_img)
        anchors = gen(ImageList(torch.zeros(1, 3, *self.padded_size), [self.image_size]), probe)[0]
        self.register_buffer("anchors", anchors, persistent=False)  # [A, 4] xyxy in input pixels
        self.level_sizes = [int(f.shape[-2] * f.shape[-1]) * per_loc for f in probe]

    # ------------------------------------------------------------ the Detector interface
    def _score_owner(self):
        return self.net.roi_heads

    @property
    def box_coder(self):
        """The RPN's ``BoxCoder`` (weights 1, 1, 1, 1; ``model.anchors``); the ROI head's is
        ``net.roi_heads.box_coder`` (10, 10, 5, 5; the proposals)."""
        return self.net.rpn.box_coder

    def forward(self, images: Tensor) -> RCNNOutput:
        """RPN and ROI-head outputs for images in ``[0, 1]`` (torchvision's eval forward up to
        post-processing).

        Shape:
            images ``[B, 3, H, W]`` -> ``RCNNOutput`` (see its docstring; ``P`` = the batch's largest
            proposal count).
        """
        self._check_images(images)
        b = images.shape[0]
        x = (images - self.mean) / self.std
        ph, pw = self.padded_size[0] - x.shape[-2], self.padded_size[1] - x.shape[-1]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))  # zeros after normalisation, as torchvision's batch_images
        feats = self.net.backbone(x)
        rpn, roi = self.net.rpn, self.net.roi_heads
        obj, deltas = concat_box_prediction_layers(*rpn.head(list(feats.values())))  # [B*A, 1], [B*A, 4]
        sizes = [self.image_size] * b
        proposals = rpn.box_coder.decode(deltas.detach(), [self.anchors] * b).view(b, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, obj, sizes, self.level_sizes)  # per image [P_i, 4]
        logits, regression = roi.box_predictor(roi.box_head(roi.box_roi_pool(feats, boxes, sizes)))
        counts = [int(p.shape[0]) for p in boxes]
        k = logits.shape[-1]
        mask = pad_sequence([torch.ones(n, dtype=torch.bool, device=x.device) for n in counts], batch_first=True)
        return RCNNOutput(pad_sequence(list(logits.split(counts)), batch_first=True),
                          pad_sequence(list(regression.reshape(-1, k, 4).split(counts)), batch_first=True),
                          pad_sequence(boxes, batch_first=True), mask.reshape(b, -1),
                          obj.reshape(b, -1), deltas.reshape(b, -1, 4))

    def training_loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """torchvision's own train-mode loss (random RPN and ROI sampling, ground truth added to
        the proposals): the sum of its four losses, for training only (``StandardRecipe`` uses it;
        attacks use the deterministic eval-mode terms). Measured: 600 images, 8 epochs, test mAP
        0.071 / 0.066 (seeds 0 / 1) against 0.037 / 0.035 with the eval-mode terms."""
        self._check_images(images)
        losses = self.net(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        return sum(losses.values())

    def match(self, targets: list[dict[str, Tensor]]) -> RCNNMatched:
        """torchvision's RPN matching of a batch (its ``Matcher``: positives at IoU >= 0.7, ignored
        in [0.3, 0.7) as label ``-1``, each object's best anchors positive; labels are the objects'
        classes) plus the padded ground truth and the ROI matcher for the proposals."""
        dev = self.anchors.device
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} needs 'boxes' and 'labels', got keys {sorted(t)}")
        boxes, labels = pad_targets(targets, dev)  # [B, M, 4], [B, M]
        b, a = len(targets), self.num_anchors
        rpn, roi = self.net.rpn, self.net.roi_heads
        out_labels = torch.zeros(b, a, dtype=torch.int64, device=dev)
        out_index = torch.full((b, a), -1, dtype=torch.int64, device=dev)
        box_targets = torch.zeros(b, a, 4, device=dev)
        num_objects = torch.tensor([int(t["boxes"].shape[0]) for t in targets], device=dev)
        for i in range(b):
            n = int(num_objects[i])
            if n == 0:
                continue
            gt = boxes[i, :n]
            idx = rpn.proposal_matcher(box_iou(gt, self.anchors))  # [A]: object, -1 below, -2 between
            fg = idx >= 0
            out_index[i, fg] = idx[fg]
            out_labels[i, fg] = labels[i, idx[fg]]
            out_labels[i, idx == rpn.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            box_targets[i, fg] = rpn.box_coder.encode_single(gt[idx[fg]], self.anchors[fg])
        return RCNNMatched(out_labels, out_index, box_targets, labels, num_objects, boxes, roi.proposal_matcher,
                           roi.box_coder, rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction)

    def decode(self, box_deltas: Tensor, proposals: Tensor | None = None) -> Tensor:
        """Boxes in input pixels: RPN deltas ``[B, A, 4]`` relative to ``model.anchors``, or with
        ``proposals [B, P, 4]`` ROI deltas ``[B, P, C+1, 4]`` (per class) or ``[B, P, 4]``."""
        if proposals is None:
            b, a, _ = box_deltas.shape
            return self.box_coder.decode_single(box_deltas.reshape(b * a, 4),
                                                self.anchors.repeat(b, 1)).reshape(b, a, 4)
        coder = self.net.roi_heads.box_coder
        ref = proposals.unsqueeze(-2).expand_as(box_deltas) if box_deltas.dim() == 4 else proposals
        return coder.decode_single(box_deltas.reshape(-1, 4), ref.reshape(-1, 4)).reshape(box_deltas.shape)

    @torch.no_grad()
    def postprocess(self, output: RCNNOutput, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        """torchvision's ``RoIHeads.postprocess_detections`` on the ROI outputs (labels in 1..C)."""
        roi, mask = self.net.roi_heads, output.proposal_mask
        k = output.cls_logits.shape[-1]
        proposals = [p[m] for p, m in zip(output.proposals, mask)]
        with self.score_threshold(score_thresh):
            boxes, scores, labels = roi.postprocess_detections(
                output.cls_logits[mask], output.box_deltas[mask].reshape(-1, k * 4), proposals,
                [self.image_size] * mask.shape[0])
        return [{"boxes": bx, "scores": s, "labels": lb} for bx, s, lb in zip(boxes, scores, labels)]


def build_faster_rcnn(backbone: str, num_classes: int, image_size: int | tuple[int, int],
                      pretrained_backbone: bool = False, **kwargs) -> FasterRCNNDetector:
    """A :class:`FasterRCNNDetector` on one of our backbones by name (``tiny_vgg``, ``tiny_resnet``,
    ...), for inputs of ``image_size``."""
    return build_on_backbone(FasterRCNNDetector, backbone, num_classes, image_size, pretrained_backbone, **kwargs)


__all__ = ["FasterRCNNDetector", "RCNNOutput", "RPN_ANCHOR_FRACTIONS", "build_faster_rcnn", "pooled_maps",
           "rpn_anchor_generator"]
