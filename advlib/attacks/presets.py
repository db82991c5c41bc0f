"""Attack specs by name: the papers' settings as data.

``PRESETS["A_cls"]`` is an :class:`~advlib.attacks.engine.AttackSpec`; change a field with
``PRESETS["A_cls"].replace(steps=20)`` or ``preset("A_cls", steps=20)``. ε and step sizes are in
``[0, 1]`` units (the papers' "ε = 8" is ``8/255``). Register a new one with
``PRESETS.add(name, spec)`` from the module that needs it.
"""

from __future__ import annotations

from advlib.attacks.engine import AttackSpec
from advlib.registry import Registry

EPS, STEP = 8 / 255, 2 / 255


def pgd(objective: str, eps: float = EPS, step_size: float = STEP, steps: int = 10,
        random_start: bool = True, seed: int = 0, **params) -> AttackSpec:
    """A PGD spec on a named objective (signed steps)."""
    return AttackSpec(objective=objective, eps=eps, step_size=step_size, steps=steps,
                      random_start=random_start, seed=seed, params=tuple(sorted(params.items())))


def fgsm(objective: str, eps: float = EPS, seed: int = 0, **params) -> AttackSpec:
    """FGSM: one signed step of size ε from the clean image."""
    return AttackSpec(objective=objective, eps=eps, step_size=eps, steps=1, random_start=False,
                      seed=seed, params=tuple(sorted(params.items())))


#: name -> AttackSpec
PRESETS: Registry = Registry("attack preset")
# MTD (Zhang & Wang 2019), CWAT, RobustDet: PGD-10, ε = 8, step 2, random start
for _name, _objective in (("A_cls", "cls"), ("A_loc", "loc"), ("multibox", "multibox"), ("MDA", "mda")):
    PRESETS.add(_name, pgd(_objective))
# CWAT (Chen et al. 2021): β = 6
PRESETS.add("TOA", pgd("toa", beta_cls=6.0, beta_loc=6.0))
PRESETS.add("OWA", pgd("owa", beta=6.0))
PRESETS.add("CWA", pgd("cwa", beta=6.0))
# DAG as MTD/CWAT/RobustDet tabulate it: "all the attack methods incorporate sgn(·) into the PGD
# steps" (MTD §5.1): signed steps of 2/255 from the clean image, 10 steps (20 in the voc
# budget), targets attacked until their true-class probability drops below the evaluation's
# score threshold (see DAGObjective).
PRESETS.add("DAG", AttackSpec("dag", EPS, STEP, 10, random_start=False, early_stop=True))
# DAG as Xie et al. wrote it: L∞-normalised steps of γ = 0.5 (0-255 scale), up to 150 steps,
# stop at the argmax flip; bounded by ε here. It spends little of its budget (mean |δ| 0.26/255
# after 40 steps on our STD): kept, labelled, for comparison only.
PRESETS.add("DAG-orig", AttackSpec("dag", EPS, 0.5 / 255, 150, random_start=False, update="linf",
                                   early_stop=True, params=(("until", "argmax"),)))
# RAP (MTD §5.8: "PGD step 20"): signed steps, a shape target that leaves IoU < 0.5 when reached
PRESETS.add("RAP", AttackSpec("rap", EPS, STEP, 20, random_start=False))
PRESETS.add("RAP-label", AttackSpec("rap", EPS, STEP, 20, random_start=False, params=(("shape_weight", 0.0),)))
PRESETS.add("RAP-shape", AttackSpec("rap", EPS, STEP, 20, random_start=False, params=(("label_weight", 0.0),)))
# RAD's Table 3 detection baselines: ε = 16, α = 2, 10 steps, mean-L1-normalised steps
PRESETS.add("Dfool", AttackSpec("dfool", 16 / 255, STEP, 10, random_start=False, update="l1"))
PRESETS.add("Loc", AttackSpec("shrink", 16 / 255, STEP, 10, random_start=False, update="l1"))
PRESETS.add("RAD-PGD", pgd("multibox", eps=16 / 255))
# RAD (Chen et al.): 10 mean-L1-normalised steps of 2/255 within 16/255 on the relevance of the top-20
# boxes' classes, no random start; RAD-SI adds the official scale copies x * 0.5^i, i = 0..3, each
# gradient L1-normalised before the average (the paper's Table 3 RAD)
PRESETS.add("RAD", AttackSpec("rad", 16 / 255, STEP, 10, random_start=False, update="l1"))
PRESETS.add("Gaussian", AttackSpec("noise", 1.0, 9 / 255, 1, random_start=False, params=(("sigma", 9 / 255),)))
PRESETS.add("DAG-top", AttackSpec("dag", 16 / 255, STEP, 10, random_start=False, update="l1",
                                  params=(("boxes", "top"), ("top_k", 3000))))
PRESETS.add("RAD-SI", AttackSpec("rad", 16 / 255, STEP, 10, random_start=False, update="l1", transforms=("si",),
                                 si_copies=4, si_normalise=True))


def preset(name: str, **changes) -> AttackSpec:
    """A named paper setting with fields changed, e.g. ``preset("A_cls", steps=20, seed=1)``.

    Raises:
        ValueError: unknown preset (the registered names are listed) or unknown field.
    """
    spec = PRESETS[name]
    fields = set(AttackSpec.__dataclass_fields__)
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(f"preset {name!r}: AttackSpec has no field {', '.join(map(repr, unknown))}")
    return spec.replace(**changes) if changes else spec


__all__ = ["EPS", "PRESETS", "STEP", "fgsm", "pgd", "preset"]
