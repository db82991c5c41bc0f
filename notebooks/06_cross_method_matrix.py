# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · The cross-method matrix and the reproduction scorecard
#
# Each paper compares its defence with one or two others under its own attacks and settings, so their tables cannot be read side by side. Here every model of notebooks 00-04 meets every attack under one spec per column, on one dataset and one set of images, with the spread over seeds where a recipe was trained with several; then clean against adversarial mAP (the "robustness bottleneck"), what each recipe costs to train, and every notebook's claims in one scorecard.
#
# **Where the models come from.** `advlib.papers.catalogue`: each model exactly as its notebook trains it, looked up in the model cache. Nothing is trained here: a model its notebook has not trained under this profile and data is a *missing* row, never replaced by a stand-in. Run notebooks 00-05 first (`make reproduce` does).
#
# **Columns** (`advlib.papers.matrix.attacks`, each spec printed below and stored with every cell): white-box FGSM and PGD on the classification loss, PGD on the localisation loss, MTD's MDA, CWAT's CWA, DAG and RAP, all at ε = 8/255 with notebooks 01/02's specs (so the result cache shares their cells); RAD with SI (notebook 05's Table 3 row, 16/255) crafted once on notebook 05's SSD surrogate, the STD model of this run's seed (its own row is therefore white-box), and transferred to every other row: the set is notebook 05's own (crafted on its evaluation images, which begin with this notebook's; the adversarial-set cache gives it to both), of which every row is evaluated on the images above; and the *adaptive* attack where a model has one: MagNet's white-box columns are crafted on the detector it protects (the paper's grey-box setting), its adaptive column runs the same PGD A_cls through the reformer. "Points" are 0.01 mAP.

# %% tags=["parameters"]
import os
profile = os.environ.get("ADVLIB_PROFILE", "default")  # smoke | default | voc | coco
data_root = None      # None: the generated shapes dataset; else a VOC (year folder or VOCdevkit) or COCO root
data_format = "voc"   # voc | coco
classes = None        # None: from the data (classes.txt, VOC names, COCO categories); or "a,b,c"
device = "auto"       # auto picks CUDA when present
seed = 0
train_split = None    # None: auto-detect the splits (trainval/test, train/val, train/test); else a split name
test_split = None     # None: auto-detect (with train_split); else a split name
year = None           # VOC year (e.g. "2007") when data_root holds a VOCdevkit
image_size = None     # None: the profile's input size; else the side in pixels (e.g. 300)

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from advlib.experiment import setup
from advlib.paths import display_path
from advlib.papers import catalogue, matrix, matrix_claims, matrix_plots
from advlib.profiles import get_budget
from advlib.results import gate_claims, output_dir, scorecard
from advlib.robustness import Transfer

t_start = time.perf_counter()
exp = setup(profile=profile, data_root=data_root, data_format=data_format, classes=classes, device=device,
            seed=seed, train_split=train_split, test_split=test_split, year=year, image_size=image_size)
budget, mb = get_budget(exp.profile), matrix.budget(exp.profile.name)
images, targets = exp.eval_data
n_images = mb.images or budget.table_images
x, t = images[:n_images], targets[:n_images]
note = (f"Evaluated on the first {len(t)} of {len(exp.test_set)} test images"
        + (" (notebooks 01-03's table images)" if n_images == budget.table_images else "") + f"; seeds {list(budget.seeds)}")
print(note)

# %% [markdown]
# ## The rows: every model of notebooks 00-04
# Named by how they were trained (the training attack and its steps in the name); the seeds found in the model cache; missing rows with the reason.

# %%
per_seed, missing = matrix.models(exp, budget.seeds)
entries = catalogue.entries(exp.profile.name)
order = [e.name for e in entries]
rows_info = pd.DataFrame({"notebook": [e.notebook for e in entries], "training": [e.training for e in entries],
                          "seeds": [", ".join(str(s) for s, f in per_seed.items() if e.name in f) or "-" for e in entries],
                          "missing": [missing.get(e.name, "") for e in entries]}, index=order)
