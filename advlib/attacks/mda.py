"""MTD's task-domain attack (MDA): an A_cls and an A_loc example, then per image the one with the
larger multibox loss (Zhang & Wang, ICCV 2019, Algorithm 1), and the "one forward pass, two task
gradients" step it shares with the task-gradient analysis."""

from __future__ import annotations

import torch
from torch import Tensor

from advlib.attacks.engine import AttackSpec, image_generators, project, start_point
from advlib.attacks.objectives import OBJECTIVES, Objective, ground_truth_matching
from advlib.losses import Matched, cls_loss, loc_loss, multibox_terms, ssd_loss
from advlib.utils import eval_mode


def task_input_gradients(model, x: Tensor, matched: Matched) -> tuple[Tensor, Tensor]:
    """Input gradients of the summed classification and localisation losses at ``x``, from one
    forward pass (each task loss differentiated from the same graph). Call in eval mode.

    Shape:
        x ``[B, 3, H, W]`` -> ``(g_cls, g_loc)``, each ``[B, 3, H, W]``.
    """
    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        terms = multibox_terms(model(xa), matched)
        (g_cls,) = torch.autograd.grad(cls_loss(terms).sum(), xa, retain_graph=True)
        (g_loc,) = torch.autograd.grad(loc_loss(terms).sum(), xa)
    return g_cls.detach(), g_loc.detach()


@OBJECTIVES.register("mda")
class MDAObjective(Objective):
    """A composite objective: crafts an A_cls and an A_loc example with the same settings, then
    keeps per image the one with the larger multibox loss (the public RobustDet code picks per
    batch). Both domains start from the same random point (Algorithm 1's x̃); a one-step attack
    (MTD's training attack) differentiates both task losses from one forward pass at x̃."""

    name = "mda"

    def craft(self, model, images: Tensor, targets, spec: AttackSpec, snapshots=None, generators=None,
              matched: Matched | None = None):
        matched = ground_truth_matching(model, images, targets, matched, self.name)
        parts = components(spec)
        if parts is None:
            if snapshots is not None and list(snapshots) != [1]:
                raise ValueError(f"snapshots must lie in 1..1, got {snapshots}")
            x_cls, x_loc = _two_domain_step(model, images, matched, spec, generators)
            if snapshots is not None:
                x_cls, x_loc = {1: x_cls}, {1: x_loc}
        else:
            x_cls, x_loc = _craft(model, images, targets, parts, matched, snapshots, generators)
        if snapshots is not None:
            return {k: pick_larger_loss(model, matched, x_cls[k], x_loc[k]) for k in x_cls}
        return pick_larger_loss(model, matched, x_cls, x_loc)


def components(spec: AttackSpec) -> tuple[AttackSpec, AttackSpec] | None:
    """The A_cls and A_loc specs an MDA spec crafts apart and then picks between per image, i.e.
    exactly the attacks of those two columns (same ε, steps, start, seed), or ``None`` where MDA
    does not craft them apart (one signed step from a shared start: MTD's training attack)."""
    if spec.objective != "mda":
        raise ValueError(f"not an MDA spec: objective {spec.objective!r}")
    one_step = (spec.steps == 1 and spec.update == "sign" and not spec.transforms and spec.momentum == 0
                and not spec.early_stop)
    return None if one_step else (spec.replace(objective="cls"), spec.replace(objective="loc"))


def craft_with_parts(model, images: Tensor, targets: list[dict], spec: AttackSpec) -> dict[str, Tensor]:
    """An MDA batch and the two examples it chose from, from one craft of each: ``{"mda", "cls",
    "loc"}`` → ``[B, 3, H, W]`` (a table that also has the A_cls and A_loc columns gets all three
    for the price of the two attacks). ``spec`` must craft its parts apart (:func:`components`)."""
    parts = components(spec)
    if parts is None:
        raise ValueError(f"{spec.label()} does not craft A_cls and A_loc apart")
    matched = ground_truth_matching(model, images, targets, None, "mda")
    x_cls, x_loc = _craft(model, images, targets, parts, matched)
    return {"mda": pick_larger_loss(model, matched, x_cls, x_loc), "cls": x_cls, "loc": x_loc}


def _craft(model, images: Tensor, targets, parts: tuple[AttackSpec, AttackSpec], matched: Matched, snapshots=None,
           generators=None) -> tuple:
    """The A_cls and A_loc examples of :func:`components`, sharing one anchor matching."""
    return tuple(OBJECTIVES.build(p.objective).craft(model, images, targets, p, snapshots, generators, matched)
                 for p in parts)


def _two_domain_step(model, images: Tensor, matched: Matched, spec: AttackSpec, generators) -> tuple[Tensor, Tensor]:
    """One signed step in each task domain from a shared start: one forward, two input gradients."""
    x = images.detach()
    gens = generators if generators is not None else (image_generators(x, spec.seed) if spec.random_start else [])
    with torch.no_grad():
        x0 = start_point(x, spec, gens)
    return two_domain_step(model, x0, x, matched, spec.step_size, spec.eps)


def two_domain_step(model, x_adv: Tensor, origin: Tensor, matched: Matched, step_size: float,
                    eps: float) -> tuple[Tensor, Tensor]:
    """One signed step in each task domain from the iterate ``x_adv`` (one forward pass, two input
    gradients, in eval mode), each projected onto the ε-ball around ``origin`` and ``[0, 1]``.

    Returns:
        ``(x_cls, x_loc)``, each ``[B, 3, H, W]``; :func:`pick_larger_loss` chooses between them.
    """
    with eval_mode(model):
        g_cls, g_loc = task_input_gradients(model, x_adv, matched)
    with torch.no_grad():
        return (project(x_adv + step_size * g_cls.sign(), origin, eps),
                project(x_adv + step_size * g_loc.sign(), origin, eps))


def pick_larger_loss(model, matched: Matched, x_a: Tensor, x_b: Tensor) -> Tensor:
    """Per image, the example with the larger multibox loss (MTD Algorithm 1, line 6)."""
    with eval_mode(model), torch.no_grad():
        l_a = ssd_loss(multibox_terms(model(x_a), matched))
        l_b = ssd_loss(multibox_terms(model(x_b), matched))
    return torch.where((l_a >= l_b).view(-1, 1, 1, 1), x_a, x_b)


__all__ = ["MDAObjective", "components", "craft_with_parts", "pick_larger_loss", "task_input_gradients",
           "two_domain_step"]
