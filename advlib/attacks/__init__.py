"""Detector attacks: one projected-gradient engine (:mod:`.engine`), many objectives
(:mod:`.objectives`, :mod:`.mda`), the papers' settings by name (:mod:`.presets`),
multi-node SGLRP relevance maps for RAD (:mod:`.relevance` over the rule chain in :mod:`.lrp`).

``attack(model, images, targets, spec)`` crafts adversarial examples for a batch.
"""

from advlib.attacks.engine import AttackSpec, attack, image_generators, project, run_attack, start_point
from advlib.attacks.mda import MDAObjective, task_input_gradients
from advlib.attacks.objectives import OBJECTIVES, Objective, make_objective
from advlib.attacks.presets import EPS, PRESETS, STEP, fgsm, pgd, preset
from advlib.attacks.relevance import RelevanceMaps, initial_relevance, rad_loss, relevance_map, select_nodes, sglrp

__all__ = ["AttackSpec", "EPS", "MDAObjective", "OBJECTIVES", "Objective", "PRESETS", "STEP", "attack", "fgsm",
           "RelevanceMaps", "image_generators", "initial_relevance", "make_objective", "pgd", "preset", "project",
           "rad_loss", "relevance_map", "run_attack", "select_nodes", "sglrp", "start_point", "task_input_gradients"]