with pd.option_context("display.max_colwidth", 90):
    display(rows_info)

# %% [markdown]
# ## 1. The matrix: mAP@0.5, mean ± std over seeds
# Every cell of every seed (each seed's models against the same images and specs); `n` seeds per row. `missing`: the row's notebook has not trained it; `n/a`: the column does not apply to the row (the adaptive attack exists only for MagNet).

# %%
attacks = matrix.attacks(exp)
print({c: (a.spec.label() + f" (transfer from {a.source})" if isinstance(a, Transfer) else a.label())
       for c, a in attacks.items() if a is not None})
cells = matrix.compute(exp, per_seed, x, t)
columns = [*attacks, *(["adaptive"] if any(c["attack"] == "adaptive" for c in cells) else [])]
summary = matrix.summary(cells, order, columns)
table = summary["text"].assign(n=summary["n"].max(axis=1).fillna(0).astype(int))
print(note)
display(table)
wb = matrix.white_box_surrogate(cells)
if wb is not None:
    print(f"RAD on the surrogate itself (STD, seed {wb['seed']}; white-box, left out of the STD row's transfer column): {wb['map']:.3f}")
print("MagNet's white-box columns are crafted on the detector it protects; its adaptive column attacks through the reformer.")
print(f"cells computed {sum(not c['result_cached'] for c in cells)} of {len(cells)} (the others from the result cache, "
      f"shared with notebooks 01-05), attack seconds {sum(c['seconds'] for c in cells if not c['result_cached']):.0f}")

# %% [markdown]
# Every row of seed 0 is STD or fine-tuned from it, and STD of seed 0 is RAD's surrogate: for those rows RAD is a transfer from the model's own parent. The rows trained with other seeds too (fine-tuned from other STD models) show how much that kinship matters.

# %%
display(matrix.surrogate_kinship(cells, exp.seed).round(3))

# %% [markdown]
# The papers' numbers for the same rows and columns (VOC07, SSD-VGG16 at 300 px; each cell from the first of MTD Table 2, CWAT Table 1, RobustDet Table 1 that reports it; RobustDet's table uses PGD-20). Our rows trained with fewer attack steps than the paper carry the step count in their name.

# %%
paper, paper_source = matrix.paper_matrix(order, columns, exp.profile.name)
display(paper.dropna(how="all").round(3))
print("sources:", sorted({s for s in paper_source.to_numpy().ravel() if s}))

# %%
fig = matrix_plots.plot_heatmap(summary["mean"], summary["std"], missing,
                                f"{exp.profile.name}: mAP@0.5 on {len(t)} test images (mean ± std over seeds)")
print("saved", exp.save_figure(fig, "06_matrix_heatmap"))
plt.show()
csv = pd.concat([summary["mean"].round(4), summary["std"].round(4).add_suffix(" std")], axis=1).assign(seeds=summary["n"].max(axis=1))
csv_path = output_dir("results", exp.output) / "06_matrix.csv"
csv.to_csv(csv_path)
print("wrote", display_path(csv_path))

# %% [markdown]
# ## 2. The trade-off: clean against mean adversarial mAP
# Mean adversarial mAP: the mean over the attack columns (not clean, not adaptive) of a row's mean over seeds. The Pareto front (red) holds the rows no other row beats in both; MagNet's columns are grey-box (crafted on the detector it protects), so it is drawn in grey and kept off the front.

# %%
mean_adv = matrix.mean_adversarial(summary["mean"])
front = matrix.pareto_front(summary["mean"]["clean"], mean_adv, exclude=matrix.ADAPTIVE)
display(pd.DataFrame({"clean": summary["mean"]["clean"], "mean adversarial": mean_adv, "Pareto front": front}).dropna(subset=["clean"]).round(3))
fig = matrix_plots.plot_tradeoff(summary["mean"]["clean"], mean_adv, front, matrix.ADAPTIVE, "clean vs mean adversarial mAP")
print("saved", exp.save_figure(fig, "06_tradeoff"))
plt.show()

