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
# # 03 · RobustDet: the robustness bottleneck, loss changes and adversarially-aware convolution (Dong et al., ECCV 2022)
#
# Adversarially trained detectors lose much clean mAP (the paper's "detection robustness bottleneck": SSD 77.5 → MTD 48.0 on VOC07). RobustDet blames a conflict between learning clean and adversarial images (loss changes, Fig. 3; gradient entanglement, Fig. 4) and gives the detector K kernels per convolution, mixed per image by an adversarial image discriminator (AID) trained with a triplet loss, plus consistent features with reconstruction (CFR, RobustDet*). This notebook first asks whether the bottleneck exists on our data, then trains RobustDet, RobustDet* and two ablations from the cached STD model, reproduces Figs. 1, 3, 4, 5 (right), 7 and Tables 1 and 3 beside the paper's numbers, attacks RobustDet adaptively (beyond the paper), and checks the paper's claims on this run.
#
# **Model.** `advlib.models.robustdet.RobustDetector` composes the parts onto a trained SSD: batch norms folded into the kernels (the paper's VGG16 has none), every convolution of backbone, extras and heads an `AAConv2d` with K = 4 copies of the trained kernel (batched: per-image kernels and one grouped convolution), the AID (ours a small CNN trained from scratch; the official one an ImageNet ResNet-18), and for RobustDet* a mean/log-variance convolution in place of the first detection map's last convolution with a decoder reconstructing the clean image (log σ² starts at log 0.01, our change: σ = 1 noise would swamp our small backbone's activations).
#
# **Training, as the official code** (`advlib.papers.robustdet`): each update sees a fresh clean half-batch and an iterate of an MTD-style PGD-20 (ε = 8/255, step ε) on the adversarial half, training on each of the 20 iterates in turn; a third group passes the clean half again with the adversarial half's mixing weights; loss β(L_det + a·L_aid) + b·L_re + c·L_kld with β = 0.75, a = 3 and the official code's effective b ≈ 40.8 (MSE, pixels in [0, 1]) and c = 5/255 (KLD). The triplet loss mines by the official Jensen-Shannon distance and computes squared L2 distances, averaged (as the official code).
#
# **Budget.** RobustDet fine-tunes on `robustdet_budget.train_images` training images for `robustdet_budget.epochs` epochs (printed below); the other models are notebook 01's (STD, CLS-1step, LOC-1step, MTD-1step) and notebook 02's (CWAT-1step) from the model cache. Every number is kept in the result cache.

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
import numpy as np
import pandas as pd
from IPython.display import display

from advlib.attacks import pgd, preset
from advlib.experiment import setup
from advlib.papers import cwat, mtd, robustdet
from advlib.papers import robustdet_analysis as rda
from advlib.papers import robustdet_claims as rdc
from advlib.papers import robustdet_plots as rdp
from advlib.papers import robustdet_runs as rdr
from advlib.profiles import get_budget
from advlib.results import gate_claims, scorecard
from advlib.robustness import robustness_table
from advlib.sweeps import sweep_curves

t_start = time.perf_counter()
exp = setup(profile=profile, data_root=data_root, data_format=data_format, classes=classes, device=device,
            seed=seed, train_split=train_split, test_split=test_split, year=year, image_size=image_size)
budget, rb, cb = get_budget(exp.profile), robustdet.budget(exp.profile.name), cwat.budget(exp.profile.name)
images, targets = exp.eval_data
tab_x, tab_t = images[:budget.table_images], targets[:budget.table_images]
print(budget, rb, sep="\n")
note = robustdet.reductions(exp, rb, budget)
print(note)

# %% [markdown]
# ## Models
# STD, the adversarially trained SSDs of notebook 01 (SSD-AT(A_cls) and SSD-AT(A_loc) are our CLS-1step and LOC-1step; MTD is MTD-1step, the adopted protocol), CWAT from notebook 02 (CWAT-1step), RobustDet, RobustDet* and the two ablations of Table 3. A longer RobustDet fine-tune (`robustdet_budget.long_epochs` epochs, 4× the updates) is shown when the model cache has it: it is trained outside this notebook's time budget with `robustdet.trained(exp, rb, "RobustDet", epochs=rb.long_epochs)`, to ask whether the short schedule is what holds RobustDet back. The analyses below also report how well the discriminator tells adversarial from clean images (AID accuracy, chance 0.5).

