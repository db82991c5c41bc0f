"""One decomposition of the SSD loss, many reducers.

``match_anchors`` assigns ground truth to anchors once per batch (IoU >= 0.5 plus the best anchor
of every object; SSD, Liu et al. 2016, Sec. 2.2). Targets do not move under attack, so attacks
match once and reuse the result for every step.

``multibox_terms`` turns a :class:`~advlib.models.ssd.DenseOutput` and a :class:`Matched` into
per-anchor terms: classification cross-entropy, localisation smooth-L1, the positive mask, the
3:1 hard-negative mask, and for every positive anchor the object index and class it belongs to.

Reducers turn terms into a per-image loss ``[B]``. The SSD loss (MTD eq. 1) is
``(sum_{pos+hardneg} l_cls + sum_pos l_loc) / N_pos`` per image; the task losses of MTD are its
two halves. Object-wise / class-wise reducers for CWAT live with the attacks, built on these terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advlib.registry import Registry


@dataclass
class Matched:
    """Anchor assignment for a batch (computed once, reused by every attack step).

    Shape:
        labels ``[B, A]`` int64 (0 background); object_index ``[B, A]`` int64 (-1 background);
        box_targets ``[B, A, 4]`` encoded regression targets (0 where background);
        object_labels ``[B, M]`` int64 class of each object (0 = padding); num_objects ``[B]``.
    """

    labels: Tensor
    object_index: Tensor
    box_targets: Tensor
    object_labels: Tensor
    num_objects: Tensor

    @property
    def positive(self) -> Tensor:
        return self.labels > 0

    def __getitem__(self, idx) -> "Matched":
        """Select images (index, slice or bool/long tensor) from the batch."""
        return Matched(*(t[idx] for t in (self.labels, self.object_index, self.box_targets,
                                          self.object_labels, self.num_objects)))

    def repeat(self, k: int) -> "Matched":
        """The batch's matching for ``k`` stacked copies of its images (``[k*B, ...]``)."""
        return Matched(*(torch.cat([t] * k) for t in (self.labels, self.object_index, self.box_targets,
                                                       self.object_labels, self.num_objects)))


@dataclass
class Terms:
    """Per-anchor loss terms of a batch.

    Shape:
        cls ``[B, A]`` cross-entropy of every anchor against its matched label (background for
        negatives); loc ``[B, A]`` smooth-L1 summed over the 4 offsets (0 off positives);
        positive, hard_negative ``[B, A]`` bool; object_index, labels ``[B, A]`` int64;
        object_labels ``[B, M]``; num_positive ``[B]`` float.
    """

    cls: Tensor
    loc: Tensor
    positive: Tensor
    hard_negative: Tensor
    object_index: Tensor
    labels: Tensor
    object_labels: Tensor
    num_positive: Tensor


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``[B, M, 4]`` against ``[A, 4]`` or ``[B, A, 4]`` boxes (xyxy) -> ``[B, M, A]``."""
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [B, M, A, 2]
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # [B, M, A, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clamp(min=1e-9)


def pad_targets(targets: list[dict[str, Tensor]], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Stack variable-length targets into ``boxes [B, M, 4]`` and ``labels [B, M]`` (0 = padding)."""
    b = len(targets)
    m = max([int(t["boxes"].shape[0]) for t in targets] + [1])
    dev = device if device is not None else (targets[0]["boxes"].device if b else None)
    boxes = torch.zeros(b, m, 4, device=dev)
    labels = torch.zeros(b, m, dtype=torch.int64, device=dev)
    for i, t in enumerate(targets):
        n = int(t["boxes"].shape[0])
        if n:
            boxes[i, :n] = t["boxes"].to(dev, torch.float32)
            labels[i, :n] = t["labels"].to(dev, torch.int64)
    return boxes, labels


