"""Multi-node SGLRP relevance maps of detectors and the RAD loss (Chen et al., "Relevance Attack on
Detectors": Sec. 3.3 eq. 2, Sec. 3.4 and App. C for the nodes, App. A for the rules).

A relevance map is the input relevance of an initial relevance placed on the detector's outputs,
carried back by the deep-Taylor rules of :mod:`advlib.attacks.lrp` (z^B on the normalised image,
z+ elsewhere), differentiable in the images. RAD minimises the positive part of the map.

**Nodes** (:func:`select_nodes`): boxes ranked by confidence (the best foreground probability,
:func:`advlib.losses.class_scores`), statically the top ``m`` (paper: 20) or dynamically every box
whose pre-softmax confidence exceeds ``threshold`` (paper: −1, −2, −3; here ``logit(p)``, which is
RetinaNet's raw class logit and the SSD's log-odds of its best class); per box the attacked output
is its best class logit (``kind="cls"``, the default and the paper's best), its w/h offsets
(``"size"``) or its x/y offsets (``"loc"``), paper Table 1.

**Initial relevance** (:func:`initial_relevance`), SGLRP's "softmax gradient" of the target nodes:

* ``mode="official"`` follows the official TF code (``interpreters.py``, ``utils.build_lrp``): a
  *target* map from ``y_t`` on the target nodes and a *dual* map from ``y_n · ȳ_t`` on **every**
  non-target output (all anchors, all columns; ``ȳ_t`` the targets' mean); with the code's
  ``scaling=True`` the dual map is rescaled to the target map's total before the subtraction, so
  the map sums to zero and the dual's constant factor cancels (the code propagates the two maps
  separately, ``scaling="map"``; by linearity one propagation does, ``scaling="output"``, the
  default: :func:`sglrp`). Without rescaling the dual swamps the map (trained default SSD: no
  positive element in any of 8 images, ``Σ h ≈ −990``). The code applies its softmax over the
  whole flattened output vector; here ``y`` is the detector's own probability (per-anchor softmax
  for the SSD, per-class sigmoid for RetinaNet). Its head divides SGLRP by ``1 − y_t`` (target
  ``y_t``, dual ``y_n y_t / (1 − y_t)``): ``target_weight="prob"``; ``"sglrp"`` uses eq. 2's
  ``y_t (1 − y_t)``.
* ``mode="restricted"``: the exact gradient of the SSD's per-anchor softmax, ``R_n = Σ_t y_t (δ_tn
  − y_n)``: ``y_t (1 − y_t)`` on a target, ``−y_n y_t`` on the other classes (background included)
  **of the target's own anchor**, zero elsewhere (a per-anchor softmax couples nothing across
  anchors; eq. 2's ``1/m`` average comes from the single global softmax of the official code and has
  no counterpart). One map, summing to zero per anchor, no rescaling. ``"prob"`` divides it by
  ``1 − y_t`` per anchor as the official head does (target ``y_t``, dual ``−y_n y_t / (1 − y_t)``).
* ``target_weight="prob"`` is the default in both modes: ``y_t (1 − y_t)`` vanishes as a box grows
  confident, so suppressing it can just as well push the box to certainty. On the trained default
  SSD (8 test images, 20 detections >= 0.5) ten RAD steps at ε = 16/255 left 1 (official) and 6
  (restricted) detections with ``"prob"``, 14 and 15 with ``"sglrp"``.
* RetinaNet's independent sigmoids have ``∂σ(z_t)/∂z_n = σ_t (1 − σ_t) δ_tn``: no cross-class term,
  so in ``"restricted"`` mode SGLRP has no dual, ``R_t = y_t (1 − y_t)`` on the targets only (the
  map is LRP's; ``"prob"``: ``y_t``); ``"official"`` mode still subtracts the rescaled dual of all
  other class outputs (column 0, unused, excluded).
* Box nodes have no softmax to differentiate: both modes use LRP's initialisation, the target
  offsets' own values ``d_t`` (signed), one map, no dual.

:func:`rad_loss` is ``Σ max(h, 0)`` per image plus the official code's fallback, a ``1e-21``-weighted
mean confidence of the top-3,000 boxes that only steers once the map has no positive element.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from advlib.attacks.lrp import EPS, input_bounds, trace
from advlib.attacks.objectives import OBJECTIVES, Objective
from advlib.losses import class_scores, sigmoid_family

#: node kinds (paper Table 1) -> the box-offset columns they attack (None: the class logit)
KINDS: dict[str, tuple[int, int] | None] = {"cls": None, "size": (2, 3), "loc": (0, 1)}
MODES = ("official", "restricted")
TARGET_WEIGHTS = ("prob", "sglrp")
SCALINGS = ("output", "map", "none")


def _check(kind: str, mode: str, target_weight: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown node kind {kind!r}; expected one of {sorted(KINDS)}")
    if mode not in MODES:
        raise ValueError(f"unknown relevance mode {mode!r}; expected one of {MODES}")
    if target_weight not in TARGET_WEIGHTS:
        raise ValueError(f"unknown target_weight {target_weight!r}; expected one of {TARGET_WEIGHTS}")


def select_nodes(output, kind: str = "cls", m: int | None = 20, threshold: float | None = None) -> Tensor:
    """The attacked output nodes of each image (paper Sec. 3.4, App. C), as a mask.

    Boxes are ranked by their best foreground probability ``p`` (:func:`class_scores`). Static
    (``threshold=None``): the top ``m`` boxes of each image. Dynamic: every box with
    ``logit(p) > threshold`` (``m`` ignored; an image may get none).

    Args:
        output: a dense detector output (``cls_logits [B, A, C+1]``, ``family`` for RetinaNet).
        kind: ``"cls"`` (the box's best class logit), ``"size"`` (w, h offsets) or ``"loc"`` (x, y).
        m: boxes per image (static).
        threshold: pre-softmax confidence threshold (dynamic).

    Returns:
        Bool mask ``[B, A, C+1]`` (``kind="cls"``) or ``[B, A, 4]`` (box kinds). Not differentiable
        (selection is piecewise constant).
    """
    _check(kind, "official", "prob")
    with torch.no_grad():
        conf, label = class_scores(output).max(-1)  # [B, A]
        if threshold is None:
            if m is None or m < 1:
                raise ValueError(f"static node selection needs m >= 1, got {m!r}")
            top = conf.topk(min(int(m), conf.shape[1]), dim=1).indices  # [B, m]
            chosen = torch.zeros_like(conf, dtype=torch.bool).scatter_(1, top, True)
        else:
            chosen = torch.logit(conf.double()) > float(threshold)
        cols = KINDS[kind]
        if cols is None:
            mask = torch.zeros(output.cls_logits.shape, dtype=torch.bool, device=conf.device)
            return mask.scatter_(2, (label + 1).unsqueeze(-1), chosen.unsqueeze(-1))
        mask = torch.zeros(*conf.shape, 4, dtype=torch.bool, device=conf.device)
        mask[..., list(cols)] = chosen.unsqueeze(-1)
        return mask


def initial_relevance(output, nodes: Tensor, kind: str = "cls", mode: str = "official",
                      target_weight: str = "prob") -> Tensor:
    """Multi-node SGLRP's output relevance (paper eq. 2; see the module docstring for each case).

    Args:
        output: the dense output (differentiable; the relevance depends on it).
        nodes: bool mask from :func:`select_nodes` (``[B, A, C+1]`` or ``[B, A, 4]``).
        kind, mode: as :func:`sglrp`.
        target_weight: ``"prob"`` (``y_t``, the official head: SGLRP divided by ``1 − y_t``) or
            ``"sglrp"`` (``y_t (1 − y_t)``, eq. 2).

    Returns:
        ``[M, B, A, K]`` with ``M = 2`` (target, dual) for official-mode class nodes, else ``M = 1``.
    """
    _check(kind, mode, target_weight)
    if KINDS[kind] is not None:
        if nodes.shape != output.box_deltas.shape:
            raise ValueError(f"{kind!r} nodes must be a [B, A, 4] mask, got {tuple(nodes.shape)}")
        return (output.box_deltas * nodes).unsqueeze(0)
    logits = output.cls_logits
    if nodes.shape != logits.shape:
        raise ValueError(f"class nodes must be a [B, A, C+1] mask, got {tuple(nodes.shape)}")
    mask = nodes.to(logits.dtype)
    if sigmoid_family(output):
        y = torch.sigmoid(logits)
        valid = torch.ones_like(mask)
        valid[..., 0] = 0.0  # column 0 is no class of RetinaNet's
        target = mask * (y if target_weight == "prob" else y * (1 - y))
        if mode == "restricted":
            return target.unsqueeze(0)
    else:
        y = torch.softmax(logits, dim=-1)
        valid = torch.ones_like(mask)
        if mode == "restricted":
            s = (y * mask).sum(-1, keepdim=True)  # [B, A, 1]: the anchor's target probability mass
            r = y * (mask - s)  # Σ_t ∂y_t/∂z_n over the anchor's targets
            if target_weight == "prob":
                r = r / (1 - s).clamp(min=EPS)
            return r.unsqueeze(0)
        target = mask * (y if target_weight == "prob" else y * (1 - y))
    n_t = mask.sum((1, 2), keepdim=True)  # [B, 1, 1]
    mean_t = (y * mask).sum((1, 2), keepdim=True) / n_t.clamp(min=1)
    factor = mean_t / (1 - mean_t).clamp(min=EPS) if target_weight == "prob" else mean_t
    dual = y * (1 - mask) * valid * factor
    return torch.stack([target, dual])


class RelevanceMaps(NamedTuple):
    """What :func:`sglrp` computed.

    Shape:
        relevance: ``[B, 3, H, W]``; target, dual: ``[B, 3, H, W]`` (the two maps before the
        subtraction, only with ``scaling="map"``) or ``None``; nodes: the mask used; output: the
        traced dense output.
    """

    relevance: Tensor
    target: Tensor | None
    dual: Tensor | None
    nodes: Tensor
    output: object


def sglrp(model: nn.Module, images: Tensor, *, kind: str = "cls", m: int | None = 20,
          threshold: float | None = None, nodes: Tensor | None = None, mode: str = "official",
          target_weight: str = "prob", scaling: str = "output", bounds: str | tuple[float, float] = "image",
          eps: float = EPS) -> RelevanceMaps:
    """Multi-node SGLRP relevance map ``h(x, T)`` of a batch (paper Sec. 3.3), differentiable in ``images``.

    Args:
        model: an SSD or RetinaNet detector on ``tiny_vgg`` / ``tiny_resnet`` (see :func:`trace`).
        images: ``[B, 3, H, W]`` in ``[0, 1]``.
        kind, m, threshold: node selection (:func:`select_nodes`), ignored when ``nodes`` is given.
        nodes: a fixed node mask (e.g. chosen once per attack).
        mode: ``"official"`` or ``"restricted"`` (module docstring).
        target_weight: see :func:`initial_relevance`.
        scaling: official mode, how the dual is rescaled to the target's total per image (the
            code's ``scaling=True``): ``"map"`` propagates both and rescales the dual *map* by
            ``c = Σ target map / Σ dual map``, as the code (two propagations); ``"output"`` (default)
            takes ``c`` from the initial relevances and propagates ``R_t − c·R_d`` once: the rules
            are linear in the relevance and conserve it up to what biases absorb, so this is the
            same map at half the cost (trained default SSD: ``c`` within 2e-6, ``Σ max(h, 0)``
            within 1e-6 relative); ``"none"`` subtracts the unscaled dual (``y_n ȳ_t``).
        bounds: z^B bounds of the normalised image (:func:`advlib.attacks.lrp.input_bounds`;
            ``"image"`` is the official code's).
        eps: stabiliser of the rules' denominators.

    Returns:
        :class:`RelevanceMaps`; ``relevance = target − c · dual`` or the single map. Batch norm
        uses running statistics (eval mode).
    """
    _check(kind, mode, target_weight)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; expected one of {SCALINGS}")
    t = trace(model, images, box_head=KINDS[kind] is not None)
    if nodes is None:
        nodes = select_nodes(t.output, kind, m, threshold)
    r = initial_relevance(t.output, nodes, kind, mode, target_weight)  # [M, B, A, K]
    low, high = input_bounds(model, t.input, bounds)
    head = "cls" if KINDS[kind] is None else "box"
    if r.shape[0] == 2 and scaling != "map":  # one propagation of R_t − c·R_d (linearity)
        r = (r[0] - (_ratio(r[0], r[1], (1, 2)) if scaling == "output" else 1.0) * r[1]).unsqueeze(0)
    h = t.propagate({head: r}, low, high, eps)  # [M, B, 3, H, W]
    if h.shape[0] == 1:
        return RelevanceMaps(h[0], None, None, nodes, t.output)
    target, dual = h[0], h[1]
    return RelevanceMaps(target - _ratio(target, dual, (1, 2, 3)) * dual, target, dual, nodes, t.output)


def _ratio(num: Tensor, den: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-image ``Σ num / Σ den`` (stabilised), shaped to broadcast against ``num``."""
    total = den.sum(dims, keepdim=True)
    return num.sum(dims, keepdim=True) / (total + EPS * (2.0 * (total >= 0).to(total.dtype) - 1.0))


def relevance_map(model: nn.Module, images: Tensor, **kwargs) -> Tensor:
    """The signed multi-node SGLRP map ``[B, 3, H, W]`` (keyword arguments as :func:`sglrp`)."""
    return sglrp(model, images, **kwargs).relevance


def rad_loss(model: nn.Module, images: Tensor, *, fallback_weight: float = 1e-21, fallback_topk: int = 3000,
             fallback_index: Tensor | None = None, **kwargs) -> Tensor:
    """RAD's loss per image (to be **minimised**; an attack objective maximises its negative).

    ``L(x) = Σ_{c,h,w} max(h(x, T), 0) + fallback_weight · mean_{top-k boxes} p_max`` where ``h``
    is :func:`sglrp`'s map and the second term is the official code's
    ``reduce_mean(attacked_nodes)`` (its relevance term is divided by ``1e-21`` instead; the same
    ratio): the mean best-class probability of the ``fallback_topk`` most confident boxes, which only
    steers the attack once the map has no positive element left.

    Args:
        model, images: as :func:`sglrp`; further keyword arguments go to it.
        fallback_weight: weight of the fallback term (0 disables it).
        fallback_topk: boxes in the fallback term (official: 3,000).
        fallback_index: ``[B, k]`` box indices for the fallback term; the official code ranks the
            boxes once on the clean image and keeps that order (``None``: rank the current output).

    Returns:
        ``[B]``, differentiable in ``images``.
    """
    maps = sglrp(model, images, **kwargs)
    loss = maps.relevance.clamp(min=0).sum((1, 2, 3))
    if fallback_weight:
        conf = class_scores(maps.output).max(-1).values  # [B, A]
        if fallback_index is None:
            fallback_index = conf.detach().topk(min(fallback_topk, conf.shape[1]), dim=1).indices
        loss = loss + fallback_weight * conf.gather(1, fallback_index).mean(1)
    return loss


class RADObjective(Objective):
    """RAD (paper Sec. 3): maximise ``−rad_loss``, i.e. suppress the positive relevance of the
    selected nodes, re-selected at every step (static top-``m`` or dynamic ``threshold``, of
    ``kind``). The fallback term's box ranking is fixed once on the clean image, as the official
    code. Keyword arguments are :func:`sglrp`'s node and map settings."""

    name = "rad"

    def __init__(self, kind: str = "cls", m: int | None = 20, threshold: float | None = None,
                 mode: str = "official", target_weight: str = "prob", fallback_weight: float = 1e-21) -> None:
        _check(kind, mode, target_weight)
        self.map_kwargs = dict(kind=kind, m=m, threshold=threshold, mode=mode, target_weight=target_weight)
        self.fallback_weight = fallback_weight

    def prepare(self, model, images: Tensor, targets=None, spec=None, matched=None) -> Tensor:
        with torch.no_grad():
            conf = class_scores(model(images)).max(-1).values  # [B, A]
        return conf.topk(min(3000, conf.shape[1]), dim=1).indices

    def loss(self, model, x: Tensor, state: Tensor) -> Tensor:
        return -rad_loss(model, x, fallback_weight=self.fallback_weight, fallback_index=state, **self.map_kwargs)


OBJECTIVES.add("rad", RADObjective)

__all__ = ["KINDS", "MODES", "RADObjective", "RelevanceMaps", "initial_relevance", "rad_loss", "relevance_map", "select_nodes",
           "sglrp"]
