"""Training recipes by name: a recipe turns a batch into a loss; the one loop in
:mod:`advlib.train` runs them all.

The core registers ``std`` (the clean multibox loss) and provides :class:`AdversarialRecipe`
(train on the adversarial examples of any attack spec). Papers register their own recipes as
configurations of it in their modules (``advlib.papers.mtd`` registers ``cls``, ``loc``, ``con``
and ``mtd``): ``RECIPES.add("name", factory)``, where ``factory(**params)`` returns a recipe.
"""

from __future__ import annotations

from torch import Tensor

from advlib.attacks import AttackSpec, attack
from advlib.losses import match_anchors, multibox_terms, ssd_loss
from advlib.registry import Registry
from advlib.train import Recipe, StandardRecipe

#: recipe name -> factory(**params) -> Recipe
RECIPES: Registry = Registry("recipe", hint="paper recipes register when their module is imported, "
                                              "e.g. `import advlib.papers.mtd`")
RECIPES.add("std", StandardRecipe)


class AdversarialRecipe:
    """Train on the adversarial examples of ``spec`` (crafted with BN in eval mode, then the
    multibox loss on them in train mode). Matching is done once per batch and shared by the
    attack and the loss.

    Args:
        name: recipe name (part of the model-cache key).
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


def make_recipe(name: str, **params) -> Recipe:
    """The recipe registered as ``name``, built with ``params`` (checked by name).

    Raises:
        ValueError: unknown recipe (the registered names are listed) or unknown parameter.
    """
    return RECIPES.build(name, **params)


__all__ = ["AdversarialRecipe", "RECIPES", "make_recipe"]