# %%
t0 = time.perf_counter()
ft01 = exp.finetune_config(budget.recipe_epochs)
trained = {"STD": exp.trained("std"),
           "CLS-1step": exp.trained("cls", parent="std", cfg=ft01),
           "LOC-1step": exp.trained("loc", parent="std", cfg=ft01),
           "MTD-1step": mtd.adopted_protocol(budget.recipe_epochs).train(exp),
           cwat.model_name("cwat", cb.train_steps): cwat.trained(exp, cb, "cwat"),
           **{v: robustdet.trained(exp, rb, v) for v in robustdet.VARIANTS}}
N_LONG = robustdet.long_name(rb)
long_tm = robustdet.trained_long(exp, rb)  # shown when cached: trained outside this notebook's budget
if long_tm is not None:
    trained[N_LONG] = long_tm
print(f"{N_LONG}: {'in the model cache' if long_tm is not None else 'not in the model cache (not shown)'}")
models = {k: tm.model for k, tm in trained.items()}
N_CWAT = cwat.model_name("cwat", cb.train_steps)
print(f"models ready in {time.perf_counter() - t0:.0f} s; training seconds when trained: "
      f"{ {k: round(tm.meta.get('train_seconds') or 0) for k, tm in trained.items()} }")

# %% [markdown]
# ## The premise: is there a robustness bottleneck on our data?
# Clean mAP of the adversarially trained models against STD, beside the paper's drops (Table 1). Notebook 01 chose its robust-training protocol from measurements (a short one-step fine-tune from STD); its protocol study also trained MTD from scratch, shown here when that model is in the cache.

# %%
premise = robustdet.premise_table(exp, models, ["CLS-1step", "LOC-1step", "MTD-1step", N_CWAT], tab_x, tab_t,
                                  scratch=mtd.PROTOCOLS["scratch-1step"])
display(premise.round(3))

# %% [markdown]
# ## Table 1: clean and adversarial mAP
# Columns: **A_cls / A_loc** our PGD-10 (step 2/255, random start, as MTD and CWAT evaluate), **A_cls (official) / A_loc (official)** the official evaluation (20 steps of size ε, no random start), **MDA** (MTD's larger-loss pick of the A_cls and A_loc examples, from the same crafts; not a column of the paper's table), **CWA** (β = 6, PGD-10), **DAG** (notebook 01's preset with `budget.dag_steps` signed steps; the paper: 150), **RAP** (notebook 01's preset, `budget.rap_steps` signed steps; MTD Table 2's other attack from the literature, not a column of the paper's table). ε = 8/255. Every attack differentiates through the discriminator and the kernel mixing (as the official evaluation does).

# %%
ka = exp.profile.attack_steps
t1_attacks = {"clean": None, "A_cls": preset("A_cls", steps=ka, seed=seed), "A_loc": preset("A_loc", steps=ka, seed=seed),
              "A_cls (official)": robustdet.official_attack("cls", rb.official_steps),
              "A_loc (official)": robustdet.official_attack("loc", rb.official_steps),
              "MDA": preset("MDA", steps=ka, seed=seed), "CWA": preset("CWA", steps=ka, seed=seed),
              "DAG": preset("DAG", steps=budget.dag_steps, seed=seed), "RAP": preset("RAP", steps=budget.rap_steps, seed=seed)}
print({k: v.label() for k, v in t1_attacks.items() if v is not None})
t1_models = {k: models[k] for k in ("STD", "CLS-1step", "LOC-1step", "MTD-1step", N_CWAT, "RobustDet", "RobustDet*", N_LONG)
             if k in models}
t1 = robustness_table(t1_models, t1_attacks, tab_x, tab_t, exp.classes, data_id=exp.data_id)
table1 = t1.frame
print(note)
display(table1.round(3))
display(robustdet.TABLE1.frame().rename_axis(robustdet.TABLE1.label).round(3))
fig, ax = plt.subplots(figsize=(10, 3))
table1.T.plot.bar(ax=ax, rot=0, width=0.85)
ax.set_ylabel("mAP@0.5"); ax.set_title("Table 1 (ours)"); ax.legend(ncol=4, fontsize=7)
exp.save_figure(fig, "03_table1")
plt.show()

