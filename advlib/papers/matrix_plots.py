"""Notebook 06's figures: the matrix as a heat-map, clean against mean adversarial mAP with the
Pareto front, and training cost beside robustness."""

from __future__ import annotations

import numpy as np
import pandas as pd


def plot_heatmap(mean: pd.DataFrame, std: pd.DataFrame, missing: dict[str, str], title: str = ""):
    """Models × attacks mAP (mean over seeds, ``±std`` under it where there are several seeds);
    missing rows hatched grey and labelled, cells that do not apply left white."""
    import matplotlib.pyplot as plt

    values = mean.astype(float).to_numpy()
    fig, ax = plt.subplots(figsize=(1.0 * mean.shape[1] + 3, 0.42 * mean.shape[0] + 1.2))
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=max(0.8, np.nanmax(values)),
                   aspect="auto")
    for i, m in enumerate(mean.index):
        if m in missing:
            ax.axhspan(i - 0.5, i + 0.5, color="0.85", hatch="//", zorder=0)
            ax.text(mean.shape[1] / 2 - 0.5, i, "missing: " + missing[m], ha="center", va="center", fontsize=6.5)
            continue
        for j, c in enumerate(mean.columns):
            v, s = values[i, j], std.loc[m, c]
            if np.isnan(v):
                continue
            label = f"{v:.2f}" + ("" if pd.isna(s) else f"\n±{s:.2f}")
            ax.text(j, i, label, ha="center", va="center", fontsize=6.5, color="white" if v < 0.45 else "black")
    ax.set_xticks(range(mean.shape[1]), mean.columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(mean.shape[0]), mean.index, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03, label="mAP@0.5")
    ax.set_title(title, fontsize=9)
    return fig


def plot_tradeoff(clean: pd.Series, adversarial: pd.Series, front: pd.Series, grey=(), title: str = ""):
    """Clean against mean adversarial mAP, one point per model, the Pareto front joined; ``grey``
    rows (grey-box numbers) drawn in grey and labelled so."""
    import matplotlib.pyplot as plt

    ok = clean.notna() & adversarial.notna()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = ["0.6" if m in grey else "tab:red" if front[m] else "tab:blue" for m in clean[ok].index]
    ax.scatter(clean[ok], adversarial[ok], c=colours, s=22)
    for m in clean[ok].index:
        ax.annotate(m + (" (grey-box)" if m in grey else ""), (clean[m], adversarial[m]), fontsize=6.5,
                    xytext=(3, 2), textcoords="offset points")
    f = front[front & ok].index
    order = clean[f].sort_values().index
    ax.plot(clean[order], adversarial[order], "r--", lw=1, label="Pareto front")
    ax.set_xlabel("clean mAP@0.5")
    ax.set_ylabel("mean adversarial mAP@0.5")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def plot_cost(cost: pd.DataFrame, adversarial: pd.Series, title: str = ""):
    """Seconds per training iteration (log scale) against mean adversarial mAP, per recipe."""
    import matplotlib.pyplot as plt

    names = [m for m in cost.index if m in adversarial.index and pd.notna(adversarial[m])]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.scatter(cost.loc[names, "seconds_per_iter"], adversarial[names], s=22)
    for m in names:
        ax.annotate(f"{m} ({cost.loc[m, 'backward_per_iter']:g} bwd/it)", (cost.loc[m, "seconds_per_iter"], adversarial[m]),
                    fontsize=6.5, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per training iteration (instrumented run)")
    ax.set_ylabel("mean adversarial mAP@0.5")
    ax.set_title(title, fontsize=9)
    return fig
