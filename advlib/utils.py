"""Small torch helpers every layer uses: a model's mode kept across a block, targets moved to a
device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its train/eval mode afterwards (also
    on an exception). Attacks and analyses use it: they never call ``.train()`` to get losses."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def targets_to(device: torch.device | str, targets: list[dict]) -> list[dict]:
    """Every tensor of every target dict moved to ``device`` (other values kept)."""
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


__all__ = ["eval_mode", "model_device", "targets_to"]