# %% [markdown]
# ## 3. Training cost beside robustness
# Every recipe fine-tunes a copy of the cached STD model for `cost_epochs` epochs on the first `cost_images` images of the data it trains on (fast recipes: `cost_epochs / m` epochs of m replays), one after the other in one process: wall time per epoch and per iteration, forward and backward passes per iteration counted as they ran. Not a retraining: a short instrumented run (kept in the result cache with its date); its iterations are over the `cost_images` images (a smaller batch than training's where `cost_images` is below the batch size), so read the seconds as ratios between recipes. MTD-PGD10 is timed although no notebook trains it.

# %%
cost = matrix.training_cost(exp, mb)
cost["mean adversarial"] = mean_adv.reindex(cost.index)
print(f"measured {cost.attrs['measured']} on {cost.attrs['images']} training images; not timed:", cost.attrs["skipped"] or "none")
display(cost[["epochs", "iterations", "seconds_per_epoch", "seconds_per_iter", "forward_per_iter",
              "backward_per_iter", "mean adversarial"]].round(3))
fig = matrix_plots.plot_cost(cost, mean_adv, "training cost against robustness")
print("saved", exp.save_figure(fig, "06_cost"))
plt.show()

# %% [markdown]
# ## 4. The scorecard: every claim of notebooks 01-05, and the matrix's own
# Verdicts as each notebook computed them from its run's numbers (`results/0N_*.json`); the matrix's three cross-method claims are computed here (`advlib.papers.matrix_claims.claims`, thresholds fixed in the module), gated by the profile's clean-mAP floor like every notebook's. Rendered to `SCORECARD.md` in this run's results folder.

# %%
spread = matrix_claims.seed_spread(cells)
std_clean = summary["mean"].loc["STD", "clean"] if "STD" not in missing else float("nan")
own = gate_claims(matrix_claims.claims(summary["mean"], spread), float(std_clean), exp.profile.clean_map_floor)
with pd.option_context("display.max_colwidth", 120):
    display(scorecard(own).assign(note=[c.untestable or c.note for c in own]))
folder = output_dir("results", exp.output)
card, status = matrix_claims.collect(folder, exp.profile.name)
card = pd.concat([card, matrix_claims.card_rows([c.to_dict() for c in own], "cross-method", "06")], ignore_index=True)
counts = matrix_claims.counts(card)
print("notebooks:", status, "| counts:", counts)
with pd.option_context("display.max_colwidth", 120):
    display(card[["paper", "claim", "verdict"]])
md = matrix_claims.render(card, status, exp.profile.name)
(folder / "SCORECARD.md").write_text(md)
print("wrote", display_path(folder / "SCORECARD.md"))

# %% [markdown]
# ## 5. Reading the matrix
# Written from the numbers above.

# %%
display(Markdown(matrix_claims.reading(summary["mean"], front, spread)))

# %%
results = {"notebook": "06_cross_method_matrix", "profile": exp.profile.to_dict(), "budget": budget.__dict__,
           "matrix_budget": mb.__dict__, "seed": seed, "note": note,
           "columns": {c: None if a is None else (a.spec.to_dict() | {"transfer_from": a.source} if isinstance(a, Transfer)
                                                  else a.to_dict()) for c, a in attacks.items()},
           "tables": {"matrix": {"mean": summary["mean"], "std": summary["std"], "n": summary["n"],
                                 "text": summary["text"], "cells": cells, "missing": missing},
                      "paper": {"values": paper, "source": paper_source},
                      "tradeoff": {"mean_adversarial": mean_adv, "pareto_front": front},
                      "surrogate": {"white_box": wb, "kinship": matrix.surrogate_kinship(cells, exp.seed)},
                      "training_cost": {"table": cost, "measured": cost.attrs["measured"], "skipped": cost.attrs["skipped"]},
                      "scorecard": {"claims": card, "counts": counts, "notebooks": status}},
           "claims": [c.to_dict() for c in own], "seconds": time.perf_counter() - t_start}
print("wrote", exp.save_json(results, "06_matrix.json"))
