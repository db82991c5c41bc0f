"""RobustDet's analyses of the "detection robustness bottleneck" (Dong et al., ECCV 2022, §3.2, §5.3).

What only this paper measures, as functions of any detector of the core (a plain
:class:`~advlib.models.ssd.SSDDetector` or a :class:`~advlib.models.robustdet.RobustDetector`):

* :func:`loss_changes`, :func:`loss_change_histograms` (Fig. 3): how ``m`` SGD steps on one batch
  change the loss of another (clean → clean, clean → adv, adv → clean).
* :func:`gradient_entanglement` (Fig. 4): per convolution, ``R = g_cleanᵀ g_adv / ‖g_adv‖²``.
* :func:`task_loss_changes` (Fig. 5 right): ``ΔL_cls`` under A_cls and ``ΔL_loc`` under A_loc.
* :func:`confidence_scores` (Fig. 7c): the scores of the detections above 0.3.
* :func:`pooled_pr_curve` (Fig. 1): one precision-recall curve over all classes.
* :func:`calibrate_loss_change` (the loss-change setting's criterion) and :func:`aid_discrimination`.

Notebook 03 runs them on its models, cached, in :mod:`advlib.papers.robustdet_runs` (figures in
:mod:`advlib.papers.robustdet_plots`).

Every loss is the per-image multibox loss of :mod:`advlib.losses` (``ssd_loss`` of
``multibox_terms``, anchors matched once per batch). Everything runs in eval mode (batch-norm
statistics fixed, RobustDet*'s CFR passes its mean) and restores the model's train/eval mode;
:func:`loss_changes` restores the weights (and any ``.grad``) afterwards, also on an exception.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from advlib.attacks import AttackSpec, attack
from advlib.cache import round_8bit
from advlib.evaluate import _EPS, _match_voc, _prepare
from advlib.losses import cls_loss, loc_loss, match_targets, multibox_terms, ssd_loss
from advlib.models.aaconv import AAConv2d
from advlib.robustness import detect_all
from advlib.utils import eval_mode, model_device, targets_to

#: the three settings of Fig. 3, "train batch → probe batch"
SETTINGS = ("clean→clean", "clean→adv", "adv→clean")


def _check_batch(images: Tensor, targets: Sequence[dict], who: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: images must be [B, 3, H, W], got {tuple(images.shape)}")
    if len(targets) != images.shape[0]:
        raise ValueError(f"{who}: {images.shape[0]} images but {len(targets)} targets")


def _matched(model, targets: Sequence[dict]):
    return match_targets(model, targets_to(model_device(model), list(targets)))


def _per_image_loss(model, images: Tensor, matched) -> Tensor:
    """Multibox loss of every image -> ``[B]`` (with grad when enabled)."""
    return ssd_loss(multibox_terms(model(images.to(model_device(model))), matched))


# ------------------------------------------------------------------------ Fig. 3: loss changes
def loss_changes(model: nn.Module, train_images: Tensor, train_targets: Sequence[dict], probe_images: Tensor,
                 probe_targets: Sequence[dict], steps: int, lr: float) -> Tensor:
    """Fig. 3: the change of every probe image's multibox loss after ``steps`` SGD steps on a
    training batch (the paper's "m-step adversarial training ... observe the loss change on
    another batch").

    The steps are plain ``torch.optim.SGD`` (``lr``, no momentum, no weight decay) on the mean
    multibox loss of the training batch, over every parameter that requires grad (for a
    RobustDetector this includes the discriminator, which the loss reaches through the mixing).
    They run in **eval mode**, so batch-norm statistics stay fixed and only the weights move (the
    paper leaves this to its supplement; eval mode isolates the gradient's effect). The weights
    (a deep copy of the state dict) and any existing ``.grad`` are restored afterwards, also on
    an exception, and the train/eval mode too.

    Args:
        model: a detector.
        train_images, train_targets: the batch the steps learn (``[B, 3, H, W]`` in ``[0, 1]``).
        probe_images, probe_targets: the batch whose loss is watched (``[N, 3, H, W]``).
        steps: number of SGD steps ``m`` (0 gives zeros).
        lr: SGD learning rate.

    Returns:
        ``after - before`` per probe image, ``[N]`` float on the CPU (negative: the steps helped).
    """
    _check_batch(train_images, train_targets, "loss_changes train batch")
    _check_batch(probe_images, probe_targets, "loss_changes probe batch")
    if steps < 0 or lr < 0:
        raise ValueError(f"loss_changes: steps and lr must be >= 0, got {steps} and {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    saved_state = copy.deepcopy(model.state_dict())
    saved_grads = [p.grad for p in params]
    train_m, probe_m = _matched(model, train_targets), _matched(model, probe_targets)
    try:
        with eval_mode(model):
            with torch.no_grad():
                before = _per_image_loss(model, probe_images, probe_m)
            if steps:
                for p in params:
                    p.grad = None
                opt = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
                for _ in range(int(steps)):
                    opt.zero_grad(set_to_none=True)
                    _per_image_loss(model, train_images, train_m).mean().backward()
                    opt.step()
            with torch.no_grad():
                after = _per_image_loss(model, probe_images, probe_m)
    finally:
        model.load_state_dict(saved_state)
        for p, g in zip(params, saved_grads):
            p.grad = g
    return (after - before).detach().cpu()


def loss_change_histograms(model: nn.Module, clean_a: Tensor, adv_a: Tensor, targets_a: Sequence[dict],
                           clean_b: Tensor, adv_b: Tensor, targets_b: Sequence[dict], steps: int,
                           lr: float) -> dict[str, Tensor]:
    """Fig. 3's three panels for one model: :func:`loss_changes` from the same weights for each
    setting (batch ``a`` learned, batch ``b`` probed).

    Args:
        clean_a, adv_a: batch ``a`` clean and adversarial, ``[B, 3, H, W]``; targets_a its truth.
        clean_b, adv_b: batch ``b`` clean and adversarial, ``[N, 3, H, W]``; targets_b its truth.
        steps, lr: as :func:`loss_changes`.

    Returns:
        ``{"clean→clean", "clean→adv", "adv→clean": [N] loss changes}`` (:data:`SETTINGS`).
    """
    runs = {"clean→clean": (clean_a, clean_b), "clean→adv": (clean_a, adv_b), "adv→clean": (adv_a, clean_b)}
    return {name: loss_changes(model, x_a, targets_a, x_b, targets_b, steps, lr) for name, (x_a, x_b) in runs.items()}


# ----------------------------------------------------------------- Fig. 4: gradient entanglement
def conv_layers(model: nn.Module, exclude: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Conv2d`` / :class:`AAConv2d` of ``model`` in module order, as ``(path, module)``,
    leaving out paths that start with one of ``exclude`` (e.g. ``("aid",)``: the discriminator)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, AAConv2d)) and not any(name.startswith(e) for e in exclude)]


def gradient_entanglement(model: nn.Module, clean: Tensor, adv: Tensor, targets: Sequence[dict],
                          exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Fig. 4: the gradient entanglement ``R^{g_clean}_{g_adv} = g_cleanᵀ g_adv / ‖g_adv‖²`` (§3.2)
    of each image's clean and adversarial versions, per convolutional layer.

    For image ``i`` and layer ``l``, ``g_clean`` is the gradient of image ``i``'s multibox loss on
    the clean image with respect to all of ``l``'s parameters (weight and bias, flattened and
    concatenated), ``g_adv`` the same on its adversarial version (same anchor matching). Eval
    mode. Per-image gradients: one forward and one ``torch.autograd.grad`` per image and domain
    (``2N`` backward passes, one autograd call for all layers at once); only ``R`` is kept, so
    memory stays at two gradients. Layers whose parameters the loss does not reach (RobustDet*'s
    log-variance convolution in eval mode) are left out; for a RobustDetector the discriminator's
    convolutions (paths ``aid.…``) come last, after the detector's, unless ``exclude`` drops them.

    Args:
        model: a detector.
        clean, adv: ``[N, 3, H, W]`` in ``[0, 1]``, ``adv[i]`` the adversarial version of ``clean[i]``.
        targets: ground truth per image.
        exclude: module-path prefixes to leave out (see :func:`conv_layers`).

    Returns:
        DataFrame, one row per layer in module order: ``layer`` (module path), ``R_mean`` and
        ``R_std`` (over images with ``‖g_adv‖ > 0``, population std; a coarse map's head gets no
        gradient from an image with no positive or hard-negative anchor on that map), ``n_images``
        (that count; NaN statistics when 0), ``n_params``.
    """
    _check_batch(clean, targets, "gradient_entanglement")
    if adv.shape != clean.shape:
        raise ValueError(f"gradient_entanglement: adv {tuple(adv.shape)} must match clean {tuple(clean.shape)}")
    layers = [(n, [p for p in m.parameters() if p.requires_grad]) for n, m in conv_layers(model, exclude)]
    layers = [(n, ps) for n, ps in layers if ps]
    flat = [p for _, ps in layers for p in ps]
    if not flat:
        raise ValueError("gradient_entanglement: the model has no trainable convolution")
    dev = model_device(model)

    def layer_grads(x: Tensor, matched) -> list[Tensor | None]:
        grads = iter(torch.autograd.grad(_per_image_loss(model, x, matched).sum(), flat, allow_unused=True))
        per_layer = [[next(grads) for _ in ps] for _, ps in layers]
        return [None if all(g is None for g in gs) else  # [n_params of the layer] per layer
                torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for p, g in zip(ps, gs)])
                for (_, ps), gs in zip(layers, per_layer)]

    ratios = []  # per image: [L] R values (NaN where unreached or ‖g_adv‖ = 0)
    reached = np.zeros(len(layers), dtype=bool)
    with eval_mode(model):
        for i in range(clean.shape[0]):
            matched = match_targets(model, targets_to(dev, list(targets[i:i + 1])))
            g_clean, g_adv = layer_grads(clean[i:i + 1], matched), layer_grads(adv[i:i + 1], matched)
            row = []
            for j, (gc, ga) in enumerate(zip(g_clean, g_adv)):
                reached[j] |= gc is not None and ga is not None
                den = float(ga @ ga) if ga is not None else 0.0
                row.append(float(gc @ ga) / den if gc is not None and den > 0 else np.nan)
            ratios.append(row)
    r = pd.DataFrame(np.asarray(ratios, dtype=np.float64).reshape(clean.shape[0], len(layers)))  # [N, L]
    frame = pd.DataFrame({"layer": [name for name, _ in layers], "R_mean": r.mean().to_numpy(),
                          "R_std": r.std(ddof=0).to_numpy(), "n_images": r.count().to_numpy(),
                          "n_params": [sum(p.numel() for p in ps) for _, ps in layers]})
    return frame[reached].reset_index(drop=True)