# %% [markdown]
# ## Table 3: ablations without L_aid and without L_re

# %%
t3_models = {k: models[k] for k in robustdet.VARIANTS}
t3_attacks = {k: t1_attacks[k] for k in ("clean", "A_cls", "A_loc", "CWA", "DAG")}
t3 = robustness_table(t3_models, t3_attacks, tab_x, tab_t, exp.classes, data_id=exp.data_id)
table3 = t3.frame
table3["mean adversarial"] = rdc.mean_adversarial(table3)
print(note)
display(table3.round(3))
display(robustdet.TABLE3.frame().rename_axis(robustdet.TABLE3.label).round(3))

# %% [markdown]
# ## Fig. 7a/b: mAP as PGD gets longer
# STD, MTD-1step, RobustDet and RobustDet* under A_cls and A_loc with 1..`budget.sweep_steps` steps (ε = 8/255, step 2/255) on `budget.sweep_images` test images.

# %%
sw_models = {k: models[k] for k in ("STD", "MTD-1step", "RobustDet", "RobustDet*")}
sw_x, sw_t = images[:budget.sweep_images], targets[:budget.sweep_images]
steps_grid = [s for s in (1, 2, 3, 5, 10, 20) if s <= budget.sweep_steps]
curves = sweep_curves(sw_models, {a: pgd(o, steps=max(steps_grid), seed=seed) for a, o in (("A_cls", "cls"), ("A_loc", "loc"))},
                      sw_x, sw_t, exp.num_classes, steps=steps_grid, eps=[8 / 255])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
for ax, atk in zip(axes, ("A_cls", "A_loc")):
    for m in sw_models:
        d = curves[(curves.kind == "steps") & (curves.attack == atk) & (curves.model == m)]
        ax.plot(d["steps"], d["map"], marker="o", label=m)
    ax.set_title(f"{atk} (Fig. 7{'a' if atk == 'A_cls' else 'b'})"); ax.set_xlabel("PGD steps"); ax.legend(fontsize=7)
axes[0].set_ylabel("mAP@0.5")
exp.save_figure(fig, "03_fig7ab_pgd_steps")
plt.show()

# %% [markdown]
# ## Figs. 3, 4, 5 (right), 7c and 1: the analyses
# On `robustdet_budget.analysis_images` training images (batch a) and as many test images (batch b), with their MDA examples (MTD's PGD-10):
# - **Fig. 3, loss changes**: from the trained model, m SGD steps (no momentum, batch norm frozen) on batch a (clean or adversarial), then each image's multibox-loss change on batch b (clean or adversarial); weights restored. The paper leaves m and the optimiser to its supplement. Our first default run used 1 step of lr 1e-3, which moved every loss by about 0.001 and could not separate the settings; after seeing that, we fixed a criterion and did not tune afterwards: m = `loss_change_steps` and the smallest lr of `loss_change_lrs` at which STD's own batch-a loss falls by `loss_change_fall` (10 %). Fig. 3 and the claims use that calibrated setting; the first run's setting is shown beside it.
# - **AID discrimination** (ours): does the discriminator tell adversarial from clean? Batch a's clean and adversarial mixing vectors give two centroids; each batch-b image is called by the nearer one (chance 0.5).
# - **Fig. 4, gradient entanglement**: per convolutional layer, R = g_cleanᵀ g_adv / ‖g_adv‖² of that layer's parameter gradients for an image and its adversarial version, averaged over batch b.
# - **Fig. 5 (right)**: per image, the change of L_cls under A_cls and of L_loc under A_loc.
# - **Fig. 7c**: scores of detections above 0.3 on clean, A_cls and A_loc images; **Fig. 1**: pooled precision-recall curves on clean and A_cls images.

# %%
an_models = {k: models[k] for k in ("STD", "MTD-1step", "RobustDet", N_LONG) if k in models}
lc_settings, lc_calibration = rdr.loss_change_settings(exp, models["STD"], rb)
print("loss-change calibration on STD (batch a learned and watched):")
display(lc_calibration.round(4))
print("settings:", lc_settings)
analyses = rdr.cached_analyses(exp, an_models, rb, images, targets, t1_attacks["A_cls"], t1_attacks["A_loc"],
                               budget.table_images, loss_change_settings=lc_settings)
