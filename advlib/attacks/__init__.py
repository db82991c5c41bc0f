"""Detector attacks: one projected-gradient engine, many objectives.

``attack(model, images, targets, spec)`` runs the attack ``spec`` describes; ``PRESETS`` holds
the papers' settings by name.
"""

from __future__ import annotations

from torch import Tensor

from advlib.attacks.engine import AttackSpec, project, run_attack
from advlib.attacks.objectives import TaskObjective


def make_objective(spec: AttackSpec):
    """The objective object named by ``spec.objective`` (with ``spec.params``)."""
    if spec.objective in TaskObjective.REDUCERS:
        return TaskObjective(spec.objective)
    raise ValueError(f"unknown objective {spec.objective!r}; expected one of {sorted(OBJECTIVES)}")


OBJECTIVES = tuple(TaskObjective.REDUCERS)


def attack(model, images: Tensor, targets: list[dict] | None, spec: AttackSpec) -> Tensor:
    """Craft adversarial examples for a batch.

    Args:
        model: detector (``SSDDetector``-like: ``anchors``, ``box_coder``, dense outputs).
        images: ``[B, 3, H, W]`` in ``[0, 1]``.
        targets: ground truth per image (objectives that use it).
        spec: the attack.

    Returns:
        ``[B, 3, H, W]`` adversarial images.
    """
    objective = make_objective(spec)
    state = objective.prepare(model, images, targets)
    return run_attack(model, images, objective, spec, state)


def pgd(objective: str, eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10,
        random_start: bool = True, seed: int = 0, **params) -> AttackSpec:
    """A PGD spec on a named objective (ε, step in ``[0, 1]`` units)."""
    return AttackSpec(objective=objective, eps=eps, step_size=step_size, steps=steps,
                      random_start=random_start, seed=seed, params=tuple(sorted(params.items())))


def fgsm(objective: str, eps: float = 8 / 255, seed: int = 0, **params) -> AttackSpec:
    """FGSM: one signed step of size ε from the clean image."""
    return AttackSpec(objective=objective, eps=eps, step_size=eps, steps=1, random_start=False,
                      seed=seed, params=tuple(sorted(params.items())))


__all__ = ["AttackSpec", "OBJECTIVES", "attack", "fgsm", "make_objective", "pgd", "project", "run_attack"]
