"""Notebook 05's figures: relevance maps of several detectors for the same image (Fig. 1/5), black-box
mAP against ε (Fig. 7), and one image's relevance map and detections over RAD's iterations (Fig. 8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from torch import Tensor

from advlib.plots import draw_boxes


def _show_map(ax, m: Tensor, title: str) -> None:
    """A signed relevance map ``[H, W]`` on a symmetric red (positive) / blue (negative) scale."""
    lim = float(m.abs().max()) or 1.0
    ax.imshow(m.detach().cpu().numpy(), cmap="bwr", vmin=-lim, vmax=lim)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def plot_relevance_maps(image: Tensor, maps: Mapping[str, Tensor], similarity: pd.DataFrame | None = None):
    """Fig. 1/5: the image and each model's relevance map of it (``maps``: name -> ``[H, W]``),
    with the mean same-image / chance rank correlations in the title when given."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.4 * (len(maps) + 1), 2.6))
    draw_boxes(axes[0], image, title="image")
    for ax, (name, m) in zip(axes[1:], maps.items()):
        _show_map(ax, m, name)
    if similarity is not None and len(similarity):
        fig.suptitle(f"rank correlation of two models' maps: same image {similarity['same_image'].mean():.2f}, "
                     f"different images (chance) {similarity['chance'].mean():.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_eps_curve(curve: pd.DataFrame, white_box: Sequence[str] = (), ax=None):
    """Fig. 7: mAP of every model (columns) against ε in pixel levels (index); white-box dashed."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    for name in curve.columns:
        ax.plot(curve.index, curve[name], marker="o", ls="--" if name in set(white_box) else "-",
                label=f"{name} (white-box)" if name in set(white_box) else name)
    ax.set_xlabel("ε (pixel levels, /255)")
    ax.set_ylabel("mAP@0.5")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    return ax.figure


def plot_iterations(frames: Sequence[dict], classes: Sequence[str]):
    """Fig. 8: per iteration (``frames``: dicts with ``step``, ``image [3, H, W]``, ``detections``
    and ``map [H, W]``) the detections (top row) and the relevance map (bottom row)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(frames), figsize=(2.1 * len(frames), 4.4), squeeze=False)
    for k, f in enumerate(frames):
        d = f["detections"]
        draw_boxes(axes[0, k], f["image"], d["boxes"], d["labels"], d["scores"], classes,
                   title=f"step {f['step']}: {int((d['scores'] >= 0.3).sum())} boxes ≥ 0.3")
        _show_map(axes[1, k], f["map"], "relevance")
    fig.tight_layout()
    return fig


__all__ = ["plot_eps_curve", "plot_iterations", "plot_relevance_maps"]
