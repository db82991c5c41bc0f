"""Auxiliary batch norm (AdvAmd, Yu et al. 2023, §4; as Xie et al.'s AdvProp): a second BN beside
every BN, chosen by a context manager, so that adversarial samples are normalised by statistics
of their own.

* :func:`add_auxiliary_bn` converts a model in place: every ``nn.BatchNorm2d`` becomes a
  :class:`DualBatchNorm2d` holding the original (``main``) and a copy (``aux``) that starts from
  the same weights and running statistics.
* :func:`use_bn` (context manager) routes every dual BN of a model to ``"main"`` or ``"aux"``
  and restores the previous routing afterwards, also on an exception.

Outside :func:`use_bn` the main BN runs (testing uses it, as the paper: the model cannot know
whether an input is adversarial). Only the selected BN's running statistics update in training.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

ROUTES = ("main", "aux")


class DualBatchNorm2d(nn.Module):
    """A batch norm with an auxiliary twin; ``route`` picks which one normalises.

    Args:
        bn: the original batch norm (kept as ``main``; ``aux`` is a deep copy of it).
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.main = bn
        self.aux = copy.deepcopy(bn)
        self.route = "main"

    def forward(self, x: Tensor) -> Tensor:
        return self.aux(x) if self.route == "aux" else self.main(x)


def add_auxiliary_bn(model: nn.Module) -> nn.Module:
    """Give every ``nn.BatchNorm2d`` of ``model`` an auxiliary twin (in place; returns ``model``).

    A model already converted is returned unchanged. State-dict keys of a converted BN gain a
    ``.main`` / ``.aux`` level, so load a plain model's weights *before* converting.

    Raises:
        ValueError: the model has no batch norm (nothing to route).
    """
    if any(isinstance(m, DualBatchNorm2d) for m in model.modules()):
        return model
    found = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, DualBatchNorm2d(child))
                found += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no BatchNorm2d to give an auxiliary twin")
    return model


def dual_bns(model: nn.Module) -> Iterator[DualBatchNorm2d]:
    """Every :class:`DualBatchNorm2d` of ``model``."""
    return (m for m in model.modules() if isinstance(m, DualBatchNorm2d))


@contextmanager
def use_bn(model: nn.Module, which: str = "aux"):
    """Route every dual BN of ``model`` to ``which`` (``"main"`` or ``"aux"``) inside the block.

    Raises:
        ValueError: unknown route, or a model without dual BNs (:func:`add_auxiliary_bn` first).
    """
    if which not in ROUTES:
        raise ValueError(f"unknown batch-norm route {which!r}; expected one of {ROUTES}")
    bns = list(dual_bns(model))
    if not bns:
        raise ValueError(f"{type(model).__name__} has no auxiliary batch norm; call add_auxiliary_bn first")
    before = [m.route for m in bns]
    for m in bns:
        m.route = which
    try:
        yield model
    finally:
        for m, r in zip(bns, before):
            m.route = r


__all__ = ["DualBatchNorm2d", "ROUTES", "add_auxiliary_bn", "dual_bns", "use_bn"]
