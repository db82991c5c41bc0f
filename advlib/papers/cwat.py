"""CWAT: Chen, Kung & Chen, "Class-Aware Robust Adversarial Training for Object Detection", CVPRW 2021.

Its recipes (TOAT, OWAT, CWAT with PGD; CWAT-fast and MTD-fast with free adversarial training),
its notebook budget, the training-cost run and the analyses no other paper uses (how often the
clip binds, per-class AP by classes per image). The paper's reported numbers and its claims are
in :mod:`advlib.papers.cwat_claims` and re-exported here.

**Eq. 12, the reading implemented.** ``n_c`` is defined as "the number of the matched default
boxes in the class c" while the prose normalises "each class loss using the number of objects
for the class". We implement the objects reading (:func:`advlib.losses.cwa_loss`): an object's
loss is the mean of its positive anchors' losses (clipped at β_o, eq. 11), a class's loss the
mean over its objects, the image's loss the mean over its classes. Why: with the anchors
reading a large object (many matched anchors) outweighs small objects of its own class, which
is the domination the paper sets out to remove, and eq. 10-11 are already per object. Appendix C
also attacks "a certain percentage of negative anchors"; negatives belong to no object and no
class, so eq. 12 has no place for them: the attack loss (TOA/OWA/CWA) uses positives only, while
the training loss (the multibox loss, eq. 1) keeps SSD's 3:1 hard negatives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from advlib.attacks import AttackSpec, attack, pgd
from advlib.losses import cls_loss, loc_loss, match_targets, multibox_terms, object_losses
from advlib.recipes import RECIPES, AdversarialRecipe, FreeAdversarialRecipe
from advlib.papers.cwat_claims import (  # the reported numbers and claims, re-exported
    ADV_COLUMNS, COLUMNS, FAST_REPLAYS, FAST_TOL, MATCH_TOL, PAPER_BACKWARDS, PAPER_SPEEDUP, SOURCE, TABLE1, TABLE2,
    TABLE3, TABLE3_ATTACKS, TABLE3_MODELS, TABLE4, TABLE5, claims, class_spread, mean_adversarial, seed_comparison,
    seed_spread, table3_frame)
from advlib.papers.cwat_claims import __all__ as _claims_all
from advlib.imageset import iter_batches
from advlib.robustness import mean_ap
from advlib.utils import eval_mode, model_device, targets_to

EPS = 8 / 255
#: β_t = β_o = 6 in every experiment of the paper
BETA = 6.0


# ---------------------------------------------------------------------------------- recipes
# The parameters always train on the multibox loss (eq. 1, AdversarialRecipe); the recipes differ
# only in the attack that makes the training images, which is the evaluation attack's objective.
@RECIPES.register("toat")
def toat_recipe(beta_cls: float = BETA, beta_loc: float = BETA, steps: int = 10, eps: float = EPS,
                seed: int = 0) -> AdversarialRecipe:
    """TOAT-β_cls-β_reg (eqs. 8-9): PGD on the clipped task losses (``math.inf``: no clip)."""
    return AdversarialRecipe("toat", pgd("toa", eps, 2 / 255, steps, seed=seed, beta_cls=float(beta_cls),
                                         beta_loc=float(beta_loc)))


@RECIPES.register("owat")
def owat_recipe(beta: float = BETA, steps: int = 10, eps: float = EPS, seed: int = 0) -> AdversarialRecipe:
    """OWAT (eqs. 10-11): PGD on the sum of each object's clipped task losses."""
    return AdversarialRecipe("owat", pgd("owa", eps, 2 / 255, steps, seed=seed, beta=float(beta)))


@RECIPES.register("cwat")
def cwat_recipe(beta: float = BETA, steps: int = 10, eps: float = EPS, seed: int = 0) -> AdversarialRecipe:
    """CWAT (eq. 12): PGD on the class-wise average of the clipped object losses."""
    return AdversarialRecipe("cwat", pgd("cwa", eps, 2 / 255, steps, seed=seed, beta=float(beta)))


