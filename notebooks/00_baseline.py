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
# Every later notebook starts from what this one shows: the data (generated shapes in VOC layout by default, or your own VOC/COCO data through `data_root`), the standard detector trained through the model zoo (trained once, cached in `data/cache/`), its clean VOC mAP@0.5, and how a PGD attack on the classification loss at ε = 8/255 (MTD's A_cls; the settings that ran are printed from its spec) collapses it, as the papers report for SSD on VOC (MTD Table 2: 72.1 → 1.5 mAP).

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
from IPython.display import display

from advlib.experiment import setup
from advlib.results import gate_claims, scorecard

t_start = time.perf_counter()
exp = setup(profile=profile, data_root=data_root, data_format=data_format, classes=classes, device=device,
            seed=seed, train_split=train_split, test_split=test_split, year=year, image_size=image_size)

# %% [markdown]
# ## The dataset at a glance
# Example training images with their boxes, and the statistics CWAT's Fig. 4 shows for VOC/COCO: objects and distinct classes per image, and a long-tailed class frequency.

# %%
from advlib.data import collate
from advlib.plots import dataset_statistics, image_grid, plot_dataset_statistics

ex_images, ex_targets = collate([exp.train_set[i] for i in range(min(8, len(exp.train_set)))])
fig = image_grid(ex_images, ex_targets, exp.classes, ncols=4)
exp.save_figure(fig, "00_dataset_examples")
plt.show()
stats = dataset_statistics(exp.train_set)
fig = plot_dataset_statistics(stats, exp.classes)
exp.save_figure(fig, "00_dataset_statistics")
plt.show()
print(f"objects per image: mean {stats['objects_per_image'].mean():.2f}, max {stats['objects_per_image'].max()}; "
      f"images with >= 2 classes: {(stats['classes_per_image'] >= 2).mean():.0%}; "
      f"most/least frequent class: {stats['objects_per_class'].max() / max(1, stats['objects_per_class'].min()):.1f}x")

# %% [markdown]
# ## The standard detector (STD)
# Trained through the model cache: the first run trains and caches it, every later run (and every other notebook) loads it.

# %%
t0 = time.perf_counter()
std_tm = exp.trained("std")
std, meta = std_tm.model, std_tm.meta
hist = pd.DataFrame(meta.get("history", []))
print(f"STD ready in {time.perf_counter() - t0:.1f} s (cache key {std_tm.key}; "
      f"trained in {meta.get('train_seconds', float('nan')):.0f} s when it was trained)")
if len(hist):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(hist["epoch"], hist["loss"], marker="o")
    ax.set_xlabel("epoch"); ax.set_ylabel("training loss (multibox)"); ax.set_title("STD training")
    exp.save_figure(fig, "00_std_training")
    plt.show()

# %% [markdown]
# ## Clean mAP@0.5 and per-class AP
# VOC07 11-point (the papers' metric) and the all-point rule; difficult objects ignored as VOC does. A class with no training objects is kept and marked.

# %%
from advlib.plots import plot_per_class_ap, plot_pr_curves

images, targets = exp.eval_data
clean07 = exp.evaluate(std, use_07_metric=True)
clean_all = exp.evaluate(std, use_07_metric=False)
notes = exp.per_class_notes()
per_class = pd.DataFrame({"class": exp.classes, "AP (VOC07)": clean07.ap, "AP (all-point)": clean_all.ap,
                          "objects": clean07.npos, "note": [notes.get(c, "") for c in exp.classes]})
display(per_class.round(3) if len(per_class) <= 24 else per_class.round(3).sort_values("AP (VOC07)").iloc[[*range(8), *range(-8, 0)]])
print(f"clean mAP@0.5 on {images.shape[0]} test images: VOC07 {clean07.map:.4f}, all-point {clean_all.map:.4f}")
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
plot_pr_curves(clean_all, ax=axes[0], classes=None if exp.num_classes <= 12 else
               list(per_class.sort_values("AP (VOC07)", ascending=False)["class"].head(12)))
