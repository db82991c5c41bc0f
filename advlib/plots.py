"""Figures the notebooks share: images with boxes, dataset statistics (CWAT Fig. 4 style),
precision-recall curves, per-class AP charts that stay readable with 80 classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from advlib.evaluate import VOCResult

_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
            "#bfef45", "#fabed4", "#469990", "#9a6324", "#800000", "#808000", "#000075"]


def draw_boxes(ax, image: Tensor, boxes=None, labels=None, scores=None, classes: Sequence[str] = (),
               score_thresh: float = 0.3, title: str | None = None) -> None:
    """Show ``image [3, H, W]`` with xyxy ``boxes``; ``scores`` below ``score_thresh`` are hidden."""
    import matplotlib.patches as patches

    ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())  # [3,H,W] -> [H,W,3]
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    if boxes is None:
        return
    boxes = np.asarray(boxes.detach().cpu() if hasattr(boxes, "detach") else boxes).reshape(-1, 4)
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).reshape(-1)
    sc = None if scores is None else np.asarray(scores.cpu() if hasattr(scores, "cpu") else scores).reshape(-1)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if sc is not None and sc[i] < score_thresh:
            continue
        colour = _COLOURS[int(lab) % len(_COLOURS)]
        ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=1.2, ec=colour))
        name = classes[int(lab) - 1] if classes and 0 < int(lab) <= len(classes) else str(int(lab))
        text = name if sc is None else f"{name} {sc[i]:.2f}"
        ax.text(b[0], b[1], text, fontsize=6, color="white", va="bottom",
                bbox={"facecolor": colour, "alpha": 0.7, "pad": 0.5, "lw": 0})


def image_grid(images: Tensor, targets: Sequence[dict], classes: Sequence[str], ncols: int = 4,
               titles: Sequence[str] | None = None, score_thresh: float = 0.3, size: float = 2.4,
               dpi: float = 56):
    """A figure of images with their boxes (ground truth, or detections when ``scores`` exist).

    ``dpi`` is the on-screen (inline) resolution, about one screen pixel per image pixel of the
    default input: noisy images make large PNGs, and an executed notebook holds every one of
    them. Saved figures keep their own resolution (:func:`advlib.results.save_figure`)."""
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, dpi=dpi)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        t = targets[i]
        draw_boxes(axes.flat[i], images[i], t.get("boxes"), t.get("labels"), t.get("scores"), classes,
                   score_thresh, None if titles is None else titles[i])
    fig.tight_layout()
    return fig


def dataset_statistics(dataset) -> dict[str, np.ndarray]:
    """Objects per image, distinct classes per image and objects per class (from annotations only)."""
    n_obj, n_cls = [], []
    per_class = np.zeros(len(dataset.classes), dtype=np.int64)
    for i in range(len(dataset)):
        labels = np.asarray(dataset.annotation(i)["labels"])
        n_obj.append(len(labels))
        n_cls.append(len(set(labels.tolist())))
        np.add.at(per_class, labels - 1, 1)
    return {"objects_per_image": np.array(n_obj), "classes_per_image": np.array(n_cls),
            "objects_per_class": per_class}


def plot_dataset_statistics(stats: dict[str, np.ndarray], classes: Sequence[str]):
    """Histograms of objects and classes per image (CWAT Fig. 4) and the class frequencies."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key, title in ((axes[0], "objects_per_image", "objects per image"),
                           (axes[1], "classes_per_image", "classes per image")):
        v = stats[key]
        ax.hist(v, bins=np.arange(v.min(), v.max() + 2) - 0.5, color="#4363d8", rwidth=0.85)
        ax.set_xlabel(title)
        ax.set_ylabel("images")
    order = np.argsort(-stats["objects_per_class"])
    axes[2].bar([classes[i] for i in order], stats["objects_per_class"][order], color="#f58231")
    axes[2].set_ylabel("objects")
    axes[2].tick_params(axis="x", rotation=60, labelsize=7)
    axes[2].set_title("class frequency (long tail)")
    fig.tight_layout()
    return fig


def plot_pr_curves(result: "VOCResult", ax: Any = None, classes: Sequence[int | str] | None = None) -> Any:
    """Draw per-class precision-recall curves.

    Args:
        result: output of :func:`advlib.evaluate.evaluate_voc`.
        ax: matplotlib Axes to draw on (a new figure if None).
        classes: labels (``1..C``) or class names to draw; default every class with ground truth.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    n, names = len(result.class_names), list(result.class_names)
    if classes is None:
        chosen = [k for k in range(n) if result.npos[k] > 0]
    else:
        chosen = []
        for c in classes:
            if isinstance(c, str) and c in names:
                chosen.append(names.index(c))
            elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 1 <= c <= n:
                chosen.append(int(c) - 1)
            else:
                raise ValueError(f"classes entries must be labels in 1..{n} or names in {names}, got {c!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for k in chosen:
        ap = result.ap[k]
        label = f"{result.class_names[k]} (AP={'n/a' if np.isnan(ap) else f'{ap:.3f}'})"
        ax.plot(result.recall[k], result.precision[k], drawstyle="steps-post", label=label)
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.05), xlabel="recall", ylabel="precision",
           title=f"PR curves (IoU > {result.iou_threshold:g})")
    if chosen:
        ax.legend(loc="lower left", fontsize="small")
    return ax


def plot_per_class_ap(table, ax: Any = None, max_classes: int = 24, notes: dict | None = None) -> Any:
    """A per-class AP bar chart that stays readable with many classes (COCO's 80): with more than
    ``max_classes`` classes only the top and bottom ``max_classes // 2`` by the first column are
    drawn (the title says so; the full table belongs in the results file).

    Args:
        table: DataFrame, classes × columns (e.g. clean, attacked) of AP values.
        ax: matplotlib Axes (a new figure if None).
        max_classes: most classes drawn.
        notes: ``{class: text}`` drawn beside a bar (e.g. "no training objects").

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    shown = table
    title = "per-class AP"
    if len(table) > max_classes:
        order = table.iloc[:, 0].sort_values(ascending=False, na_position="last")
        half = max_classes // 2
        shown = table.loc[list(order.index[:half]) + list(order.index[-half:])]
        title += f" (top and bottom {half} of {len(table)} classes)"
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(shown)), 3.2))
    shown.plot.bar(ax=ax, width=0.8, rot=60)
    ax.set_ylabel("AP@0.5")
    ax.set_title(title)
    for i, name in enumerate(shown.index):
        if notes and name in notes:
            ax.annotate(notes[name], (i, 0.02), rotation=90, fontsize=7, ha="center", va="bottom")
    ax.tick_params(axis="x", labelsize=7)
    return ax
