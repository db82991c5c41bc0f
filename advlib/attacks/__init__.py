"""Detector attacks: one projected-gradient engine (:mod:`.engine`), many objectives
(:mod:`.objectives`, :mod:`.mda`), the papers' settings by name (:mod:`.presets`).

``attack(model, images, targets, spec)`` crafts adversarial examples for a batch.
"""

from advlib.attacks.engine import AttackSpec, attack, image_generators, project, run_attack, start_point
from advlib.attacks.mda import MDAObjective, task_input_gradients
from advlib.attacks.objectives import OBJECTIVES, Objective, make_objective
from advlib.attacks.presets import EPS, PRESETS, STEP, fgsm, pgd, preset

__all__ = ["AttackSpec", "EPS", "MDAObjective", "OBJECTIVES", "Objective", "PRESETS", "STEP", "attack", "fgsm",
           "image_generators", "make_objective", "pgd", "preset", "project", "run_attack", "start_point",
           "task_input_gradients"]