@RECIPES.register("cwat-fast")
def cwat_fast_recipe(beta: float = BETA, eps: float = EPS, replays: int = 4) -> FreeAdversarialRecipe:
    """CWAT-fast (Algorithm 1): free adversarial training on the class-wise loss, m replays."""
    return FreeAdversarialRecipe("cwat-fast", ("cwa",), eps, replays, beta=float(beta))


@RECIPES.register("mtd-fast")
def mtd_fast_recipe(eps: float = EPS, replays: int = 4) -> FreeAdversarialRecipe:
    """MTD-fast (the paper's own fast MTD): free adversarial training with one δ per task domain,
    training per image on the domain with the larger multibox loss (MTD Algorithm 1's choice)."""
    return FreeAdversarialRecipe("mtd-fast", ("cls", "loc"), eps, replays)


def toat_name(beta_cls: float, beta_loc: float) -> str:
    """The paper's row name: ``TOAT-6``, ``TOAT-inf``, ``TOAT-2-4``."""
    def fmt(b: float) -> str:
        return "inf" if math.isinf(b) else f"{b:g}"
    return f"TOAT-{fmt(beta_cls)}" if beta_cls == beta_loc else f"TOAT-{fmt(beta_cls)}-{fmt(beta_loc)}"


def model_name(recipe: str, steps: int | None = None, **betas) -> str:
    """A row name that says how the model was trained: the paper's name when trained as the paper
    (PGD-10 for TOAT/OWAT/CWAT), else with the training attack (``CWAT-PGD3``, ``OWAT-1step``)."""
    base = {"owat": "OWAT", "cwat": "CWAT", "cwat-fast": "CWAT-fast", "mtd-fast": "MTD-fast"}.get(recipe)
    if recipe == "toat":
        base = toat_name(betas.get("beta_cls", BETA), betas.get("beta_loc", BETA))
    if base is None:
        raise ValueError(f"no CWAT row name for recipe {recipe!r}")
    if steps is None or steps == 10 or recipe in ("cwat-fast", "mtd-fast"):
        return base
    return f"{base}-1step" if steps == 1 else f"{base}-PGD{steps}"


# ---------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class CWATBudget:
    """Notebook 02's budget beyond the shared :class:`advlib.profiles.Budget`.

    Attributes:
        train_steps: PGD steps of the TOAT/OWAT/CWAT training attack (the paper: 10).
        epochs: E, the fine-tuning epochs of the PGD recipes; the fast recipes run E/m epochs of
            m replays (E must be a multiple of m, so E/m is a whole number of passes).
        replays: m of the fast recipes (the paper: 4).
        ablation: (β_cls, β_reg) pairs of the clipping ablation (Table 5).
        seeds: seeds of the OWAT/CWAT seed study.
        cost_images, cost_epochs: the training-cost run (every recipe timed in one run on this
            many training images for this many epochs of the PGD schedule, E/m for fast ones).
        train_images: every notebook-02 model fine-tunes on this fixed subset of the training
            split (:meth:`advlib.experiment.Experiment.train_subset`); ``None``: the whole split.
    """

    train_steps: int
    epochs: int
    ablation: tuple[tuple[float, float], ...]
    seeds: tuple[int, ...]
    cost_images: int
    cost_epochs: int
    replays: int = FAST_REPLAYS
    train_images: int | None = None

    def __post_init__(self) -> None:
        if self.epochs % self.replays or self.cost_epochs % self.replays:
            raise ValueError(f"epochs ({self.epochs}) and cost_epochs ({self.cost_epochs}) must be multiples of "
                             f"replays m = {self.replays}, so that E/m is a whole number of passes")
        if self.train_steps < 1 or self.cost_images < 1 or not self.seeds or (self.train_images or 1) < 1:
            raise ValueError(f"invalid CWAT budget {self}")


