"""Training recipes by name: a recipe turns a batch into a loss; the one loop in
:mod:`advlib.train` runs them all.

The core registers ``std`` (the clean multibox loss) and provides :class:`AdversarialRecipe`
(train on the adversarial examples of any attack spec). Papers register their own recipes as
configurations of it in their modules (``advlib.papers.mtd`` registers ``cls``, ``loc``, ``con``
and ``mtd``): ``RECIPES.add("name", factory)``, where ``factory(**params)`` returns a recipe.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from advlib.attacks import AttackSpec, attack
from advlib.losses import REDUCERS, match_targets, multibox_terms, ssd_loss
from advlib.registry import Registry
from advlib.train import Recipe, StandardRecipe

#: recipe name -> factory(**params) -> Recipe
RECIPES: Registry = Registry("recipe", hint="paper recipes register when their module is imported; the "
                                              "installed package's advlib.plugins entry points import them "
                                              "on lookup: reinstall with `pip install -e .` if this list lacks them")
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
        matched = match_targets(model, targets)
        adv = attack(model, images, targets, self.attack_spec, matched=matched)  # reuses this batch's matching
        model.train()
        loss = ssd_loss(multibox_terms(model(adv), matched)).mean()
        if self.clean_weight > 0:
            loss = loss + self.clean_weight * ssd_loss(multibox_terms(model(images), matched)).mean()
        return loss

    def spec(self) -> dict:
        """Part of the model-cache key."""
        return {"recipe": self.name, "attack": self.attack_spec.to_dict(), "clean_weight": self.clean_weight}


class PretrainedBackbone:
    """A recipe whose model starts from another trained detector's backbone: our stand-in for the
    ImageNet-pretrained backbones every paper's detectors start from (no downloads here; the source
    is a detector trained on the same data, e.g. the STD SSD of the same seed). Trains with
    ``inner`` (default: STD); the source model's cache key enters the spec, so the model is
    retrained when its source changes.

    Args:
        source: the trained detector whose backbone is copied (any family: :func:`backbone_of`).
        source_key: its model-cache key.
        inner: the recipe that trains (its name is this recipe's name).
    """

    def __init__(self, source, source_key: str, inner: Recipe | None = None) -> None:
        from advlib.models import backbone_of

        self.inner = inner or StandardRecipe()
        self.name = self.inner.name
        self.source_key = str(source_key)
        self._state = {k: v.detach().clone() for k, v in backbone_of(source).state_dict().items()}

    def __call__(self, model, images: Tensor, targets: list[dict]) -> Tensor:
        return self.inner(model, images, targets)

    def prepare_model(self, model):
        """Copy the source's backbone into a freshly built model (the cache then loads a trained
        model's own weights over it)."""
        from advlib.models import backbone_of

        backbone_of(model).load_state_dict(self._state)
        return model

    def spec(self) -> dict:
        return {**self.inner.spec(), "backbone_from": self.source_key}


class FreeAdversarialRecipe:
    """Free adversarial training (Shafahi et al. 2019; CWAT Algorithm 1): each minibatch is
    replayed ``replays`` times by the training loop; per replay one forward pass at ``x + δ`` in
    train mode and two backward passes from it: the δ-gradient of the attack loss (the reducer
    the matching evaluation attack maximises, e.g. ``cwa`` for CWA, so clipping and class-wise
    averaging have one implementation) and, in the loop, the θ-gradient of the multibox loss.
    Then ``δ ← clip_ε(δ + ε·sign(∇_δ))`` (Algorithm 1, lines 10-11). δ starts at zero and is
    carried across replays *and* minibatches, as in Shafahi et al. (reset when the batch shape
    changes); it is part of the recipe's checkpointed state.

    With several ``domains`` (MTD-fast: ``("cls", "loc")``) each domain carries its own δ, all
    are forwarded as one stacked batch, each δ follows its own task loss, and the parameters
    train per image on the domain whose example has the larger multibox loss (MTD Algorithm 1's
    choice): still one forward and two backward passes per iteration.

    Args:
        name: recipe name (part of the model-cache key).
        domains: reducer names in :data:`advlib.losses.REDUCERS`, one δ each.
        eps: the L∞ bound and step (Algorithm 1 steps by ε).
        replays: m, the minibatch replays (the loop runs them; 4 in CWAT).
        **params: the reducers' parameters (e.g. ``beta=6.0``), checked by name.
    """

    def __init__(self, name: str, domains: tuple[str, ...] = ("cwa",), eps: float = 8 / 255, replays: int = 4,
                 **params) -> None:
        if not domains:
            raise ValueError("FreeAdversarialRecipe needs at least one domain")
        for d in domains:
            if d not in REDUCERS:
                raise ValueError(f"unknown reducer {d!r}; expected one of {sorted(REDUCERS)}")
        if eps < 0 or replays < 1:
            raise ValueError(f"eps must be >= 0 and replays >= 1, got eps={eps}, replays={replays}")
        self.name, self.domains, self.eps, self.replays = name, tuple(domains), float(eps), int(replays)
        self.params = dict(sorted(params.items()))
        takes = [set(inspect.signature(REDUCERS[d]).parameters) - {"terms"} for d in self.domains]
        unused = set(params).difference(*takes)
        if unused:
            raise ValueError(f"recipe {name!r}: no domain takes parameter(s) {sorted(unused)}")
        self.reducers = [functools.partial(REDUCERS[d], **{k: v for k, v in params.items() if k in t})
                         for d, t in zip(self.domains, takes)]
        self.delta: Tensor | None = None

    def __call__(self, model, images: Tensor, targets: list[dict]) -> Tensor:
        k, b = len(self.domains), images.shape[0]
        shape = (k, *images.shape)
        if self.delta is None or tuple(self.delta.shape) != shape:
            self.delta = torch.zeros(shape, dtype=images.dtype, device=images.device)
        self.delta = self.delta.to(images.device)  # a checkpointed δ comes back on the CPU
        matched = match_targets(model, targets)
        delta = self.delta.detach().requires_grad_(True)
        x = (images.unsqueeze(0) + delta).clamp(0.0, 1.0).flatten(0, 1)  # [k, B, 3, H, W] -> [k*B, 3, H, W]
        model.train()
        terms = multibox_terms(model(x), matched.repeat(k))
        attack_loss = sum(red(terms)[j * b:(j + 1) * b].sum() for j, red in enumerate(self.reducers))
        (grad,) = torch.autograd.grad(attack_loss, delta, retain_graph=True)  # backward 1: δ
        with torch.no_grad():
            self.delta = (self.delta + self.eps * grad.sign()).clamp(-self.eps, self.eps)
        per_image = ssd_loss(terms).view(k, b)  # [k*B] -> [k, B]
        pick = per_image.detach().argmax(0)  # per image, the domain with the larger loss (k = 1: the one)
        return per_image.gather(0, pick[None])[0].mean()  # backward 2 (θ) runs in the training loop

    def spec(self) -> dict:
        """Part of the model-cache key."""
        return {"recipe": self.name, "free": {"domains": list(self.domains), "eps": self.eps,
                                              "replays": self.replays, "params": self.params}}

    def state_dict(self) -> dict:
        return {} if self.delta is None else {"delta": self.delta.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.delta = state.get("delta")


def make_recipe(name: str, **params) -> Recipe:
    """The recipe registered as ``name``, built with ``params`` (checked by name).

    Raises:
        ValueError: unknown recipe (the registered names are listed) or unknown parameter.
    """
    return RECIPES.build(name, **params)


__all__ = ["AdversarialRecipe", "FreeAdversarialRecipe", "PretrainedBackbone", "RECIPES", "make_recipe"]
