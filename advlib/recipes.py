"""Training recipes: a batch -> a loss. The one loop in :mod:`advlib.train` runs them all.

- ``std``: clean multibox loss (:class:`advlib.train.StandardRecipe`).
- ``cls`` / ``loc`` / ``con``: adversarial training on A_cls, A_loc or the multibox loss (MTD's
  single-domain baselines; CON is conventional task-agnostic adversarial training).
- ``mtd``: MTD Algorithm 1: a random start in the ε-ball, one FGSM step of size ε inside each
  task domain, per image the example with the larger multibox loss, trained on with the
  multibox loss. ``steps > 1`` gives the PGD-k variant used by CWAT's re-implementation.
"""

from __future__ import annotations

from torch import Tensor

from advlib.attacks import AttackSpec, attack
from advlib.losses import match_anchors, multibox_terms, ssd_loss
from advlib.train import StandardRecipe


class AdversarialRecipe:
    """Train on the adversarial examples of ``spec`` (crafted with BN in eval mode, then the
    multibox loss on them in train mode). Matching is done once per batch and shared by the
    attack and the loss.

    Args:
        name: recipe name (``cls``, ``loc``, ``con``, ``mtd``...).
        spec: the attack that makes the training examples.
        clean_weight: weight of an extra clean multibox loss (0 = adversarial only, as MTD).
    """

    def __init__(self, name: str, spec: AttackSpec, clean_weight: float = 0.0) -> None:
        self.name = name
        self.attack_spec = spec
        self.clean_weight = clean_weight

    def __call__(self, model, images: Tensor, targets: list[dict]) -> Tensor:
        matched = match_anchors(model.anchors, targets, model.box_coder)
        adv = attack(model, images, targets, self.attack_spec, matched=matched)  # reuses this batch's matching
        model.train()
        loss = ssd_loss(multibox_terms(model(adv), matched)).mean()
        if self.clean_weight > 0:
            loss = loss + self.clean_weight * ssd_loss(multibox_terms(model(images), matched)).mean()
        return loss

    def spec(self) -> dict:
        """Part of the model-cache key."""
        return {"recipe": self.name, "attack": self.attack_spec.to_dict(), "clean_weight": self.clean_weight}


def mtd_attack_spec(eps: float = 8 / 255, steps: int = 1, step_size: float | None = None, seed: int = 0) -> AttackSpec:
    """The MTD training attack: random start, ``steps`` signed steps (1 step of ε by default)."""
    return AttackSpec("mda", eps=eps, step_size=eps if (steps == 1 and step_size is None) else (step_size or 2 / 255),
                      steps=steps, random_start=True, seed=seed)


def make_recipe(name: str, eps: float = 8 / 255, steps: int = 1, seed: int = 0):
    """A recipe by name: ``std``, ``cls``, ``loc``, ``con``, ``mtd`` (MTD's Table 2 rows)."""
    if name == "std":
        return StandardRecipe()
    step = eps if steps == 1 else 2 / 255
    task = {"cls": "cls", "loc": "loc", "con": "multibox"}
    if name in task:
        return AdversarialRecipe(name, AttackSpec(task[name], eps=eps, step_size=step, steps=steps,
                                                  random_start=True, seed=seed))
    if name == "mtd":
        return AdversarialRecipe("mtd", mtd_attack_spec(eps, steps, seed=seed))
    raise ValueError(f"unknown recipe {name!r}; expected std, cls, loc, con or mtd")


__all__ = ["AdversarialRecipe", "make_recipe", "mtd_attack_spec"]
