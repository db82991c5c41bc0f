"""Analyses behind MTD's figures: mutual impact of task losses (Fig. 3a), task-gradient
alignment (Fig. 3b) and the task domains seen through t-SNE (Fig. 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from advlib.attacks import AttackSpec, attack, fgsm
from advlib.losses import batched_box_iou, cls_loss, loc_loss, match_anchors, multibox_terms, pad_targets
from advlib.cache import ResultCache, data_fingerprint, model_fingerprint
from advlib.robustness import _to, adversarial_images


@torch.no_grad()
def candidate_anchor_metrics(model, images: Tensor, targets: list[dict], iou_thresh: float = 0.5,
                             batch_size: int = 64) -> dict[str, float]:
    """MTD Fig. 3a: on candidate anchors (prior box IoU > ``iou_thresh`` with a ground truth),
    classification accuracy (argmax class == ground-truth class) and mean IoU between the decoded
    box and that ground truth, before NMS.

    Returns:
        ``{"accuracy", "mean_iou", "candidates"}``.
    """
    was = model.training
    model.eval()
    correct, iou_sum, n = 0.0, 0.0, 0
    dev = next(model.parameters()).device
    try:
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(dev)
            gt_boxes, gt_labels = pad_targets(targets[i:i + batch_size], dev)  # [B, M, 4], [B, M]
            prior_iou = batched_box_iou(gt_boxes, model.anchors)  # [B, M, A]
            prior_iou = torch.where(gt_labels[..., None] > 0, prior_iou, torch.full_like(prior_iou, -1.0))
            best, obj = prior_iou.max(1)  # [B, A]
            cand = best > iou_thresh
            out = model(x)
            pred = out.cls_logits.argmax(-1)
            label = gt_labels.gather(1, obj)
            boxes = model.decode(out.box_deltas)  # [B, A, 4]
            gt_for_anchor = gt_boxes.gather(1, obj[..., None].expand(-1, -1, 4))  # [B, A, 4]
            iou = batched_box_iou(boxes.unsqueeze(2), gt_for_anchor.unsqueeze(2))  # [B, A, 1, 1]
            iou = iou.squeeze(-1).squeeze(-1)  # [B, A]
            correct += float(((pred == label) & cand).sum())
            iou_sum += float((iou * cand).sum())
            n += int(cand.sum())
    finally:
        model.train(was)
    return {"accuracy": correct / max(n, 1), "mean_iou": iou_sum / max(n, 1), "candidates": n}


def task_gradients(model, images: Tensor, targets: list[dict]) -> tuple[Tensor, Tensor]:
    """Input gradients of the classification and localisation losses (MTD Fig. 3b).

    Returns:
        ``(g_cls, g_loc)``, each ``[B, 3, H, W]``.
    """
    was = model.training
    model.eval()
    try:
        # one matching and one forward pass; each task loss is differentiated from the same graph
        matched = match_anchors(model.anchors, targets, model.box_coder)
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            terms = multibox_terms(model(x), matched)
            (g_cls,) = torch.autograd.grad(cls_loss(terms).sum(), x, retain_graph=True)
            (g_loc,) = torch.autograd.grad(loc_loss(terms).sum(), x)
        grads = [g_cls.detach(), g_loc.detach()]
    finally:
        model.train(was)
    return grads[0], grads[1]


def gradient_cosine(g_a: Tensor, g_b: Tensor) -> Tensor:
    """Per-image cosine similarity of two gradient batches -> ``[B]``."""
    a, b = g_a.flatten(1), g_b.flatten(1)  # [B, 3*H*W]
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


def task_interaction(model, images: Tensor, targets: list[dict], eps: float = 8 / 255,
                     result_cache: ResultCache | bool | None = None) -> dict[str, dict[str, float]]:
    """MTD Fig. 3a: :func:`candidate_anchor_metrics` on clean images and under one-step A_cls and
    A_loc (FGSM of size ``eps``, no random start), kept in the result cache.

    Returns:
        ``{"clean" | "A_cls" | "A_loc": {"accuracy", "mean_iou", "candidates"}}`` plus ``"spec"``.
    """
    specs = {"A_cls": fgsm("cls", eps), "A_loc": fgsm("loc", eps)}

    def compute() -> dict:
        out = {"clean": candidate_anchor_metrics(model, images, targets)}
        for name, spec in specs.items():
            x = adversarial_images(model, images, targets, spec, progress=False)
            out[name] = candidate_anchor_metrics(model, x, targets)
        out["spec"] = {k: v.to_dict() for k, v in specs.items()}
        return out

    return ResultCache.resolve(result_cache).cached(compute, kind="task_interaction", model=model_fingerprint(model),
                                              eps=eps, data=data_fingerprint(images, targets))


def gradient_cosines(model, images: Tensor, targets: list[dict], batch_size: int = 16,
                     result_cache: ResultCache | bool | None = None) -> Tensor:
    """MTD Fig. 3b over a set: per-image cosine of the two task gradients -> ``[N]`` (cached)."""
    dev = next(model.parameters()).device

    def compute() -> list[float]:
        cos = []
        for i in range(0, images.shape[0], batch_size):
            g_cls, g_loc = task_gradients(model, images[i:i + batch_size].to(dev), _to(dev, targets[i:i + batch_size]))
            cos.append(gradient_cosine(g_cls, g_loc).cpu())
        return torch.cat(cos).tolist() if cos else []

    return torch.tensor(ResultCache.resolve(result_cache).cached(compute, kind="gradient_cosines",
                                                                 model=model_fingerprint(model),
                                                                 data=data_fingerprint(images, targets)))


@dataclass
class TaskDomains:
    """Adversarial examples of one image from many random starts, per task loss, and their t-SNE."""

    perturbations: np.ndarray  # [2n, 3*H*W] (x_adv - x), A_cls first
    task: np.ndarray  # [2n] 0 = cls, 1 = loc
    embedding: np.ndarray  # [2n, 2]
    knn_accuracy: float  # leave-one-out k-NN accuracy of the task label in the full space
    knn_accuracy_2d: float  # same, in the t-SNE plane
    spec: dict


def task_domains(model, image: Tensor, target: dict, spec: AttackSpec, n: int = 32, k: int = 5,
                 seed: int = 0) -> TaskDomains:
    """MTD Fig. 4: ``n`` A_cls and ``n`` A_loc examples of one image from random starts (a seeded
    generator per start), embedded with t-SNE, and how separable the two sets are (k-NN accuracy).
    """
    from sklearn.manifold import TSNE
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    if n < k + 1:
        raise ValueError(f"need n > k ({n} <= {k})")
    x = image.unsqueeze(0).expand(n, -1, -1, -1).contiguous()
    tg = [target] * n
    perts = []
    for t, name in enumerate(("cls", "loc")):
        gens = [torch.Generator().manual_seed(seed * 10_000 + t * 1_000 + i) for i in range(n)]
        adv = attack(model, x, tg, spec.replace(objective=name, random_start=True), generators=gens)
        perts.append((adv - x).flatten(1).cpu().numpy())
    feats = np.concatenate(perts)
    labels = np.repeat([0, 1], n)
    emb = TSNE(n_components=2, perplexity=min(30.0, n - 1), init="pca", random_state=seed).fit_transform(feats)
    knn = KNeighborsClassifier(n_neighbors=k)
    acc_full = float(cross_val_score(knn, feats, labels, cv=min(5, n)).mean())
    acc_2d = float(cross_val_score(knn, emb, labels, cv=min(5, n)).mean())
    return TaskDomains(feats, labels, emb, acc_full, acc_2d, spec.replace(objective="cls|loc").to_dict())
