"""Every paper notebook's trained models by one name each, looked up in the model cache: what a
notebook that compares across papers (05's "beyond the paper", 06's matrix) evaluates without
retraining anything.

Each entry gives the model exactly as its own notebook trains it (same recipe, schedule, subset
and parent, hence the same cache key), so a model that notebook has trained is found, and one it
has not is reported missing (``None``), never trained here and never replaced by a stand-in.
Names say how the model was trained (the papers' names where trained as the papers; the training
attack otherwise: ``MTD-1step``, ``CWAT`` = PGD-10), and which notebook trains it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from advlib.papers import advamd, cwat, mtd, robustdet  # importing mtd registers cls/loc/con/mtd
from advlib.recipes import RECIPES


@dataclass(frozen=True)
class Entry:
    """A model of one notebook: ``get(exp, seed)`` returns its
    :class:`~advlib.experiment.TrainedModel` from the cache, or ``None`` when not cached."""

    name: str
    notebook: str
    training: str
    get: Callable
    note: str = ""  # why a model is never cached (no notebook trains it), shown beside "missing"
    setup: Callable | None = None  # (exp, seed) -> (recipe, TrainConfig, dataset) it trains with

    def training_setup(self, exp, seed: int | None = None):
        """``(recipe, cfg, dataset)`` this model is (or would be) fine-tuned with: what a short
        instrumented run times (``None``: not a fine-tune of STD, e.g. MagNet)."""
        return None if self.setup is None else self.setup(exp, exp.seed if seed is None else seed)


def _std(exp, seed):
    return exp.trained("std", seed=seed, cached_only=True)


def _mtd_row(recipe: str):
    def get(exp, seed):
        from advlib.profiles import get_budget

        cfg = exp.finetune_config(get_budget(exp.profile).recipe_epochs, seed=seed)
        return exp.trained(recipe, parent="std", seed=seed, cfg=cfg, cached_only=True)
    return get


def _cwat_row(recipe: str):
    def get(exp, seed):
        return cwat.trained(exp, cwat.budget(exp.profile.name), recipe, seed=seed, cached_only=True)
    return get


def _robustdet_row(variant: str):
    def get(exp, seed):
        return robustdet.trained(exp, robustdet.budget(exp.profile.name), variant, seed=seed, cached_only=True)
    return get


def _ft(recipe_of, epochs_of=None, images_of=None):
    """A setup: ``recipe_of(exp)`` fine-tuned with the profile's fine-tuning schedule on
    ``images_of(exp)`` training images (``None``: the split)."""
    def setup(exp, seed):
        n = None if images_of is None else images_of(exp)
        n = None if n is None else min(n, len(exp.train_set))
        epochs = None if epochs_of is None else epochs_of(exp)
        return recipe_of(exp), exp.finetune_config(epochs, seed=seed), exp.train_subset(n)
    return setup


def _cwat_setup(recipe: str):
    def epochs(exp):
        return cwat.recipe_of(cwat.budget(exp.profile.name), recipe)[1]
    return _ft(lambda exp: cwat.recipe_of(cwat.budget(exp.profile.name), recipe)[0], epochs,
               lambda exp: cwat.budget(exp.profile.name).train_images)


def _robustdet_setup(variant: str):
    def setup(exp, seed):
        rb = robustdet.budget(exp.profile.name)
        recipe, cfg, data = _ft(lambda e: robustdet.recipe_of(rb, variant), lambda e: rb.epochs,
                                lambda e: rb.train_images)(exp, seed)
        return recipe, dataclasses.replace(cfg, batch_size=rb.batch_size), data
    return setup


def _advamd_recipe(exp, defence: str, seed: int):
    """``(budget, recipe)`` of an AdvAmd-notebook defence on the SSD in the seed setting, ``None``
    when its stage 1 is not cached (nothing is computed)."""
    ab = advamd.budget(exp.profile.name)
    s1 = advamd.stage1(exp, ab, "ssd", *ab.seed_setting, seed=seed, cached_only=True)
    return None if s1 is None else (ab, advamd.defence_recipe(defence, s1, ab))


def _advamd_setup(defence: str):
    def setup(exp, seed):
        found = _advamd_recipe(exp, defence, seed)
        if found is None:
            return None
        ab, recipe = found
        return recipe, advamd.finetune_config(exp, ab, seed), exp.train_subset(ab.train_images)
    return setup


def _protocol_row(key: str):
    def get(exp, seed):
        return mtd.PROTOCOLS[key].train(exp, seed=seed, cached_only=True)
    return get


def _never(exp, seed):
    return None


def _magnet(exp, seed):
    """MagNet as notebook 04 builds it: the cached STD model behind the zoo's reformer, with the
    rejection threshold set on held-out clean training images (the reformer is trained once, with
    the experiment's seed, so MagNet exists for that seed only)."""
    from advlib.experiment import TrainedModel
    from advlib.models.magnet import MagNetDetector

    if seed != exp.seed:
        return None
    std = exp.trained("std", seed=seed, cached_only=True)
    parts = None if std is None else advamd.magnet_parts(exp, advamd.budget(exp.profile.name), cached_only=True)
    if parts is None:
        return None
    ae, threshold = parts
    return TrainedModel(MagNetDetector(std.model, ae.model, threshold).eval(),
                        {"key": f"magnet:{std.key}:{ae.key}", "spec": {"detector": std.key, "reformer": ae.key,
                                                                       "threshold": threshold},
                         "train_seconds": ae.meta.get("train_seconds")})


def _advamd_row(defence: str):
    def get(exp, seed):
        found = _advamd_recipe(exp, defence, seed)
        return None if found is None else advamd.fine_tuned(exp, found[0], "ssd", found[1], seed, cached_only=True)
    return get


#: notebook 01's robust-training protocols (:data:`advlib.papers.mtd.PROTOCOLS`) by row name
PROTOCOL_NAMES = {"scratch-1step": "MTD-1step (scratch)", "finetune-pgd3": "MTD-PGD3"}


def entries(profile_name: str) -> tuple[Entry, ...]:
    """The SSD models of notebooks 00-04 under a profile (the profile's backbone), named as their
    notebooks name them under that profile's budgets (e.g. ``CWAT-1step`` when notebook 02's
    budget trains with one step, ``CWAT`` with the paper's PGD-10)."""
    cb, ab = cwat.budget(profile_name), advamd.budget(profile_name)
    setting = advamd.setting_name(*ab.seed_setting)
    fgsm = f"fine-tuned from STD, one FGSM step of ε = {mtd.EPS * 255:g}/255"
    pgd = f"fine-tuned from STD, {cb.train_steps}-step PGD at ε = {cwat.EPS * 255:g}/255"
    free = f"fine-tuned from STD, free adversarial training ({cb.replays} replays)"
    protocols = tuple(Entry(PROTOCOL_NAMES[p], "01", mtd.PROTOCOLS[p].label + " (robust-training protocol study)",
                            _protocol_row(p), setup=_ft(lambda exp, p=p: RECIPES.build("mtd", steps=mtd.PROTOCOLS[p].steps),
                                                        lambda exp, p=p: mtd.PROTOCOLS[p].epochs))
                      for p in mtd.budget(profile_name).protocols)

    def mtd01(r):
        return _ft(lambda exp: RECIPES.build(r))
    return (
        Entry("STD", "00/01", "clean training", _std, setup=mtd01("std")),
        Entry("CLS-1step", "01", fgsm + " on the classification loss", _mtd_row("cls"), setup=mtd01("cls")),
        Entry("LOC-1step", "01", fgsm + " on the localisation loss", _mtd_row("loc"), setup=mtd01("loc")),
        Entry("CON-1step", "01", fgsm + " on the multibox loss", _mtd_row("con"), setup=mtd01("con")),
        Entry("MTD-1step", "01", fgsm + " per task domain, the larger-loss one (MTD)", _mtd_row("mtd"),
              setup=mtd01("mtd")),
        *protocols,
        Entry("MTD-PGD10", "-", "MTD with 10 PGD steps per task domain", _never,
              "no notebook trains it: notebook 02 only times its recipe (training cost)",
              setup=_ft(lambda exp: RECIPES.build("mtd", steps=10))),
        Entry("MTD-fast", "02", free + ", MTD", _cwat_row("mtd-fast"), setup=_cwat_setup("mtd-fast")),
        *(Entry(cwat.model_name(r, cb.train_steps), "02", f"{pgd}, {r.upper()}", _cwat_row(r), setup=_cwat_setup(r))
          for r in ("toat", "owat", "cwat")),
        Entry("CWAT-fast", "02", free + ", CWAT", _cwat_row("cwat-fast"), setup=_cwat_setup("cwat-fast")),
        *(Entry(v, "03", f"fine-tuned from STD, {how}", _robustdet_row(v), setup=_robustdet_setup(v))
          for v, how in (("RobustDet", "RobustDet (ARD + AID)"), ("RobustDet*", "RobustDet with CFR"))),
        *(Entry(f"{d} ({setting})", "04", f"fine-tuned from STD on stage 1 of {setting}, {d}", _advamd_row(d),
                setup=_advamd_setup(d)) for d in ("Adv-Train", "Def-Distill", "AdvAmd")),
        Entry("MagNet", "04", "STD behind MagNet's reformer and rejection detector (the detector is not retrained)",
              _magnet),
    )


def cached_models(exp, names=None, seed: int | None = None) -> tuple[dict, list[str]]:
    """``({name: TrainedModel}, [missing names])`` for the :func:`entries` ``names`` (default: all)
    of ``seed`` (default: the experiment's): the cached ones, and those no notebook has trained
    yet under this profile and data.

    Raises:
        KeyError: an unknown name (naming the known ones).
    """
    by_name = {e.name: e for e in entries(exp.profile.name)}
    names = list(by_name) if names is None else list(names)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown catalogue models {unknown}; known under profile {exp.profile.name!r}: {list(by_name)}")
    seed = exp.seed if seed is None else seed
    found, missing = {}, []
    for n in names:
        tm = by_name[n].get(exp, seed)
        if tm is None:
            missing.append(n)
        else:
            found[n] = tm
    return found, missing
