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

from dataclasses import dataclass
from typing import Callable

from advlib.papers import advamd, cwat, mtd, robustdet  # importing mtd registers cls/loc/con/mtd


@dataclass(frozen=True)
class Entry:
    """A model of one notebook: ``get(exp, seed)`` returns its
    :class:`~advlib.experiment.TrainedModel` from the cache, or ``None`` when not cached."""

    name: str
    notebook: str
    training: str
    get: Callable


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


def _advamd_row(defence: str):
    def get(exp, seed):
        ab = advamd.budget(exp.profile.name)
        s1 = advamd.stage1(exp, ab, "ssd", *ab.seed_setting, seed=seed, cached_only=True)
        if s1 is None:
            return None
        return advamd.fine_tuned(exp, ab, "ssd", advamd.defence_recipe(defence, s1, ab), seed, cached_only=True)
    return get


def entries(profile_name: str) -> tuple[Entry, ...]:
    """The SSD models of notebooks 00-04 under a profile (the profile's backbone), named as their
    notebooks name them under that profile's budgets (e.g. ``CWAT-1step`` when notebook 02's
    budget trains with one step, ``CWAT`` with the paper's PGD-10)."""
    cb, ab = cwat.budget(profile_name), advamd.budget(profile_name)
    setting = advamd.setting_name(*ab.seed_setting)
    fgsm = f"fine-tuned from STD, one FGSM step of ε = {mtd.EPS * 255:g}/255"
    pgd = f"fine-tuned from STD, {cb.train_steps}-step PGD at ε = {cwat.EPS * 255:g}/255"
    free = f"fine-tuned from STD, free adversarial training ({cb.replays} replays)"
    return (
        Entry("STD", "00/01", "clean training", _std),
        Entry("CLS-1step", "01", fgsm + " on the classification loss", _mtd_row("cls")),
        Entry("LOC-1step", "01", fgsm + " on the localisation loss", _mtd_row("loc")),
        Entry("CON-1step", "01", fgsm + " on the multibox loss", _mtd_row("con")),
        Entry("MTD-1step", "01", fgsm + " per task domain, the larger-loss one (MTD)", _mtd_row("mtd")),
        Entry("MTD-fast", "02", free + ", MTD", _cwat_row("mtd-fast")),
        *(Entry(cwat.model_name(r, cb.train_steps), "02", f"{pgd}, {r.upper()}", _cwat_row(r))
          for r in ("toat", "owat", "cwat")),
        Entry("CWAT-fast", "02", free + ", CWAT", _cwat_row("cwat-fast")),
        Entry("RobustDet", "03", "fine-tuned from STD, RobustDet (ARD + AID)", _robustdet_row("RobustDet")),
        Entry("RobustDet*", "03", "fine-tuned from STD, RobustDet with CFR", _robustdet_row("RobustDet*")),
        *(Entry(f"{d} ({setting})", "04", f"fine-tuned from STD on stage 1 of {setting}, {d}", _advamd_row(d))
          for d in ("Adv-Train", "Def-Distill", "AdvAmd")),
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
