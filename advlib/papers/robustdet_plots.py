"""RobustDet's figures (Dong et al., ECCV 2022): Fig. 3's loss-change histograms, Fig. 4's
gradient entanglement, and Figs. 1, 5 (right) and 7c from :func:`advlib.papers.robustdet_runs.cached_analyses`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from advlib.papers.robustdet_analysis import SETTINGS


def plot_loss_change_histograms(changes: Mapping[str, Mapping[str, Tensor]], ax_grid=None, bins: int = 30):
    """Fig. 3: one row per model, one column per setting (:data:`SETTINGS`); each histogram of the
    per-image loss changes with a line at 0 and the fraction above 0 and the mean in its title.

    Args:
        changes: ``{model name: {setting: [N] loss changes}}`` (:func:`loss_change_histograms`).
        ax_grid: optional ``[len(changes), 3]`` array of axes to draw into.
        bins: histogram bins.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    names = list(changes)
    if ax_grid is None:
        fig, ax_grid = plt.subplots(len(names), len(SETTINGS), figsize=(3.2 * len(SETTINGS), 2.6 * len(names)),
                                    squeeze=False)
    ax_grid = np.asarray(ax_grid).reshape(len(names), len(SETTINGS))
    for r, name in enumerate(names):
        for c, setting in enumerate(SETTINGS):
            ax = ax_grid[r, c]
            v = np.asarray(torch.as_tensor(changes[name][setting]).detach().cpu().double()).reshape(-1)
            ax.hist(v, bins=bins, color="#4363d8" if c == 0 else "#e6194b", alpha=0.8)
            ax.axvline(0.0, color="black", lw=1)
            frac, mean = (float((v > 0).mean()), float(v.mean())) if v.size else (float("nan"), float("nan"))
            ax.set(title=f"{name}: {setting}\n>0: {frac:.0%}, mean {mean:+.3f}", xlabel="loss change")
    fig = ax_grid[0, 0].figure
    fig.tight_layout()
    return fig


def plot_gradient_entanglement(frames: Mapping[str, pd.DataFrame]):
    """Fig. 4: ``R`` per convolutional layer (index in module order), one row of bars per model
    with the std over images as error bars and a line at 0.

    Args: frames: ``{model name: DataFrame}`` from :func:`gradient_entanglement`.
    Returns: the matplotlib Figure (one axis per model).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(frames), 1, figsize=(8, 2.4 * len(frames)), squeeze=False)
    for ax, (name, df) in zip(axes[:, 0], frames.items()):
        idx = np.arange(len(df))
        ax.bar(idx, df["R_mean"], yerr=df["R_std"], color="#3cb44b", ecolor="grey", capsize=2)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set(title=f"{name}: gradient entanglement R per layer", ylabel="R", xticks=idx)
    axes[-1, 0].set_xlabel("convolutional layer (module order)", fontsize=8)
    fig.tight_layout()
    return fig


def plot_confidences_and_pr(analyses: Mapping[str, Mapping]):
    """Fig. 7c (distribution of detection scores above 0.3 on clean, A_cls and A_loc images, one
    box per model and setting), Fig. 1 (pooled precision-recall curves, clean solid and A_cls
    dashed) and Fig. 5 right (mean change of L_cls under A_cls and of L_loc under A_loc).

    Args: analyses: ``{model: analysis}`` from :func:`~advlib.papers.robustdet_runs.cached_analyses`.
    Returns: the matplotlib Figure (three axes).
    """
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.4))
    names = list(analyses)
    settings = ("clean", "A_cls", "A_loc")
    data, pos, labels = [], [], []
    for i, name in enumerate(names):
        for j, s in enumerate(settings):
            data.append(np.asarray(analyses[name]["confidences"][s]))
            pos.append(i * (len(settings) + 1) + j)
            labels.append(f"{name}\n{s}")
    a1.boxplot([d if d.size else np.array([np.nan]) for d in data], positions=pos, widths=0.7, showfliers=False)
    a1.set_xticks(pos, labels, fontsize=6, rotation=90)
    a1.set(ylabel="score (> 0.3)", title="Fig. 7c: detection confidences")
    for k, name in enumerate(names):
        color = f"C{k}"
        for s, ls in (("clean", "-"), ("A_cls", "--")):
            pr = analyses[name]["pr"][s]
            a2.plot(pr["recall"], pr["precision"], ls, color=color, label=f"{name} {s}")
    a2.set(xlabel="recall", ylabel="precision", title="Fig. 1: pooled PR curves", xlim=(0, 1), ylim=(0, 1.02))
    a2.legend(fontsize=6)
    width = 0.38
    idx = np.arange(len(names))
    a3.bar(idx - width / 2, [analyses[n]["task_changes"]["dL_cls"].mean() for n in names], width, label="ΔL_cls under A_cls")
    a3.bar(idx + width / 2, [analyses[n]["task_changes"]["dL_loc"].mean() for n in names], width, label="ΔL_loc under A_loc")
    a3.set_xticks(idx, names, fontsize=7)
    a3.set(title="Fig. 5 (right): task-loss change under attack", ylabel="mean loss change")
    a3.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["plot_confidences_and_pr", "plot_gradient_entanglement", "plot_loss_change_histograms"]