_INF = math.inf
BUDGETS = {
    # CI plumbing in a minute: one epoch, no replay (m = 1 keeps E/m whole), TOAT-inf only, one seed
    "smoke": CWATBudget(train_steps=1, epochs=1, ablation=((_INF, _INF),), seeds=(0,), cost_images=32, cost_epochs=1,
                        replays=1),
    # 60 minutes on 2 CPU cores: 13 one-step PGD fine-tunes and 2 fast ones, each on 1024 of the
    # 3000 training images (32 iterations per epoch), then every table on the 72 table images
    "default": CWATBudget(train_steps=1, epochs=4, ablation=((_INF, _INF), (2, 2), (4, 4), (8, 8), (2, 4), (4, 2)),
                          seeds=(0, 1, 2), cost_images=128, cost_epochs=4, train_images=1024),
    "voc": CWATBudget(train_steps=10, epochs=24, ablation=((_INF, _INF), (2, 2), (4, 4), (8, 8), (2, 4), (4, 2),
                                                           (2, 6), (6, 2)), seeds=(0,), cost_images=2048,
                      cost_epochs=4),
}


def budget(profile_name: str) -> CWATBudget:
    """The CWAT budget of a profile (the default profile's for a profile it does not name)."""
    return BUDGETS.get(profile_name, BUDGETS["default"])


def recipe_of(cb: CWATBudget, recipe: str, **betas):
    """``(recipe object, epochs)`` of a CWAT-notebook model (:func:`trained`): PGD recipes with
    ``cb.train_steps`` steps for ``cb.epochs`` epochs, fast ones with ``cb.replays`` replays for
    ``cb.epochs / cb.replays`` epochs."""
    if recipe in ("cwat-fast", "mtd-fast"):
        return RECIPES.build(recipe, replays=cb.replays), cb.epochs // cb.replays
    return RECIPES.build(recipe, steps=cb.train_steps, **betas), cb.epochs


def trained(exp, cb: CWATBudget, recipe: str, seed: int | None = None, cached_only: bool = False, **betas):
    """A CWAT-notebook model from the cache (trained if missing), fine-tuned from the STD model of
    the same seed: PGD recipes (``toat``/``owat``/``cwat``) with ``cb.train_steps`` steps for
    ``cb.epochs`` epochs, fast ones (``cwat-fast``/``mtd-fast``) for ``cb.epochs / cb.replays``
    epochs of ``cb.replays`` replays, on ``cb.train_images`` training images (at most the split).
    Returns a :class:`~advlib.experiment.TrainedModel` (``None`` with ``cached_only`` when the
    cache lacks it: nothing is trained)."""
    r, epochs = recipe_of(cb, recipe, **betas)
    n = None if cb.train_images is None else min(cb.train_images, len(exp.train_set))  # user data may be smaller
    return exp.trained(r, parent="std", seed=seed, cfg=exp.finetune_config(epochs, seed=seed), train_images=n,
                       **({"cached_only": True} if cached_only else {}))


def reductions(exp, cb: CWATBudget, table_images: int) -> str:
    """What this budget changes from the paper's training and evaluation, in one line, printed
    beside every table it affects."""
    n_train = len(exp.train_set)
    used = n_train if cb.train_images is None else min(cb.train_images, n_train)
    parts = [f"training attack {cb.train_steps} PGD step(s) (paper: 10)" if cb.train_steps != 10 else None,
             f"fine-tuned {cb.epochs} epochs (fast: {cb.epochs // cb.replays} × m = {cb.replays} replays) on "
             f"{used} of {n_train} training images" + (" (a fixed subset)" if used < n_train else ""),
             f"evaluated on {table_images} of {len(exp.test_set)} test images"]
    return "Budget: " + "; ".join(p for p in parts if p)


def paper_names(cb: CWATBudget) -> dict[str, str]:
    """Our row name -> the paper's, for the models that play the paper's rows in the claims
    (identical when the budget trains as the paper does)."""
    pairs = [("toat", {}), ("owat", {}), ("cwat", {})]
    pairs += [("toat", {"beta_cls": bc, "beta_loc": bl}) for bc, bl in cb.ablation]
    return {model_name(r, cb.train_steps, **kw): model_name(r, 10, **kw) for r, kw in pairs}