def match_anchors(
    anchors: Tensor, targets: list[dict[str, Tensor]], box_coder, iou_threshold: float = 0.5
) -> Matched:
    """Assign every anchor to an object or to background, for a whole batch at once.

    An anchor is positive for the object it overlaps most when that IoU is >= ``iou_threshold``;
    every object also claims its best anchor (so no object goes unmatched).

    Args:
        anchors: ``[A, 4]`` xyxy (``model.anchors``).
        targets: list of dicts with ``boxes [N, 4]`` and ``labels [N]`` (1..C).
        box_coder: the model's BoxCoder (``model.box_coder``) for the regression targets.
        iou_threshold: positive IoU threshold (0.5 in SSD and all five papers).

    Returns:
        A :class:`Matched`.
    """
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"target {i} needs 'boxes' and 'labels', got keys {sorted(t)}")
    gt_boxes, gt_labels = pad_targets(targets, anchors.device)  # [B, M, 4], [B, M]
    b, m = gt_labels.shape
    a = anchors.shape[0]
    valid = gt_labels > 0  # [B, M]
    iou = batched_box_iou(gt_boxes, anchors)  # [B, M, A]
    iou = torch.where(valid[..., None], iou, torch.full_like(iou, -1.0))
    best_iou, best_obj = iou.max(dim=1)  # per anchor: [B, A]
    best_anchor = iou.argmax(dim=2)  # per object: [B, M]
    bi, oi = torch.nonzero(valid, as_tuple=True)
    best_obj[bi, best_anchor[bi, oi]] = oi
    best_iou[bi, best_anchor[bi, oi]] = 2.0
    pos = best_iou >= iou_threshold  # [B, A]
    object_index = torch.where(pos, best_obj, torch.full_like(best_obj, -1))
    labels = torch.where(pos, torch.gather(gt_labels, 1, best_obj), torch.zeros_like(best_obj))
    matched_boxes = torch.gather(gt_boxes, 1, best_obj[..., None].expand(b, a, 4))  # [B, A, 4]
    encoded = box_coder.encode_single(matched_boxes.reshape(-1, 4), anchors.repeat(b, 1))
    encoded = encoded.reshape(b, a, 4)  # [B*A, 4] -> [B, A, 4]
    # background anchors may point at padding boxes (log 0 = -inf): zero them, never multiply
    box_targets = torch.where(pos[..., None], encoded, torch.zeros_like(encoded))
    return Matched(labels, object_index, box_targets, gt_labels, valid.sum(1))


def match_targets(model, targets: list[dict[str, Tensor]]) -> Matched:
    """A batch's anchor matching by the model family's own rule: ``model.match(targets)`` when the
    model defines one (RetinaNet: torchvision's ``Matcher``), else the SSD's :func:`match_anchors`."""
    match = getattr(model, "match", None)
    return match(targets) if callable(match) else match_anchors(model.anchors, targets, model.box_coder)


#: output family (an output's ``family`` attribute) -> ``terms(output, matched) -> Terms`` for every
#: family but the SSD's softmax one; a model module registers its family beside its output type
FAMILY_TERMS: Registry[Callable[..., Terms]] = Registry(
    "output family", hint="the model module that defines the output registers its terms")


