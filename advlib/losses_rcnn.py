"""The loss decomposition of a two-stage detector (Faster R-CNN): RPN anchors and ROI proposals as
the elements of one :class:`~advlib.losses.Terms`.

A two-stage output has two kinds of elements: the RPN's fixed anchors (objectness and box deltas)
and the proposals the RPN picked for this very input (the ROI head's class logits and per-class box
deltas). :func:`rcnn_terms` puts both in one row per image, ``[B, A + P]`` (anchors first), so that
every reducer of :mod:`advlib.losses` applies:

* RPN (anchors matched once per batch by :meth:`FasterRCNNDetector.match` with torchvision's RPN
  matcher, IoU >= 0.7 positive, < 0.3 background, in between ignored, each object's best anchors
  positive): objectness BCE and smooth-L1 (β = 1/9) box loss, over torchvision's sample sizes
  (``batch_size_per_image`` anchors per image, at most ``positive_fraction`` of them positive), with
  the **hardest** positives and negatives (largest BCE) instead of torchvision's random draw: an
  attack's loss must be a deterministic function of the image.
* ROI (proposals matched at every call, since they move with the input, by torchvision's ROI
  ``proposal_matcher``, IoU >= 0.5, no low-quality matches): softmax cross-entropy of **every**
  proposal (no sampling: the proposals are exactly what the detector classifies at test time,
  at most ``post_nms_top_n`` of them) and smooth-L1 (β = 1/9) of the matched class's deltas on
  positives. No ground-truth boxes are added as proposals (torchvision's training does): the
  terms see what the eval-mode detector sees.

Normalisation is torchvision's: each part by its number of counted elements (RPN: sampled anchors;
ROI: proposals), as ``RegionProposalNetwork.compute_loss`` and ``fastrcnn_loss`` do over their
samples. Each element's term is multiplied by ``max(N_pos, 1) / N_part`` (``N_pos`` = the image's
positive anchors and proposals, reported as ``num_positive``), so that the reducers' division by
``max(N_pos, 1)`` gives, per image, ``L_objectness + L_rpn_box + L_classifier + L_box_reg``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from advlib.losses import Matched, Terms

_TENSOR_FIELDS = ("labels", "object_index", "box_targets", "object_labels", "num_objects", "object_boxes")


@dataclass
class RCNNMatched(Matched):
    """A batch's RPN anchor matching (the :class:`~advlib.losses.Matched` fields, labels ``-1`` on
    ignored anchors) plus what matching the proposals needs at every call.

    Shape:
        object_boxes ``[B, M, 4]`` padded ground truth (xyxy, input pixels; 0 = padding).

    Attributes:
        roi_matcher, roi_coder: the ROI head's torchvision ``Matcher`` and ``BoxCoder``.
        rpn_batch_size, rpn_positive_fraction: the RPN's sample per image and its positive share.
    """

    object_boxes: Tensor
    roi_matcher: Any
    roi_coder: Any
    rpn_batch_size: int
    rpn_positive_fraction: float

    def __getitem__(self, idx) -> "RCNNMatched":
        return dataclasses.replace(self, **{f: getattr(self, f)[idx] for f in _TENSOR_FIELDS})

    def repeat(self, k: int) -> "RCNNMatched":
        return dataclasses.replace(self, **{f: torch.cat([getattr(self, f)] * k) for f in _TENSOR_FIELDS})


def _hardest(loss: Tensor, eligible: Tensor, k: Tensor) -> Tensor:
    """Per row, the ``k`` eligible elements with the largest ``loss`` (ties by position).

    Shape:
        loss, eligible ``[B, N]``; k ``[B]`` -> ``[B, N]`` bool.
    """
    masked = loss.detach().masked_fill(~eligible, float("-inf"))
    rank = masked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # rank of each element
    return (rank < k[:, None]) & eligible


def match_proposals(proposals: Tensor, valid: Tensor, matched: RCNNMatched) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's ROI assignment (``RoIHeads.assign_targets_to_proposals``) of padded proposals.

    Returns:
        ``labels [B, P]`` (class, 0 background, -1 ignored or padding), ``object_index [B, P]``
        (-1 off positives) and ``box_targets [B, P, 4]`` (the ROI coder's encoding of the matched
        object relative to the proposal, 0 off positives).
    """
    b, p = valid.shape
    labels = torch.full((b, p), -1, dtype=torch.int64, device=valid.device)
    labels[valid] = 0
    index = torch.full((b, p), -1, dtype=torch.int64, device=valid.device)
    targets = torch.zeros(b, p, 4, dtype=proposals.dtype, device=proposals.device)
    matcher = matched.roi_matcher
    for i in range(b):
        n, keep = int(matched.num_objects[i]), valid[i]
        if n == 0 or not bool(keep.any()):
            continue
        gt = matched.object_boxes[i, :n].to(proposals.dtype)
        props = proposals[i][keep]
        idx = matcher(box_iou(gt, props))  # [P_i]: object, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS
        lab = matched.object_labels[i, idx.clamp(min=0)]
        lab[idx == matcher.BELOW_LOW_THRESHOLD] = 0
        lab[idx == matcher.BETWEEN_THRESHOLDS] = -1
        labels[i, keep] = lab
        fg = idx >= 0
        idx_i = torch.full_like(idx, -1)
        idx_i[fg] = idx[fg]
        index[i, keep] = idx_i
        enc = torch.zeros_like(props)
        if bool(fg.any()):
            enc[fg] = matched.roi_coder.encode_single(gt[idx[fg]], props[fg])
        targets[i, keep] = enc
    return labels, index, targets


