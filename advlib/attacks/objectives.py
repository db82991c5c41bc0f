"""Attack objectives: per-image losses to maximise, built from the one loss decomposition.

An objective is a subclass of :class:`Objective`: ``prepare(model, images, targets, spec,
matched) -> state`` runs once per attack (anchor matching, target labels and clean detections are
fixed here, never per step) and ``loss(model, x, state) -> [B]`` is maximised by the engine.
Objectives with a success criterion set ``has_done`` and implement ``done(model, x, state) -> [B]
bool`` (per-image early stop); those that can report it from their loss's own forward pass also
set ``fuses_done`` and implement ``loss_and_done``. A composite attack (MTD's task-domain attack)
overrides :meth:`Objective.craft`.

Objectives are registered by name in :data:`OBJECTIVES`; ``AttackSpec.params`` are their
constructor arguments, checked by name (an unknown parameter raises ``ValueError``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advlib.attacks.engine import AttackSpec, image_generators, run_attack
from advlib.losses import REDUCERS, Matched, batched_box_iou, class_scores, match_targets, multibox_terms, pad_targets
from advlib.registry import Registry, check_params

#: objective name -> class (or factory) taking the spec's ``params`` as keyword arguments
OBJECTIVES: Registry = Registry("attack objective")


class Objective:
    """Base class of every attack objective (see the module docstring)."""

    name = "objective"
    has_done = False  # implements done(): per-image success for early stopping
    fuses_done = False  # implements loss_and_done(): success from the loss's own forward pass

    def prepare(self, model, images: Tensor, targets: list[dict] | None, spec: AttackSpec | None = None,
                matched: Matched | None = None):
        """Per-attack state (computed once). ``spec`` seeds random choices (its ``seed``; 0 when
        ``None``); ``matched`` is an anchor matching of ``targets`` the caller already has (e.g. a
        training batch's)."""
        return None

    def loss(self, model, x: Tensor, state) -> Tensor:
        raise NotImplementedError

    def done(self, model, x: Tensor, state) -> Tensor:
        raise NotImplementedError(f"objective {self.name!r} has no success criterion")

    def loss_and_done(self, model, x: Tensor, state) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"objective {self.name!r} does not fuse its success check")

    def craft(self, model, images: Tensor, targets: list[dict] | None, spec: AttackSpec,
              snapshots: list[int] | None = None, generators: list | None = None, matched: Matched | None = None):
        """Adversarial images for a batch: :meth:`prepare` once, then the engine."""
        state = self.prepare(model, images, targets, spec, matched)
        return run_attack(model, images, self, spec, state, snapshots, generators)


def make_objective(spec: AttackSpec) -> Objective:
    """The objective ``spec.objective`` names, built with ``spec.params``.

    Raises:
        ValueError: unknown objective (the registered names are listed) or unknown parameter.
    """
    return OBJECTIVES.build(spec.objective, **spec.kwargs)


def ground_truth_matching(model, images: Tensor, targets: list[dict] | None, matched: Matched | None,
                          who: str) -> Matched:
    """``matched`` when the caller has one (a training batch's), else the anchors matched to
    ``targets`` once for the whole attack."""
    if matched is not None:
        return matched
    if targets is None or len(targets) != images.shape[0]:
        raise ValueError(f"objective {who!r} needs one ground-truth target per image")
    return match_targets(model, targets)


@dataclass
class TaskState:
    matched: Matched


class TaskObjective(Objective):
    """A reducer of the multibox terms against the ground truth.

    ``cls`` = A_cls and ``loc`` = A_loc (MTD), ``multibox`` = their sum (MTD's CON / the SSD
    loss), ``toa`` / ``owa`` / ``cwa`` = CWAT's task-oriented, object-wise and class-wise losses
    (eq. 8-12, with ``beta`` / ``beta_cls`` / ``beta_loc`` parameters).
    """

    def __init__(self, reducer: str, **params) -> None:
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {reducer!r}; expected one of {sorted(REDUCERS)}")
        check_params(REDUCERS[reducer], params, f"attack objective {reducer!r}")
        self.name = reducer
        self.reducer = functools.partial(REDUCERS[reducer], **params)

    def prepare(self, model, images, targets, spec=None, matched=None) -> TaskState:
        return TaskState(ground_truth_matching(model, images, targets, matched, self.name))

    def loss(self, model, x: Tensor, state: TaskState) -> Tensor:
        return self.reducer(multibox_terms(model(x), state.matched))


