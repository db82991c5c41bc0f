"""Attack objectives: per-image losses to maximise, built from the one loss decomposition.

Every objective has ``prepare(model, images, targets) -> state`` (run once per attack: anchor
matching, target labels and clean detections are fixed here, never per step) and
``loss(model, x, state) -> [B]``; objectives with a success criterion also have
``done(model, x, state) -> [B] bool`` for per-image early stopping.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advlib.losses import REDUCERS, Matched, batched_box_iou, match_anchors, multibox_terms, pad_targets


@dataclass
class TaskState:
    matched: Matched


class TaskObjective:
    """A reducer of the multibox terms against the ground truth.

    ``cls`` = A_cls and ``loc`` = A_loc (MTD), ``multibox`` = their sum (MTD's CON / the SSD
    loss), ``toa`` / ``owa`` / ``cwa`` = CWAT's task-oriented, object-wise and class-wise losses
    (eq. 8-12, with ``beta`` / ``beta_cls`` / ``beta_loc`` parameters).
    """

    NAMES = ("cls", "loc", "multibox", "toa", "owa", "cwa")

    def __init__(self, name: str, **params) -> None:
        if name not in self.NAMES:
            raise ValueError(f"unknown task objective {name!r}; expected one of {self.NAMES}")
        self.name = name
        self.reducer = functools.partial(REDUCERS[name], **params)

    def prepare(self, model, images: Tensor, targets: list[dict]) -> TaskState:
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError(f"objective {self.name!r} needs one ground-truth target per image")
        return TaskState(match_anchors(model.anchors, targets, model.box_coder))

    def loss(self, model, x: Tensor, state: TaskState) -> Tensor:
        return self.reducer(multibox_terms(model(x), state.matched))


# ------------------------------------------------------------------------------------ DAG
@dataclass
class DAGState:
    targets: Tensor  # [B, A] bool: anchors matched to an object
    true: Tensor  # [B, A] true label
    adv: Tensor  # [B, A] wrong label (fixed for the attack)


class DAGObjective:
    """Dense Adversary Generation (Xie et al. 2017) for one-stage detectors.

    Targets are the anchors matched to an object (IoU > 0.5 and each object's best anchor); each
    gets a random wrong foreground label drawn once from a generator seeded per image. The loss
    is ``Σ (z_adv − z_true)`` over targets whose prediction is still the true class; an image is
    done when none is left. Use with ``update="linf"``, ``step_size = 0.5/255`` (γ = 0.5 on the
    0-255 scale), 150 steps, ``early_stop=True``; the engine keeps the perturbation in the ε-ball
    (the public RobustDet code did not bound it and stepped from the clean image each time).
    """

    name = "dag"

    def __init__(self, seed: int = 0, **params) -> None:
        self.seed = seed

    def prepare(self, model, images: Tensor, targets: list[dict]) -> DAGState:
        from advlib.attacks.engine import image_generators

        matched = match_anchors(model.anchors, targets, model.box_coder)
        c = model.num_classes
        if c < 2:
            raise ValueError("DAG needs at least two foreground classes to pick a wrong label")
        gens = image_generators(images, self.seed)
        a = matched.labels.shape[1]
        shift = torch.stack([torch.randint(1, c, (a,), generator=g) for g in gens]).to(images.device)
        true = matched.labels
        adv = (true - 1 + shift) % c + 1  # in 1..C and never the true class
        return DAGState(matched.positive, true, adv)

    def _active(self, logits: Tensor, state: DAGState) -> Tensor:
        return state.targets & (logits.argmax(-1) == state.true)

    def loss(self, model, x: Tensor, state: DAGState) -> Tensor:
        return self.loss_and_done(model, x, state)[0]

    def loss_and_done(self, model, x: Tensor, state: DAGState) -> tuple[Tensor, Tensor]:
        """The loss and, from the same forward pass, which images have no target left to fool."""
        z = model(x).cls_logits  # [B, A, C+1]
        active = self._active(z.detach(), state)
        gap = z.gather(-1, state.adv[..., None]).squeeze(-1) - z.gather(-1, state.true[..., None]).squeeze(-1)
        return (gap * active).sum(1), ~active.any(1)

    def done(self, model, x: Tensor, state: DAGState) -> Tensor:
        return ~self._active(model(x).cls_logits, state).any(1)


# ----------------------------------------------------- attacks on the clean detections
@dataclass
class CleanState:
    candidates: Tensor  # [B, A] bool
    labels: Tensor  # [B, A] class of the clean detection each candidate overlaps
    clean_deltas: Tensor  # [B, A, 4]


def clean_candidates(model, images: Tensor, iou_thresh: float, score_thresh: float = 0.3,
                     fg_thresh: float = 0.0) -> CleanState:
    """Anchors whose decoded clean box overlaps a clean detection (IoU > ``iou_thresh``) and
    whose foreground probability exceeds ``fg_thresh``, with that detection's class.

    Shape:
        images ``[B, 3, H, W]`` -> candidates, labels ``[B, A]``, clean_deltas ``[B, A, 4]``.
    """
    with torch.no_grad():
        out = model(images)
        dets = model.postprocess(out, score_thresh=score_thresh)
        boxes = model.decode(out.box_deltas)  # [B, A, 4]
        fg = 1.0 - torch.softmax(out.cls_logits, -1)[..., 0]  # [B, A]
        det_boxes, det_labels = pad_targets([{"boxes": d["boxes"], "labels": d["labels"]} for d in dets],
                                            images.device)  # [B, D, 4], [B, D]
        iou = batched_box_iou(det_boxes, boxes)  # [B, D, A]
        iou = torch.where(det_labels[..., None] > 0, iou, torch.full_like(iou, -1.0))
        best, which = iou.max(1)  # [B, A]
        cand = (best > iou_thresh) & (fg > fg_thresh)
        labels = torch.where(cand, det_labels.gather(1, which), torch.zeros_like(which))
    return CleanState(cand, labels, out.box_deltas.detach())


class _CleanDetectionObjective:
    iou_thresh = 0.5
    fg_thresh = 0.0

    def __init__(self, score_thresh: float = 0.3, seed: int = 0, **params) -> None:
        self.score_thresh = score_thresh
        self.params = params

    def prepare(self, model, images: Tensor, targets=None) -> CleanState:
        return clean_candidates(model, images, self.iou_thresh, self.score_thresh, self.fg_thresh)

    def done(self, model, x: Tensor, state: CleanState) -> Tensor:
        dets = model.postprocess(model(x), score_thresh=self.score_thresh)
        return torch.tensor([len(d["scores"]) == 0 for d in dets], device=x.device)


class DfoolObjective(_CleanDetectionObjective):
    """Dfool (Lu et al. 2017) as in RAD's Table 3: suppress the class confidence of the clean
    detections: ``mean over candidate anchors of −log p(class of the detection)``."""

    name = "dfool"

    def loss(self, model, x: Tensor, state: CleanState) -> Tensor:
        logp = torch.log_softmax(model(x).cls_logits, -1)
        nll = -logp.gather(-1, state.labels[..., None]).squeeze(-1)
        n = state.candidates.sum(1).clamp(min=1)
        return (nll * state.candidates).sum(1) / n


class ShrinkObjective(_CleanDetectionObjective):
    """"Loc" in RAD's Table 3: shrink the width and height of the clean detections:
    ``−mean over candidate anchors of (t_w + t_h)`` (log-scale size offsets)."""

    name = "shrink"

    def loss(self, model, x: Tensor, state: CleanState) -> Tensor:
        d = model(x).box_deltas
        n = state.candidates.sum(1).clamp(min=1)
        return -((d[..., 2] + d[..., 3]) * state.candidates).sum(1) / n


class RAPObjective(_CleanDetectionObjective):
    """RAP (Li et al., BMVC 2018) in its one-stage (SSD) form.

    Candidates: anchors with foreground probability > 0.01 whose box overlaps a clean detection
    with IoU > 0.3. Label loss: push candidates to background (``Σ log p_bg``); shape loss: pull
    their offsets towards the clean offsets shifted by ``shift`` (``−Σ smoothL1(t − (t_clean +
    τ))``), so the decoded boxes move away from the clean ones. Both are averaged over candidates
    and added with weight ``shape_weight``.
    """

    name = "rap"
    iou_thresh = 0.3
    fg_thresh = 0.01

    def __init__(self, score_thresh: float = 0.3, shape_weight: float = 1.0,
                 shift: tuple[float, float, float, float] = (1.0, 1.0, -1.0, -1.0), seed: int = 0, **params) -> None:
        super().__init__(score_thresh, seed)
        self.shape_weight = shape_weight
        self.shift = shift

    def loss(self, model, x: Tensor, state: CleanState) -> Tensor:
        out = model(x)
        log_bg = torch.log_softmax(out.cls_logits, -1)[..., 0]
        target = state.clean_deltas + torch.tensor(self.shift, device=x.device, dtype=x.dtype)
        shape = F.smooth_l1_loss(out.box_deltas, target, reduction="none").sum(-1)
        n = state.candidates.sum(1).clamp(min=1)
        return ((log_bg - self.shape_weight * shape) * state.candidates).sum(1) / n