# ------------------------------------------------------------- Fig. 5 right: task loss changes
def task_loss_changes(model: nn.Module, images: Tensor, targets: Sequence[dict], spec_cls: AttackSpec,
                      spec_loc: AttackSpec, rounding: bool = True) -> pd.DataFrame:
    """Fig. 5 (right): per image ``ΔL_cls = L_cls(A_cls(x)) − L_cls(x)`` and
    ``ΔL_loc = L_loc(A_loc(x)) − L_loc(x)`` (``advlib.losses.cls_loss`` / ``loc_loss``, eval mode).

    The attacks are ``advlib.attacks.attack(model, images, targets, spec)`` (for the paper,
    ``spec_cls`` on objective ``cls`` and ``spec_loc`` on ``loc``), one anchor matching shared
    by the attacks and the losses.

    Args:
        model: a detector.
        images: ``[N, 3, H, W]`` in ``[0, 1]``; targets: ground truth per image.
        spec_cls, spec_loc: the two attacks.
        rounding: round the adversarial images to 8 bits first (the project's rule for every
            evaluated adversarial image, :func:`advlib.cache.round_8bit`).

    Returns:
        DataFrame with one row per image: ``dL_cls``, ``dL_loc``, and the clean losses
        ``L_cls``, ``L_loc``.
    """
    _check_batch(images, targets, "task_loss_changes")
    dev = model_device(model)
    x = images.to(dev)
    t = targets_to(dev, list(targets))
    matched = match_targets(model, t)
    with eval_mode(model):
        advs = [attack(model, x, t, spec, matched=matched) for spec in (spec_cls, spec_loc)]
        if rounding:
            advs = [round_8bit(a.detach()).to(dev) for a in advs]
        with torch.no_grad():
            clean = multibox_terms(model(x), matched)
            a_cls, a_loc = (multibox_terms(model(a), matched) for a in advs)
            l_cls, l_loc = cls_loss(clean), loc_loss(clean)
            d_cls, d_loc = cls_loss(a_cls) - l_cls, loc_loss(a_loc) - l_loc
    cols = {"dL_cls": d_cls, "dL_loc": d_loc, "L_cls": l_cls, "L_loc": l_loc}
    return pd.DataFrame({k: v.detach().cpu().double().numpy() for k, v in cols.items()})