def speedups(cost: pd.DataFrame, fast: str = "CWAT-fast", slow: str = "MTD-PGD10") -> dict[str, float]:
    """``fast`` over ``slow`` in a :func:`training_cost` table: wall time per epoch and over the
    whole schedule (E epochs against E/m)."""
    return {"per_epoch_speedup": float(cost.loc[slow, "seconds_per_epoch"] / cost.loc[fast, "seconds_per_epoch"]),
            "schedule_speedup": float(cost.loc[slow, "seconds"] / cost.loc[fast, "seconds"])}


def training_cost(model, dataset, recipes: Mapping[str, object], cfg, epochs: int, replays: int = FAST_REPLAYS,
                  device=None) -> pd.DataFrame:
    """Every recipe timed in one run: each fine-tunes a copy of ``model`` on ``dataset`` for
    ``epochs`` (recipes with ``replays`` > 1: ``epochs / replays``), with ``cfg``'s optimiser.

    Returns:
        rows = recipe names × ``epochs``, ``iterations``, ``seconds`` (whole schedule),
        ``seconds_per_epoch``, ``forward_per_iter``, ``backward_per_iter`` (counted as they ran).
    """
    import copy
    import dataclasses

    from advlib.train import train

    rows = []
    for name, recipe in recipes.items():
        m = int(getattr(recipe, "replays", 1))
        e = epochs // m if m > 1 else epochs
        prepare = getattr(recipe, "prepare_model", None)  # a recipe that trains another architecture
        start = copy.deepcopy(model) if prepare is None else prepare(copy.deepcopy(model))
        hist = train(start, dataset, recipe, dataclasses.replace(cfg, epochs=e), device=device,
                     progress=False)
        secs = sum(h["seconds"] for h in hist)
        rows.append({"recipe": name, "epochs": e, "iterations": sum(h["iterations"] for h in hist),
                     "seconds": secs, "seconds_per_epoch": secs / e,
                     "forward_per_iter": float(np.mean([h["forward_per_iter"] for h in hist])),
                     "backward_per_iter": float(np.mean([h["backward_per_iter"] for h in hist]))})
    return pd.DataFrame(rows).set_index("recipe")


def cached_training_cost(exp, recipes: Mapping[str, object], cb: CWATBudget, seed: int = 0) -> pd.DataFrame:
    """:func:`training_cost` of ``recipes`` from the experiment's cached STD model on the first
    ``cb.cost_images`` training images, with the fine-tuning schedule, kept in the result cache
    (a warm re-run shows the timings of the run that measured them, with its date)."""
    import datetime

    from torch.utils.data import Subset

    from advlib.cache import ResultCache

    std = exp.trained("std", seed=seed)
    cfg = exp.finetune_config(cb.cost_epochs, seed=seed)
    n = min(cb.cost_images, len(exp.train_set))

    def compute() -> dict:
        frame = training_cost(std.model, Subset(exp.train_set, range(n)), recipes, cfg, cb.cost_epochs,
                              device=exp.device)
        return {"table": frame, "measured": datetime.date.today().isoformat(), "images": n}

    value = ResultCache.resolve(None).cached(
        compute, kind="cwat-training-cost", model=std.key, images=n, cfg=cfg.to_dict(),
        recipes={k: r.spec() for k, r in recipes.items()}, device=str(exp.device))
    table = pd.DataFrame.from_dict(value["table"], orient="index")
    table.attrs.update(measured=value["measured"], images=value["images"])
    return table