fig = rdp.plot_loss_change_histograms({k: analyses[k]["loss_changes"] for k in ("MTD-1step", "RobustDet")})
exp.save_figure(fig, "03_fig3_loss_changes")
plt.show()
fig = rdp.plot_gradient_entanglement({k: analyses[k]["entanglement"] for k in an_models})
exp.save_figure(fig, "03_fig4_gradient_entanglement")
plt.show()
fig = rdp.plot_confidences_and_pr({k: analyses[k] for k in an_models})
exp.save_figure(fig, "03_fig1_fig5_fig7c")
plt.show()
display(rdr.analysis_summary(analyses).round(3))
lc_summary = rdr.loss_change_summary(analyses)
display(lc_summary.round(4))

# %% [markdown]
# ## Beyond the paper: adaptive attacks on RobustDet
# Table 1's attacks already differentiate through the discriminator and the kernel mixing. Two more (PGD-10, ε = 8/255, on the A_cls loss):
# - **fixed-mixing**: the A_cls loss with the kernels mixed as for the clean image (π held at D(x_clean); no gradient through the discriminator), then evaluated through the full model: does the discriminator's switch protect, or do the clean kernels' examples transfer?
# - **AID-evasion**: the A_cls loss through the discriminator and the mixing minus λ‖D(x) − D(x_clean)‖² (λ = 10): adversarial images that the discriminator should take for clean.

# %%
adaptive_attacks = {"A_cls": t1_attacks["A_cls"],
                    "fixed-mixing": pgd("fixed-mixing", steps=ka, seed=seed, reducer="cls"),
                    "AID-evasion": pgd("aid-evasion", steps=ka, seed=seed, reducer="cls", weight=10.0)}
ad = robustness_table({k: models[k] for k in ("RobustDet", "RobustDet*")}, adaptive_attacks, tab_x, tab_t,
                      exp.classes, data_id=exp.data_id)
display(ad.frame.round(3))
adaptive = {k: float(ad.get("RobustDet", k)) for k in adaptive_attacks}
print({f"drop under {k}": round(adaptive["A_cls"] - v, 3) for k, v in adaptive.items() if k != "A_cls"})

# %% [markdown]
# ## Claims scorecard
# Verdicts computed by `advlib.papers.robustdet_claims.claims` from the numbers above (thresholds fixed in the module before the run); below the profile's clean-mAP floor they are "not testable on this data". The paper's MTD and CWAT rows are played by MTD-1step and CWAT-1step.

# %%
rows = {"MTD-1step": "MTD", N_CWAT: "CWAT"}
t_all = pd.concat([table1, table3.drop(columns="mean adversarial").drop(index=["RobustDet", "RobustDet*"])]).rename(index=rows)
claims = rdc.claims(t_all, "MTD", {rows.get(k, k): analyses[k]["loss_changes"] for k in ("MTD-1step", "RobustDet")},
                    {rows.get(k, k): analyses[k]["entanglement"] for k in ("MTD-1step", "RobustDet")},
                    {rows.get(k, k): analyses[k]["confidences"]["clean"] for k in ("MTD-1step", "RobustDet")}, adaptive)
claims = gate_claims(claims, float(table1.loc["STD", "clean"]), exp.profile.clean_map_floor)
display(scorecard(claims))
results = {"notebook": "03_robustdet_loss_change", "profile": exp.profile.to_dict(), "budget": budget.__dict__,
           "robustdet_budget": rb.__dict__, "seed": seed, "claim_models": rows, "budget_note": note,
           "tables": {"premise": premise, "table1": {"ours": t1.to_dict(), "paper": robustdet.TABLE1.to_dict()},
                      "table3": {"ours": t3.to_dict(), "paper": robustdet.TABLE3.to_dict()}, "fig7ab": curves,
                      "analyses": rdr.analysis_summary(analyses), "adaptive": ad.to_dict(),
                      "loss_change_calibration": lc_calibration, "loss_change_settings": lc_settings,
                      "loss_changes_by_setting": lc_summary.reset_index()},
           "models": {k: tm.meta.get("train_seconds") for k, tm in trained.items()},
           "claims": [c.to_dict() for c in claims], "seconds": time.perf_counter() - t_start}
print("wrote", exp.save_json(results, "03_robustdet.json"))