def rcnn_terms(output, matched: RCNNMatched) -> Terms:
    """Per-element Faster R-CNN loss terms, anchors then proposals (see the module docstring).

    Args:
        output: an ``RCNNOutput`` (``objectness [B, A]``, ``rpn_deltas [B, A, 4]``, ``proposals
            [B, P, 4]``, ``proposal_mask [B, P]``, ``cls_logits [B, P, C+1]``, ``box_deltas
            [B, P, C+1, 4]``).
        matched: the batch's :class:`RCNNMatched`.

    Returns:
        :class:`~advlib.losses.Terms` of shape ``[B, A + P]``; ``positive`` are the sampled
        positive anchors and the positive proposals, ``hard_negative`` the sampled negative anchors
        and every background proposal.
    """
    if not isinstance(matched, RCNNMatched):
        raise ValueError(f"an R-CNN output needs the model's own matching (model.match), got {type(matched).__name__}")
    obj = output.objectness
    b, a = obj.shape
    if matched.labels.shape != (b, a):
        raise ValueError(f"matched labels {tuple(matched.labels.shape)} do not fit outputs {(b, a)}")
    # RPN: torchvision's sample sizes, hardest first
    rpn_pos, rpn_neg = matched.labels > 0, matched.labels == 0
    bce = F.binary_cross_entropy_with_logits(obj, rpn_pos.to(obj.dtype), reduction="none")  # [B, A]
    cap = int(matched.rpn_batch_size * matched.rpn_positive_fraction)
    with torch.no_grad():
        keep_pos = _hardest(bce, rpn_pos, torch.full((b,), cap, device=obj.device))
        keep_neg = _hardest(bce, rpn_neg, matched.rpn_batch_size - keep_pos.sum(1))
    rpn_loc = F.smooth_l1_loss(output.rpn_deltas, matched.box_targets.to(obj.dtype), beta=1 / 9,
                               reduction="none").sum(-1) * keep_pos
    # ROI: every proposal, matched to the objects now
    logits, valid = output.cls_logits, output.proposal_mask
    k = logits.shape[-1]
    roi_labels, roi_index, roi_targets = match_proposals(output.proposals, valid, matched)
    counted, roi_pos = roi_labels >= 0, roi_labels > 0
    ce = F.cross_entropy(logits.reshape(-1, k), roi_labels.clamp(min=0).reshape(-1),
                         reduction="none").reshape(roi_labels.shape) * counted  # [B, P]
    pick = roi_labels.clamp(min=0)[..., None, None].expand(*roi_labels.shape, 1, 4)  # [B, P, 1, 4]
    deltas = output.box_deltas.gather(2, pick).squeeze(2)  # [B, P, C+1, 4] -> [B, P, 4]
    roi_loc = F.smooth_l1_loss(deltas, roi_targets, beta=1 / 9, reduction="none").sum(-1) * roi_pos
    # one normaliser per image: weight each part so that sum / max(N_pos, 1) is torchvision's
    num_pos = (keep_pos.sum(1) + roi_pos.sum(1)).to(obj.dtype)
    norm = num_pos.clamp(min=1.0)
    w_rpn = (norm / (keep_pos | keep_neg).sum(1).clamp(min=1))[:, None]
    w_roi = (norm / counted.sum(1).clamp(min=1))[:, None]
    cls = torch.cat([bce * (keep_pos | keep_neg) * w_rpn, ce * w_roi], dim=1)
    loc = torch.cat([rpn_loc * w_rpn, roi_loc * w_roi], dim=1)
    rpn_index = torch.where(keep_pos, matched.object_index, torch.full_like(matched.object_index, -1))
    rpn_labels = torch.where(keep_pos, matched.labels, torch.zeros_like(matched.labels))
    return Terms(cls, loc, torch.cat([keep_pos, roi_pos], 1), torch.cat([keep_neg, counted & ~roi_pos], 1),
                 torch.cat([rpn_index, roi_index], 1), torch.cat([rpn_labels, roi_labels.clamp(min=0)], 1),
                 matched.object_labels, num_pos)


__all__ = ["RCNNMatched", "match_proposals", "rcnn_terms"]