# ------------------------------------------------------------------------------- analyses
def clip_rates(model, images: Tensor, targets: list[dict], spec: AttackSpec | None, betas: Sequence[float],
               batch_size: int = 32) -> pd.DataFrame:
    """How often the clip binds: at the examples of ``spec`` (``None``: clean images), the
    fraction of images whose task loss exceeds β (TOA, eq. 9: ``L_cls``, ``L_loc``) and of objects
    whose own task loss exceeds β (OWA/CWA, eq. 11: ``l_cls^o``, ``l_loc^o``), for each β.

    Returns:
        rows β × columns ``image L_cls``, ``image L_loc``, ``object l_cls``, ``object l_loc``.
    """
    dev = model_device(model)
    img_c, img_l, obj_c, obj_l = [], [], [], []
    with eval_mode(model):
        for _, x, t in iter_batches(images, targets, batch_size):  # a tensor or a streamed ImageSet
            x, t = x.to(dev), targets_to(dev, t)
            matched = match_targets(model, t)
            if spec is not None:
                x = attack(model, x, t, spec, matched=matched)
            with torch.no_grad():
                terms = multibox_terms(model(x), matched)
                oc, ol, present = object_losses(terms)
            img_c.append(cls_loss(terms).cpu()), img_l.append(loc_loss(terms).cpu())
            obj_c.append(oc[present].cpu()), obj_l.append(ol[present].cpu())
    ic, il, oc, ol = (torch.cat(v) for v in (img_c, img_l, obj_c, obj_l))
    return pd.DataFrame([{"beta": b, "image L_cls": float((ic > b).float().mean()),
                          "image L_loc": float((il > b).float().mean()), "object l_cls": float((oc > b).float().mean()),
                          "object l_loc": float((ol > b).float().mean())} for b in betas]).set_index("beta")


def classes_per_image(targets: list[dict]) -> np.ndarray:
    """Distinct classes in each image's ground truth."""
    return np.array([len(set(t["labels"].tolist())) for t in targets])


def ap_by_classes_in_image(model, adv_images: Tensor, targets: list[dict], num_classes: int,
                           groups: Sequence[tuple[int, int]] = ((1, 1), (2, 2), (3, 3), (4, 10**9)),
                           class_names=None) -> pd.DataFrame:
    """Per-class AP on the images holding ``lo..hi`` distinct classes, for each group (beyond the
    paper: its explanation of why CWAT helps more on COCO than on VOC). ``adv_images`` are the
    already-attacked images (8-bit), evaluated per group.

    Returns:
        rows = group labels (``1``, ``2``, ``3``, ``4+``) × columns ``images``, ``mAP`` and each class.
    """
    n_cls = classes_per_image(targets)
    rows = []
    for lo, hi in groups:
        idx = np.flatnonzero((n_cls >= lo) & (n_cls <= hi))
        label = f"{lo}+" if hi >= 10**9 else (f"{lo}" if lo == hi else f"{lo}-{hi}")
        row = {"group": label, "images": int(len(idx))}
        if len(idx):
            res = mean_ap(model, adv_images[torch.as_tensor(idx)], [targets[i] for i in idx], num_classes,
                          class_names=class_names)
            row["mAP"] = res.map
            row.update({str(name): float(ap) for name, ap in zip(res.class_names, res.ap)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def cached_ap_by_classes(exp, model, images: Tensor, targets: list[dict], spec: AttackSpec) -> pd.DataFrame:
    """:func:`ap_by_classes_in_image` on the (8-bit) examples of ``spec``, kept in the result cache."""
    from advlib.cache import ResultCache, round_8bit
    from advlib.robustness import adversarial_images

    def compute() -> pd.DataFrame:
        adv = round_8bit(adversarial_images(model, images, targets, spec, progress=False))
        return ap_by_classes_in_image(model, adv, targets, exp.num_classes, class_names=exp.classes)

    value = ResultCache.resolve(None).cached(compute, kind="cwat-by-classes", model=model.zoo_key, data=exp.data_id,
                                             images=len(targets), spec=spec.to_dict())
    return pd.DataFrame.from_dict(value, orient="index")




__all__ = ["BUDGETS", "BETA", "CWATBudget", "EPS", "ap_by_classes_in_image", "budget", "cached_ap_by_classes",
           "cached_training_cost", "paper_names", "reductions", "speedups", "trained", "classes_per_image",
           "clip_rates", "cwat_fast_recipe", "cwat_recipe", "model_name", "mtd_fast_recipe", "owat_recipe", "toat_name",
           "toat_recipe", "training_cost", *_claims_all]