# ----------------------------------------------------- Fig. 7c and Fig. 1: scores, pooled PR
def confidence_scores(model: nn.Module, images: Tensor, score_thresh: float = 0.3,
                      batch_size: int = 64) -> np.ndarray:
    """Fig. 7(c): the confidence of every detection above ``score_thresh`` (0.3 in the paper),
    after the model's per-class NMS (``model.detect(images, score_thresh=...)``).

    Args:
        model: a detector; images: ``[N, 3, H, W]`` in ``[0, 1]``.
        score_thresh: keep scores strictly above it.

    Returns:
        ``[K]`` float64 scores, image by image in detection order.
    """
    if not 0.0 <= float(score_thresh) < 1.0:
        raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh}")
    dev = model_device(model)
    dets = []
    for i in range(0, images.shape[0], batch_size):
        dets.extend(model.detect(images[i:i + batch_size].to(dev), score_thresh=score_thresh))
    parts = [d["scores"].detach().cpu().double().numpy() for d in dets]
    return np.concatenate(parts) if parts else np.zeros(0)


def pooled_pr(detections: Sequence[Mapping], targets: Sequence[Mapping], num_classes: int,
              iou_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """The precision-recall curve of all classes pooled, from detections (see :func:`pooled_pr_curve`).

    Each detection is a TP or FP exactly as in :func:`advlib.evaluate.evaluate_voc` (its matcher,
    ``_match_voc``: per class and image, greedy by score, IoU strictly above ``iou_threshold``,
    detections on difficult boxes ignored); the pooled curve sorts every class's kept detections
    together by descending score (stable in detection order, as evaluate_voc within a class).

    Returns:
        ``{"precision", "recall", "scores"}``, each ``[D]`` float64 in descending-score order;
        ``recall = cumsum(tp) / npos`` over all non-difficult ground-truth boxes (empty arrays
        when there are none).
    """
    det, gt = _prepare(detections, targets, num_classes)
    tp, fp = _match_voc(det, gt, len(targets), float(iou_threshold))
    npos = int((~gt["difficult"]).sum())
    keep = np.flatnonzero(tp | fp)  # drop detections ignored on difficult boxes
    order = keep[np.argsort(-det["scores"][keep], kind="stable")]
    if npos == 0:
        return {"precision": np.zeros(0), "recall": np.zeros(0), "scores": np.zeros(0)}
    ctp, cfp = np.cumsum(tp[order]).astype(np.float64), np.cumsum(fp[order]).astype(np.float64)
    return {"precision": ctp / np.maximum(ctp + cfp, _EPS), "recall": ctp / npos,
            "scores": det["scores"][order].astype(np.float64)}


def pooled_pr_curve(model: nn.Module, images: Tensor, targets: Sequence[dict], num_classes: int,
                    iou_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Fig. 1: the precision-recall curve over all classes pooled, of ``model`` on ``images``
    (clean or adversarial), detections at the model's own score threshold.

    Args: model: a detector; images ``[N, 3, H, W]``; targets: per image; num_classes: ``C``;
        iou_threshold: VOC's 0.5.
    Returns: ``{"precision", "recall", "scores"}``, each ``[D]`` (:func:`pooled_pr`).
    """
    _check_batch(images, targets, "pooled_pr_curve")
    return pooled_pr(detect_all(model, images), targets, num_classes, iou_threshold)


def calibrate_loss_change(model: nn.Module, images: Tensor, targets: Sequence[dict], steps: int,
                          lrs: Sequence[float], fall: float = 0.10) -> tuple[float | None, pd.DataFrame]:
    """Pick the loss-change analysis's learning rate by a criterion fixed in advance: the smallest
    ``lr`` of ``lrs`` at which ``steps`` SGD steps on a batch lower that same batch's mean
    multibox loss by at least ``fall`` (relative), i.e. the smallest setting in which the model
    measurably learns the batch. (The paper leaves ``m`` and the optimiser to its supplement.)

    Args:
        model: the reference model (notebook 03: STD).
        images, targets: the batch learned and watched (``[B, 3, H, W]``).
        steps: SGD steps ``m``.
        lrs: candidate learning rates (tried in increasing order).
        fall: the relative fall of the batch's own mean loss required.

    Returns:
        ``(lr or None when no candidate reaches the fall, table)``: the table has one row per
        candidate with ``loss before``, ``loss after`` and ``fall`` (relative).
    """
    if not lrs or any(lr <= 0 for lr in lrs) or not 0 < fall < 1:
        raise ValueError(f"calibrate_loss_change: need positive lrs and 0 < fall < 1, got {lrs} and {fall}")
    with torch.no_grad(), eval_mode(model):
        before = float(_per_image_loss(model, images, _matched(model, targets)).mean())
    rows, chosen = [], None
    for lr in sorted(lrs):
        change = float(loss_changes(model, images, targets, images, targets, steps, lr).mean())
        rel = -change / before
        rows.append({"lr": lr, "steps": steps, "loss before": before, "loss after": before + change, "fall": rel})
        if chosen is None and rel >= fall:
            chosen = lr
    return chosen, pd.DataFrame(rows)


def aid_discrimination(model: nn.Module, clean_a: Tensor, adv_a: Tensor, clean_b: Tensor, adv_b: Tensor) -> dict:
    """How well a RobustDetector's discriminator tells adversarial from clean images.

    The mixing vectors of batch a (clean and adversarial) give two centroids; every image of batch
    b is called adversarial when its mixing is nearer (squared L2) the adversarial centroid.

    Returns:
        ``{"accuracy": fraction of batch b's 2N images called right (chance 0.5), "js": mean
        :func:`~advlib.models.aid.js_distance_matrix` distance between each batch-b image's
        mixing and its adversarial version's, "clean_max", "adv_max": mean largest mixing weight
        on clean / adversarial images of batch b}``.
    """
    from advlib.models.aid import js_distance_matrix

    if not hasattr(model, "aid"):
        raise ValueError("aid_discrimination needs a model with a discriminator (.aid)")
    dev = model_device(model)
    with torch.no_grad(), eval_mode(model):
        pa_c, pa_a, pb_c, pb_a = (model.aid(x.to(dev)).float().cpu() for x in (clean_a, adv_a, clean_b, adv_b))
    c_clean, c_adv = pa_c.mean(0), pa_a.mean(0)

    def called_adv(p: Tensor) -> Tensor:
        return ((p - c_adv) ** 2).sum(1) < ((p - c_clean) ** 2).sum(1)

    right = torch.cat([~called_adv(pb_c), called_adv(pb_a)]).float().mean()
    js = torch.stack([js_distance_matrix(torch.stack([c, a]))[0, 1] for c, a in zip(pb_c, pb_a)]).mean()
    return {"accuracy": float(right), "js": float(js), "clean_max": float(pb_c.max(1).values.mean()),
            "adv_max": float(pb_a.max(1).values.mean())}


__all__ = ["SETTINGS", "aid_discrimination", "calibrate_loss_change", "confidence_scores", "conv_layers",
           "gradient_entanglement", "loss_change_histograms", "loss_changes", "pooled_pr", "pooled_pr_curve",
           "task_loss_changes"]