for _name in ("cls", "loc", "multibox", "toa", "owa", "cwa"):
    OBJECTIVES.add(_name, functools.partial(TaskObjective, _name))


# ------------------------------------------------------------------------------------ DAG
@dataclass
class DAGState:
    targets: Tensor  # [B, A] bool: anchors matched to an object
    true: Tensor  # [B, A] true label
    adv: Tensor  # [B, A] wrong label (fixed for the attack)
    stop_prob: float | None  # a target stays active while p(true) >= this (None: argmax rule)


@OBJECTIVES.register("dag")
class DAGObjective(Objective):
    """Dense Adversary Generation (Xie et al. 2017) for one-stage detectors.

    Targets are the anchors matched to an object (IoU > 0.5 and each object's best anchor); each
    gets a random wrong foreground label drawn once from a generator seeded per image (the spec's
    seed). The loss is ``Σ (z_adv − z_true)`` over the targets still *active*; an image is done
    when none is left.

    Args:
        until: when a target stops being attacked. ``"score"`` (default): once the probability of
            its true class falls below ``stop_prob``, which defaults to the model's post-processing
            score threshold, so a target is attacked for as long as it can still count as a
            detection in the mAP (the evaluation keeps every detection above 0.01). ``"argmax"``:
            the original DAG rule, once the argmax is no longer the true class; on our SSD the
            true class still keeps p ≈ 0.1 then and 97 % of objects stay detected above 0.01.
        stop_prob: the probability threshold of ``until="score"`` (``None``: the model's).
        boxes: ``"ground_truth"`` (the anchors matched to objects) or ``"top"``: RAD's Appendix E.3
            setting, the ``top_k`` anchors most confident on the clean image (their best class as
            the true label; no ground truth needed), kept for the whole attack.
        top_k: anchors attacked with ``boxes="top"`` (RAD: 3,000).
    """

    name = "dag"
    has_done = True
    fuses_done = True

    def __init__(self, until: str = "score", stop_prob: float | None = None, boxes: str = "ground_truth",
                 top_k: int = 3000) -> None:
        if boxes not in ("ground_truth", "top") or top_k < 1:
            raise ValueError(f"DAG boxes must be 'ground_truth' or 'top' with top_k >= 1, got {boxes!r}, {top_k!r}")
        self.boxes, self.top_k = boxes, int(top_k)
        if until not in ("score", "argmax"):
            raise ValueError(f"DAG until must be 'score' or 'argmax', got {until!r}")
        if stop_prob is not None and not 0.0 < stop_prob < 1.0:
            raise ValueError(f"DAG stop_prob must be in (0, 1), got {stop_prob!r}")
        self.until = until
        self.stop_prob = stop_prob

    def _targets(self, model, images, targets, matched) -> tuple[Tensor, Tensor]:
        """``(target mask [B, A], true label [B, A])`` by the ``boxes`` rule."""
        if self.boxes == "top":
            with torch.no_grad():
                conf, label = class_scores(model(images)).max(-1)  # [B, A]
            top = conf.topk(min(self.top_k, conf.shape[1]), dim=1).indices
            mask = torch.zeros_like(conf, dtype=torch.bool).scatter_(1, top, True)
            return mask, torch.where(mask, label + 1, torch.zeros_like(label))
        matched = ground_truth_matching(model, images, targets, matched, self.name)
        return matched.positive, matched.labels.clamp(min=0)  # RetinaNet's ignored anchors (-1) are no targets

    def prepare(self, model, images, targets, spec=None, matched=None) -> DAGState:
        c = model.num_classes
        if c < 2:
            raise ValueError("DAG needs at least two foreground classes to pick a wrong label")
        mask, true = self._targets(model, images, targets, matched)
        gens = image_generators(images, 0 if spec is None else spec.seed)
        a = true.shape[1]
        shift = torch.stack([torch.randint(1, c, (a,), generator=g) for g in gens]).to(images.device)
        adv = (true - 1 + shift) % c + 1  # in 1..C and never the true class
        stop = None if self.until == "argmax" else float(self.stop_prob if self.stop_prob is not None
                                                         else getattr(model, "score_thresh", 0.01))
        return DAGState(mask, true, adv, stop)

    def _active(self, output, state: DAGState) -> Tensor:
        logits = output.cls_logits
        if state.stop_prob is None:
            return state.targets & (logits.argmax(-1) == state.true)
        # the probability the detector's post-processing scores the true class by (softmax for
        # the SSD, the class's own sigmoid for RetinaNet); background anchors are no targets
        p_true = class_scores(output).gather(-1, (state.true - 1).clamp(min=0)[..., None]).squeeze(-1)
        return state.targets & (p_true >= state.stop_prob)

    def loss(self, model, x: Tensor, state: DAGState) -> Tensor:
        return self.loss_and_done(model, x, state)[0]

    def loss_and_done(self, model, x: Tensor, state: DAGState) -> tuple[Tensor, Tensor]:
        """The loss and, from the same forward pass, which images have no target left to fool."""
        out = model(x)
        z = out.cls_logits  # [B, A, C+1]
        active = self._active(type(out)(z.detach(), out.box_deltas), state)
        gap = z.gather(-1, state.adv[..., None]).squeeze(-1) - z.gather(-1, state.true[..., None]).squeeze(-1)
        return (gap * active).sum(1), ~active.any(1)

    def done(self, model, x: Tensor, state: DAGState) -> Tensor:
        return ~self._active(model(x), state).any(1)


