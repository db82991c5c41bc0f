# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Baseline: the dataset, the standard SSD (STD), clean mAP and one attack
#
# Every later notebook starts from what this one shows: the data (generated shapes in VOC layout by default, or your own VOC/COCO data through `data_root`), the standard detector trained through the model zoo (trained once, cached in `data/cache/`), its clean VOC mAP@0.5, and how a 10-step PGD attack on the classification loss at ε = 8/255 collapses it, as the papers report for SSD on VOC (MTD Table 2: 72.1 → 1.5 mAP).

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
import json, time
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from advlib.experiment import Experiment
from advlib.results import save_figure, save_json, check, scorecard

torch.set_num_threads(max(1, torch.get_num_threads()))
t_start = time.perf_counter()
exp = Experiment(profile=profile, data_root=data_root, data_format=data_format, classes=classes,
                 device=device, seed=seed)
print(f"profile {exp.profile.name}: {len(exp.train_set)} train / {len(exp.test_set)} test images, "
      f"{exp.num_classes} classes, {exp.profile.image_size} px, backbone {exp.profile.backbone}, device {exp.device}")

# %% [markdown]
# ## The dataset at a glance
# Example training images with their boxes, and the statistics CWAT's Fig. 4 shows for VOC/COCO: objects and distinct classes per image, and a long-tailed class frequency.

# %%
from advlib.data import collate
from advlib.plots import dataset_statistics, image_grid, plot_dataset_statistics

ex_images, ex_targets = collate([exp.train_set[i] for i in range(8)])
fig = image_grid(ex_images, ex_targets, exp.classes, ncols=4)
save_figure(fig, "00_dataset_examples", exp.profile.name)
plt.show()
stats = dataset_statistics(exp.train_set)
fig = plot_dataset_statistics(stats, exp.classes)
save_figure(fig, "00_dataset_statistics", exp.profile.name)
plt.show()
print(f"objects per image: mean {stats['objects_per_image'].mean():.2f}, max {stats['objects_per_image'].max()}; "
      f"images with >= 2 classes: {(stats['classes_per_image'] >= 2).mean():.0%}; "
      f"most/least frequent class: {stats['objects_per_class'].max() / max(1, stats['objects_per_class'].min()):.1f}x")

# %% [markdown]
# ## The standard detector (STD)
# Trained through the zoo: the first run trains and caches it, every later run (and every other notebook) loads it.

# %%
t0 = time.perf_counter()
std = exp.model("std")
meta = exp.last_meta
hist = pd.DataFrame(meta.get("history", []))
print(f"STD ready in {time.perf_counter() - t0:.1f} s (cache key {meta['key']}; "
      f"trained in {meta.get('train_seconds', float('nan')):.0f} s when it was trained)")
if len(hist):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(hist["epoch"], hist["loss"], marker="o")
    ax.set_xlabel("epoch"); ax.set_ylabel("training loss (multibox)"); ax.set_title("STD training")
    save_figure(fig, "00_std_training", exp.profile.name)
    plt.show()

# %% [markdown]
# ## Clean mAP@0.5 and per-class AP
# VOC07 11-point (the papers' metric) and the all-point rule; difficult objects ignored as VOC does.

# %%
from advlib.evaluate import plot_pr_curves

images, targets = exp.eval_data
clean07 = exp.evaluate(std, use_07_metric=True)
clean_all = exp.evaluate(std, use_07_metric=False)
per_class = pd.DataFrame({"class": exp.classes, "AP (VOC07)": clean07.ap, "AP (all-point)": clean_all.ap,
                          "objects": clean07.npos})
display(per_class.round(3))
print(f"clean mAP@0.5 on {images.shape[0]} test images: VOC07 {clean07.map:.4f}, all-point {clean_all.map:.4f}")
fig, ax = plt.subplots(figsize=(5, 4))
plot_pr_curves(clean_all, ax=ax)
ax.legend(fontsize=6, ncol=2)
save_figure(fig, "00_pr_curves", exp.profile.name)
plt.show()

# %% [markdown]
# ## Detections on test images

# %%
n_show = min(8, images.shape[0])
dets = exp.detect(std, images[:n_show])
fig = image_grid(images[:n_show], dets, exp.classes, ncols=4, score_thresh=0.3)
save_figure(fig, "00_detections_clean", exp.profile.name)
plt.show()

# %% [markdown]
# ## One attack: PGD-10 on the classification loss, ε = 8/255
# Step 2/255, random start, ground-truth targets (MTD's A_cls). The papers' SSD keeps 2-5 % of its clean mAP under this attack.

# %%
from advlib.attacks import pgd
from advlib.robustness import evaluate_attack

spec = pgd("cls", eps=8 / 255, step_size=2 / 255, steps=exp.profile.attack_steps, seed=seed)
t0 = time.perf_counter()
adv = evaluate_attack(exp, std, spec)
attack_seconds = time.perf_counter() - t0
ratio = adv["map"] / clean07.map
print(f"{spec.label()}: mAP {clean07.map:.4f} -> {adv['map']:.4f} ({ratio:.1%} of clean) in {attack_seconds:.1f} s")
adv_dets = exp.detect(std, adv["images"][:n_show])
fig = image_grid(adv["images"][:n_show], adv_dets, exp.classes, ncols=4, score_thresh=0.3)
save_figure(fig, "00_detections_adversarial", exp.profile.name)
plt.show()

# %% [markdown]
# ## Claims and results
# Verdicts are computed from this run's numbers.

# %%
claims = [
    check("STD collapses under A_cls: PGD-10 at eps 8/255 leaves <= 15% of clean mAP "
          "(MTD Table 2: 72.1 -> 1.5)", ratio <= 0.15, source="MTD Table 2",
          clean_map=clean07.map, attacked_map=adv["map"], ratio=ratio),
    check("Default profile bar: STD clean mAP@0.5 (VOC07) >= 0.70", clean07.map >= 0.70 if exp.profile.name == "default" else None,
          source="issue bar (default profile only)", clean_map=clean07.map),
]
display(scorecard(claims))
results = {
    "notebook": "00_baseline", "profile": exp.profile.to_dict(), "seed": seed,
    "dataset": exp.test_set.identity(), "model": {"key": meta["key"], "spec": meta["spec"]["recipe"],
                                                  "train_seconds": meta.get("train_seconds")},
    "tables": {
        "clean": {"map_voc07": clean07.map, "map_allpoint": clean_all.map, "per_class": per_class,
                  "paper": {"MTD Table 2 STD clean (VOC07 test)": 72.1}},
        "attack": {"map_voc07": adv["map"], "map_allpoint": adv["map_allpoint"], "ratio_to_clean": ratio,
                   "spec": adv["spec"], "seconds": attack_seconds,
                   "paper": {"MTD Table 2 STD under A_cls (eps 8)": 1.5}},
    },
    "claims": [c.to_dict() for c in claims],
    "seconds": time.perf_counter() - t_start,
}
print("wrote", save_json(results, "00_baseline.json", exp.profile.name))