def multibox_terms(output, matched: Matched, neg_pos_ratio: float = 3.0) -> Terms:
    """Per-anchor loss terms of a dense detector's outputs: the SSD's (softmax cross-entropy,
    smooth L1, 3:1 hard negatives), or those of the output's family (:data:`FAMILY_TERMS`; e.g.
    RetinaNet's :func:`focal_terms` when ``family == "focal"``).

    Args:
        output: ``DenseOutput`` with ``cls_logits [B, A, C+1]`` and ``box_deltas [B, A, 4]``.
        matched: the batch's :class:`Matched`.
        neg_pos_ratio: hard negatives per positive (3 in SSD).

    Returns:
        :class:`Terms`. Hard negatives are the non-positive anchors with the largest
        classification loss, ``neg_pos_ratio * N_pos`` of them per image (chosen without gradient).
    """
    family = getattr(output, "family", "softmax")
    if family != "softmax":
        return FAMILY_TERMS[family](output, matched)
    logits, deltas = output.cls_logits, output.box_deltas
    b, a, k = logits.shape
    if matched.labels.shape != (b, a):
        raise ValueError(f"matched labels {tuple(matched.labels.shape)} do not fit outputs {(b, a)}")
    cls = F.cross_entropy(logits.reshape(b * a, k), matched.labels.reshape(-1), reduction="none").reshape(b, a)
    pos = matched.positive
    loc = F.smooth_l1_loss(deltas, matched.box_targets, reduction="none", beta=1.0).sum(-1) * pos
    num_pos = pos.sum(1)
    with torch.no_grad():
        neg_loss = cls.detach().masked_fill(pos, float("-inf"))
        order = neg_loss.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)  # rank of each anchor by negative loss
        hard_neg = rank < (neg_pos_ratio * num_pos).long()[:, None]
        hard_neg &= ~pos
    return Terms(cls, loc, pos, hard_neg, matched.object_index, matched.labels,
                 matched.object_labels, num_pos.to(cls.dtype))


def focal_terms(output, matched: Matched, alpha: float = 0.25, gamma: float = 2.0) -> Terms:
    """Per-anchor RetinaNet loss terms, as torchvision's ``RetinaNetHead.compute_loss``.

    ``cls``: sigmoid focal loss summed over the ``C+1`` logits against the one-hot target (all
    zeros for background), 0 on ignored anchors (label ``-1``); ``loc``: L1 of the box offsets
    summed over the 4 coordinates on positives. Every non-ignored negative counts (torchvision sums
    the focal loss over all valid anchors), so it is marked ``hard_negative``: :func:`ssd_loss`
    then equals torchvision's per-image ``classification + bbox_regression``.
    """
    from torchvision.ops import sigmoid_focal_loss

    logits, deltas = output.cls_logits, output.box_deltas
    b, a, k = logits.shape
    if matched.labels.shape != (b, a):
        raise ValueError(f"matched labels {tuple(matched.labels.shape)} do not fit outputs {(b, a)}")
    valid = matched.labels >= 0
    pos = matched.labels > 0
    target = F.one_hot(matched.labels.clamp(min=0), k).to(logits.dtype)
    target[..., 0] = 0.0  # background anchors have an all-zero target
    cls = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="none").sum(-1) * valid
    loc = F.l1_loss(deltas, matched.box_targets, reduction="none").sum(-1) * pos
    return Terms(cls, loc, pos, valid & ~pos, matched.object_index, matched.labels.clamp(min=0),
                 matched.object_labels, pos.sum(1).to(cls.dtype))


FAMILY_TERMS.add("focal", focal_terms)


#: output families whose classes are independent sigmoids (RetinaNet's focal head, FCOS)
SIGMOID_FAMILIES = ("focal", "fcos")


def sigmoid_family(output) -> bool:
    """Whether a dense output scores each class with its own sigmoid (:data:`SIGMOID_FAMILIES`)
    rather than a softmax over ``C+1`` logits."""
    return getattr(output, "family", "softmax") in SIGMOID_FAMILIES


def class_scores(output) -> Tensor:
    """Foreground class probabilities ``[B, A, C]`` of a dense output, as its family's
    post-processing scores them: softmax over the ``C+1`` logits (SSD, Faster R-CNN's ROI head),
    each class's own sigmoid (RetinaNet), or FCOS's ``sqrt(sigmoid(class) · sigmoid(centre-ness))``."""
    logits = output.cls_logits
    if sigmoid_family(output):
        p = torch.sigmoid(logits[..., 1:])
        centerness = getattr(output, "centerness", None)
        return p if centerness is None else torch.sqrt(p * torch.sigmoid(centerness))
    return torch.softmax(logits, dim=-1)[..., 1:]


def _normaliser(terms: Terms) -> Tensor:
    return terms.num_positive.clamp(min=1.0)


