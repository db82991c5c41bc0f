"""Detector attacks: one projected-gradient engine, many objectives.

``attack(model, images, targets, spec)`` runs the attack ``spec`` describes; ``PRESETS`` holds
the papers' settings by name (``preset("A_cls")``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from advlib.attacks.engine import AttackSpec, image_generators, project, run_attack, start_point
from advlib.attacks.objectives import (DAGObjective, DfoolObjective, RAPObjective, ShrinkObjective,
                                       TaskObjective, TaskState)
from advlib.losses import cls_loss, loc_loss, match_anchors, multibox_terms, ssd_loss

_OBJECTIVE_CLASSES = {"dag": DAGObjective, "dfool": DfoolObjective, "shrink": ShrinkObjective, "rap": RAPObjective}
OBJECTIVES = (*TaskObjective.NAMES, *_OBJECTIVE_CLASSES, "mda")


def make_objective(spec: AttackSpec):
    """The objective object named by ``spec.objective`` (with ``spec.params``)."""
    name = spec.objective
    if name in TaskObjective.NAMES:
        return TaskObjective(name, **spec.kwargs)
    if name in _OBJECTIVE_CLASSES:
        return _OBJECTIVE_CLASSES[name](seed=spec.seed, **spec.kwargs)
    raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVES}")


def attack(model, images: Tensor, targets: list[dict] | None, spec: AttackSpec,
           snapshots: list[int] | None = None, generators: list | None = None, matched=None):
    """Craft adversarial examples for a batch.

    Args:
        model: detector (``SSDDetector``-like: ``anchors``, ``box_coder``, dense outputs).
        images: ``[B, 3, H, W]`` in ``[0, 1]``.
        targets: ground truth per image (objectives that use it; ``None`` for dfool/shrink/rap).
        spec: the attack.
        snapshots, generators: see :func:`~advlib.attacks.engine.run_attack`.
        matched: an anchor matching of ``targets`` the caller already has (e.g. a training
            batch's); ground-truth objectives reuse it instead of matching again.

    Returns:
        ``[B, 3, H, W]`` adversarial images (``{steps: images}`` with ``snapshots``).
    """
    if spec.objective == "mda":
        return mda_attack(model, images, targets, spec, snapshots, generators, matched)
    objective = make_objective(spec)
    if matched is not None and isinstance(objective, TaskObjective):
        state = TaskState(matched)
    else:
        state = objective.prepare(model, images, targets)
    return run_attack(model, images, objective, spec, state, snapshots, generators)


def mda_attack(model, images: Tensor, targets: list[dict], spec: AttackSpec,
               snapshots: list[int] | None = None, generators: list | None = None, matched=None):
    """MTD's task-domain attack: an A_cls and an A_loc example with the same settings, then *per
    image* the one with the larger multibox loss (the public RobustDet code picks per batch).

    Both domains start from the same random point (Algorithm 1's x̃). A one-step attack (MTD's
    training attack) differentiates both task losses from one forward pass at x̃. ``matched``
    reuses a matching the caller already has (the training recipe's).
    """
    if targets is None:
        raise ValueError("the MDA attack needs ground-truth targets")
    if matched is None:
        matched = match_anchors(model.anchors, targets, model.box_coder)
    one_step = (spec.steps == 1 and spec.update == "sign" and not spec.transforms and spec.momentum == 0
                and not spec.early_stop)
    if one_step:
        if snapshots is not None and list(snapshots) != [1]:
            raise ValueError(f"snapshots must lie in 1..1, got {snapshots}")
        x_cls, x_loc = _two_domain_step(model, images, matched, spec, generators)
        if snapshots is not None:
            x_cls, x_loc = {1: x_cls}, {1: x_loc}
    else:
        x_cls, x_loc = (attack(model, images, targets, spec.replace(objective=task), snapshots, generators, matched)
                        for task in ("cls", "loc"))
    if snapshots is not None:
        return {k: _pick_larger_loss(model, matched, x_cls[k], x_loc[k]) for k in x_cls}
    return _pick_larger_loss(model, matched, x_cls, x_loc)


def _two_domain_step(model, images: Tensor, matched, spec: AttackSpec, generators) -> tuple[Tensor, Tensor]:
    """One signed step in each task domain from a shared start: one forward, two input gradients."""
    was_training = model.training
    model.eval()
    x = images.detach()
    try:
        gens = generators if generators is not None else (image_generators(x, spec.seed) if spec.random_start else [])
        with torch.no_grad():
            x0 = start_point(x, spec, gens)
        xa = x0.requires_grad_(True)
        with torch.enable_grad():
            terms = multibox_terms(model(xa), matched)
            (g_cls,) = torch.autograd.grad(cls_loss(terms).sum(), xa, retain_graph=True)
            (g_loc,) = torch.autograd.grad(loc_loss(terms).sum(), xa)
        with torch.no_grad():
            x0 = x0.detach()
            return (project(x0 + spec.step_size * g_cls.sign(), x, spec.eps),
                    project(x0 + spec.step_size * g_loc.sign(), x, spec.eps))
    finally:
        model.train(was_training)


def _pick_larger_loss(model, matched, x_a: Tensor, x_b: Tensor) -> Tensor:
    """Per image, the example with the larger multibox loss (MTD Algorithm 1, line 6)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            l_a = ssd_loss(multibox_terms(model(x_a), matched))
            l_b = ssd_loss(multibox_terms(model(x_b), matched))
    finally:
        model.train(was_training)
    return torch.where((l_a >= l_b).view(-1, 1, 1, 1), x_a, x_b)


def pgd(objective: str, eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10,
        random_start: bool = True, seed: int = 0, **params) -> AttackSpec:
    """A PGD spec on a named objective (ε and step in ``[0, 1]`` units)."""
    return AttackSpec(objective=objective, eps=eps, step_size=step_size, steps=steps,
                      random_start=random_start, seed=seed, params=tuple(sorted(params.items())))


def fgsm(objective: str, eps: float = 8 / 255, seed: int = 0, **params) -> AttackSpec:
    """FGSM: one signed step of size ε from the clean image."""
    return AttackSpec(objective=objective, eps=eps, step_size=eps, steps=1, random_start=False,
                      seed=seed, params=tuple(sorted(params.items())))


def dag(eps: float = 8 / 255, steps: int = 150, gamma: float = 0.5 / 255, seed: int = 0) -> AttackSpec:
    """DAG as the CWAT/RobustDet papers run it on SSD: L∞-normalised steps of γ = 0.5 (0-255 scale),
    up to 150 steps with per-image early stop, bounded by ε."""
    return AttackSpec(objective="dag", eps=eps, step_size=gamma, steps=steps, random_start=False,
                      update="linf", early_stop=True, seed=seed)


#: The papers' settings. ε and steps in ``[0, 1]`` units; "ε = 8" is 8/255.
PRESETS: dict[str, Callable[..., AttackSpec]] = {
    # MTD (Zhang & Wang 2019), CWAT, RobustDet: PGD-10, ε = 8, step 2 (RobustDet: ε/steps varies)
    "A_cls": lambda steps=10, eps=8 / 255, seed=0: pgd("cls", eps, 2 / 255, steps, seed=seed),
    "A_loc": lambda steps=10, eps=8 / 255, seed=0: pgd("loc", eps, 2 / 255, steps, seed=seed),
    "multibox": lambda steps=10, eps=8 / 255, seed=0: pgd("multibox", eps, 2 / 255, steps, seed=seed),
    "MDA": lambda steps=10, eps=8 / 255, seed=0: pgd("mda", eps, 2 / 255, steps, seed=seed),
    # CWAT (Chen et al. 2021): β = 6
    "TOA": lambda steps=10, eps=8 / 255, seed=0: pgd("toa", eps, 2 / 255, steps, seed=seed, beta_cls=6.0, beta_loc=6.0),
    "OWA": lambda steps=10, eps=8 / 255, seed=0: pgd("owa", eps, 2 / 255, steps, seed=seed, beta=6.0),
    "CWA": lambda steps=10, eps=8 / 255, seed=0: pgd("cwa", eps, 2 / 255, steps, seed=seed, beta=6.0),
    "DAG": lambda steps=150, eps=8 / 255, seed=0: dag(eps, steps, seed=seed),
    "RAP": lambda steps=10, eps=8 / 255, seed=0: AttackSpec("rap", eps, 2 / 255, steps, random_start=False,
                                                          update="l1", seed=seed),
    # RAD's Table 3 detection baselines: ε = 16, α = 2, 10 steps
    "Dfool": lambda steps=10, eps=16 / 255, seed=0: AttackSpec("dfool", eps, 2 / 255, steps, random_start=False,
                                                             update="l1", seed=seed),
    "Loc": lambda steps=10, eps=16 / 255, seed=0: AttackSpec("shrink", eps, 2 / 255, steps, random_start=False,
                                                           update="l1", seed=seed),
    "RAD-PGD": lambda steps=10, eps=16 / 255, seed=0: pgd("multibox", eps, 2 / 255, steps, seed=seed),
}


def preset(name: str, **kwargs) -> AttackSpec:
    """A named paper setting, e.g. ``preset("CWA")`` or ``preset("A_cls", steps=20)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)


__all__ = ["AttackSpec", "OBJECTIVES", "PRESETS", "attack", "dag", "fgsm", "make_objective", "mda_attack",
           "pgd", "preset", "project", "run_attack"]