# ------------------------------------------------------------------- Gaussian noise
@OBJECTIVES.register("noise")
class NoiseObjective(Objective):
    """Not an attack: additive Gaussian noise of standard deviation ``sigma`` (``[0, 1]`` units),
    drawn per image from the spec's seed and the image's bytes, clipped to ``[0, 1]`` and to the
    spec's ε-ball (RAD's "Ablation": σ = 9/255 with ε = 1, unbounded), so that an attack's drop can
    be told from what any perturbation of that size does."""

    name = "noise"

    def __init__(self, sigma: float = 9 / 255) -> None:
        if not sigma > 0:
            raise ValueError(f"noise sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def craft(self, model, images, targets, spec, snapshots=None, generators=None, matched=None):
        from advlib.attacks.engine import project

        gens = generators if generators is not None else image_generators(images, spec.seed)
        noise = torch.stack([torch.randn(tuple(images.shape[1:]), generator=g) for g in gens]).to(images)
        x = project(images.detach() + self.sigma * noise, images.detach(), spec.eps)
        return {k: x for k in snapshots} if snapshots is not None else x


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


class _CleanDetectionObjective(Objective):
    """Attacks on the model's own clean detections (no ground truth): candidates are fixed once."""

    iou_thresh = 0.5
    fg_thresh = 0.0
    has_done = True

    def __init__(self, score_thresh: float = 0.3) -> None:
        self.score_thresh = score_thresh

    def prepare(self, model, images, targets, spec=None, matched=None) -> CleanState:
        return clean_candidates(model, images, self.iou_thresh, self.score_thresh, self.fg_thresh)

    def done(self, model, x: Tensor, state: CleanState) -> Tensor:
        dets = model.postprocess(model(x), score_thresh=self.score_thresh)
        return torch.tensor([len(d["scores"]) == 0 for d in dets], device=x.device)


@OBJECTIVES.register("dfool")
class DfoolObjective(_CleanDetectionObjective):
    """Dfool (Lu et al. 2017) as in RAD's Table 3: suppress the class confidence of the clean
    detections: ``mean over candidate anchors of −log p(class of the detection)``."""

    name = "dfool"

    def loss(self, model, x: Tensor, state: CleanState) -> Tensor:
        logp = torch.log_softmax(model(x).cls_logits, -1)
        nll = -logp.gather(-1, state.labels[..., None]).squeeze(-1)
        n = state.candidates.sum(1).clamp(min=1)
        return (nll * state.candidates).sum(1) / n


@OBJECTIVES.register("shrink")
class ShrinkObjective(_CleanDetectionObjective):
    """"Loc" in RAD's Table 3: shrink the width and height of the clean detections:
    ``−mean over candidate anchors of (t_w + t_h)`` (log-scale size offsets)."""

    name = "shrink"

    def loss(self, model, x: Tensor, state: CleanState) -> Tensor:
        d = model(x).box_deltas
        n = state.candidates.sum(1).clamp(min=1)
        return -((d[..., 2] + d[..., 3]) * state.candidates).sum(1) / n


def box_shift_in_offsets(shift: float, scale: float, weights: tuple[float, ...]) -> tuple[float, float, float, float]:
    """A box move in units of the box's own size, as encoded offsets of a torchvision ``BoxCoder``.

    Moving the centre by ``shift`` × (width, height) and multiplying both sides by ``scale``
    changes the encoded offsets ``(t_x, t_y, t_w, t_h) = (w_x Δx/w_a, w_y Δy/h_a, w_w log(w/w_a),
    w_h log(h/h_a))`` by ``(w_x·shift·w/w_a, w_y·shift·h/h_a, w_w·log scale, w_h·log scale)``; for an
    anchor matched to the box (``w ≈ w_a``) that is ``(w_x·shift, w_y·shift, w_w·log scale,
    w_h·log scale)``. With SSD's weights (10, 10, 5, 5), the old τ = (1, 1, −1, −1) is a move of
    0.1 box and a scale of e^(−0.2) = 0.82: IoU ≈ 0.64 with the clean box, no miss at IoU 0.5.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    wx, wy, ww, wh = (float(w) for w in weights)
    return (wx * shift, wy * shift, ww * math.log(scale), wh * math.log(scale))


def shifted_box_iou(shift: float, scale: float) -> float:
    """IoU of a box with the same box moved by ``shift`` of its size in x and y and scaled by
    ``scale`` about its new centre (the geometry behind RAP's shape target)."""
    # unit box [0, 1]^2 against a box of side `scale` centred at (0.5 + shift, 0.5 + shift)
    lo, hi = 0.5 + shift - scale / 2, 0.5 + shift + scale / 2
    side = max(0.0, min(1.0, hi) - max(0.0, lo))
    inter = side * side
    return inter / (1.0 + scale * scale - inter)


@OBJECTIVES.register("rap")
class RAPObjective(_CleanDetectionObjective):
    """RAP (Li et al., BMVC 2018) in its one-stage (SSD) form.

    Candidates: anchors with foreground probability > 0.01 whose box overlaps a clean detection
    with IoU > 0.3. Label loss: push candidates to background (``Σ log p_bg``); shape loss: pull
    their offsets towards a target box moved away from the clean one (``−Σ smoothL1(t − τ)``).
    Both are averaged over candidates and added with weight ``shape_weight`` (0 = label only;
    ``label_weight`` 0 = shape only, the notebook's ablations).

    The shape target is given in units of the box's own size (:func:`box_shift_in_offsets`):
    ``shift`` moves the centre by that fraction of width and height and ``scale`` resizes it.
    The default (0.3, 0.55) is τ = (3, 3, −3, −3) in encoded units; reaching it leaves an IoU of
    :func:`shifted_box_iou` ``(0.3, 0.55)`` ≈ 0.21 with the clean box, a miss at IoU 0.5.
    """

    name = "rap"
    iou_thresh = 0.3
    fg_thresh = 0.01

    def __init__(self, score_thresh: float = 0.3, shape_weight: float = 1.0, label_weight: float = 1.0,
                 shift: float = 0.3, scale: float = 0.55) -> None:
        super().__init__(score_thresh)
        if shape_weight < 0 or label_weight < 0 or shape_weight + label_weight == 0:
            raise ValueError(f"RAP weights must be >= 0 and not both 0, got label {label_weight}, shape {shape_weight}")
        if scale <= 0:
            raise ValueError(f"RAP scale must be > 0, got {scale}")
        self.shape_weight = shape_weight
        self.label_weight = label_weight
        self.shift = shift
        self.scale = scale

    def loss(self, model, x: Tensor, state: CleanState) -> Tensor:
        out = model(x)
        log_bg = torch.log_softmax(out.cls_logits, -1)[..., 0]
        tau = torch.tensor(box_shift_in_offsets(self.shift, self.scale, model.box_coder.weights),
                           device=x.device, dtype=x.dtype)
        shape = F.smooth_l1_loss(out.box_deltas, state.clean_deltas + tau, reduction="none").sum(-1)
        n = state.candidates.sum(1).clamp(min=1)
        return ((self.label_weight * log_bg - self.shape_weight * shape) * state.candidates).sum(1) / n