def cls_loss(terms: Terms) -> Tensor:
    """Classification loss per image: ``sum_{pos+hardneg} l_cls / N_pos`` -> ``[B]`` (MTD's L_cls)."""
    return (terms.cls * (terms.positive | terms.hard_negative)).sum(1) / _normaliser(terms)


def loc_loss(terms: Terms) -> Tensor:
    """Localisation loss per image: ``sum_pos smoothL1 / N_pos`` -> ``[B]`` (MTD's L_loc)."""
    return terms.loc.sum(1) / _normaliser(terms)


def ssd_loss(terms: Terms) -> Tensor:
    """The multibox loss per image, ``L_cls + L_loc`` -> ``[B]`` (MTD eq. 1 with alpha = 1)."""
    return cls_loss(terms) + loc_loss(terms)


REDUCERS = {"multibox": ssd_loss, "cls": cls_loss, "loc": loc_loss}


# --------------------------------------------------------------------------- CWAT reducers
def object_losses(terms: Terms) -> tuple[Tensor, Tensor, Tensor]:
    """Each object's classification and localisation loss: the mean over its positive anchors.

    Hard negatives belong to no object, so they do not enter object-wise losses.

    Returns:
        ``(cls [B, M], loc [B, M], present [B, M] bool)``; ``present`` marks real objects that own
        at least one positive anchor (every object does after matching).
    """
    b, m = terms.object_labels.shape
    idx = terms.object_index.clamp(min=0)  # [B, A]; background rows are masked below
    pos = terms.positive.to(terms.cls.dtype)
    count = torch.zeros(b, m, dtype=terms.cls.dtype, device=terms.cls.device).scatter_add_(1, idx, pos)
    cls_sum = torch.zeros_like(count).scatter_add(1, idx, terms.cls * pos)
    loc_sum = torch.zeros_like(count).scatter_add(1, idx, terms.loc * pos)
    present = (count > 0) & (terms.object_labels > 0)
    denom = count.clamp(min=1.0)
    return cls_sum / denom, loc_sum / denom, present


def toa_loss(terms: Terms, beta_cls: float = 6.0, beta_loc: float = 6.0) -> Tensor:
    """Task-oriented loss (CWAT eq. 8-9): ``min(L_cls, β_cls) + min(L_loc, β_loc)`` -> ``[B]``."""
    return cls_loss(terms).clamp(max=beta_cls) + loc_loss(terms).clamp(max=beta_loc)


def owa_loss(terms: Terms, beta: float = 6.0) -> Tensor:
    """Object-wise loss (CWAT eq. 10-11): ``Σ_objects min(l_cls^o, β_o) + min(l_loc^o, β_o)`` -> ``[B]``."""
    oc, ol, present = object_losses(terms)
    return ((oc.clamp(max=beta) + ol.clamp(max=beta)) * present).sum(1)


def cwa_loss(terms: Terms, beta: float = 6.0) -> Tensor:
    """Class-wise loss (CWAT eq. 12): clipped object losses averaged within each class, then over
    the classes present in the image -> ``[B]``."""
    oc, ol, present = object_losses(terms)
    per_object = (oc.clamp(max=beta) + ol.clamp(max=beta)) * present  # [B, M]
    b, m = per_object.shape
    k = int(terms.object_labels.max().item()) + 1 if terms.object_labels.numel() else 1
    lab = torch.where(present, terms.object_labels, torch.zeros_like(terms.object_labels))
    class_sum = torch.zeros(b, k, dtype=per_object.dtype, device=per_object.device).scatter_add_(1, lab, per_object)
    class_n = torch.zeros_like(class_sum).scatter_add_(1, lab, present.to(per_object.dtype))
    class_n[:, 0] = 0  # column 0 collects padding
    has = class_n > 0
    class_mean = torch.where(has, class_sum / class_n.clamp(min=1.0), torch.zeros_like(class_sum))
    return class_mean.sum(1) / has.sum(1).clamp(min=1)


REDUCERS.update({"toa": toa_loss, "owa": owa_loss, "cwa": cwa_loss})