axes[0].legend(fontsize=6, ncol=2)
plot_per_class_ap(per_class.set_index("class")[["AP (VOC07)"]], ax=axes[1], notes=notes)
fig.tight_layout()
exp.save_figure(fig, "00_pr_curves")
plt.show()

# %% [markdown]
# ## Detections on test images

# %%
n_show = min(8, images.shape[0])
dets = exp.detect(std, images[:n_show])
fig = image_grid(images[:n_show], dets, exp.classes, ncols=4, score_thresh=0.3)
exp.save_figure(fig, "00_detections_clean")
plt.show()

# %% [markdown]
# ## One attack: PGD on the classification loss, ε = 8/255
# MTD's A_cls: signed steps of 2/255 from a random start, ground-truth targets, the profile's number of steps (printed below from the spec that ran; the papers use 10). The papers' SSD keeps 2-5 % of its clean mAP under this attack.

# %%
from advlib.attacks import preset
from advlib.papers.mtd import TABLE2, baseline_claims
from advlib.robustness import evaluate_attack

spec = preset("A_cls", steps=exp.profile.attack_steps, seed=seed)
t0 = time.perf_counter()
adv = evaluate_attack(exp, std, spec)
attack_seconds = time.perf_counter() - t0
ratio = adv["map"] / clean07.map if clean07.map > 0 else float("nan")
print(f"attack: {spec.label()} (step {spec.step_size * 255:g}/255, random start {spec.random_start}): "
      f"mAP {clean07.map:.4f} -> {adv['map']:.4f} ({ratio:.1%} of clean) in {attack_seconds:.1f} s")
adv_dets = exp.detect(std, adv["images"][:n_show])
fig = image_grid(adv["images"][:n_show], adv_dets, exp.classes, ncols=4, score_thresh=0.3)
exp.save_figure(fig, "00_detections_adversarial")
plt.show()

# %% [markdown]
# ## Claims and results
# Verdicts are computed from this run's numbers; below the profile's clean-mAP floor a claim is "not testable on this data". The project's own bar (clean mAP of the default profile) is kept apart from the paper's claims.

# %%
claims = gate_claims(baseline_claims(clean07.map, adv["map"]), clean07.map, exp.profile.clean_map_floor)
display(scorecard(claims))
paper = TABLE2.frame()
display(pd.DataFrame({"ours": [clean07.map, adv["map"]], TABLE2.label: [paper.loc["STD", "clean"], paper.loc["STD", "A_cls"]]},
                     index=["STD clean", f"STD under {spec.label()}"]).round(3))
bars = {"default profile: STD clean mAP@0.5 (VOC07) >= 0.70":
        None if exp.profile.name != "default" or exp.params.user_data else bool(clean07.map >= 0.70)}
print("project bars:", bars)
results = {
    "notebook": "00_baseline", "profile": exp.profile.to_dict(), "seed": seed,
    "dataset": exp.test_set.identity(), "model": {"key": std_tm.key, "spec": meta["spec"]["recipe"],
                                                  "train_seconds": meta.get("train_seconds")},
    "tables": {
        "clean": {"map_voc07": clean07.map, "map_allpoint": clean_all.map, "per_class": per_class,
                  "paper": TABLE2.to_dict()["values"]["STD"]["clean"], "paper_source": TABLE2.source,
                  "paper_setting": TABLE2.setting},
        "attack": {"map_voc07": adv["map"], "map_allpoint": adv["map_allpoint"], "ratio_to_clean": ratio,
                   "spec": adv["spec"], "seconds": attack_seconds,
                   "paper": TABLE2.to_dict()["values"]["STD"]["A_cls"], "paper_source": TABLE2.source},
    },
    "claims": [c.to_dict() for c in claims],
    "project_bars": bars,
    "seconds": time.perf_counter() - t_start,
}
print("wrote", exp.save_json(results, "00_baseline.json"))
