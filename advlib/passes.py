"""Count the forward and backward passes a detector actually runs.

Training costs are compared in passes per iteration (CWAT Appendix B: MTD-PGD10 needs 23
back-propagations per iteration, fast CWAT 2). :class:`PassCounter` measures them while the code
runs instead of quoting a constant: a forward hook counts every call of the model, and wraps the
model's outputs in one identity autograd node whose backward runs once per backward pass that
reaches the outputs (``loss.backward()``, ``torch.autograd.grad``, with or without
``retain_graph``), whichever outputs the loss used (a localisation-only loss reaches only
``box_deltas``).

    counter = PassCounter(model)
    with counter:
        ...  # attacks, training steps
    counter.forward, counter.backward, counter.images
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _CountBackward(torch.autograd.Function):
    """Identity on the model's output tensors; its backward counts one pass."""

    @staticmethod
    def forward(ctx, counter: "PassCounter", *tensors: Tensor):
        ctx.counter = counter
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.counter.backward += 1
        return (None, *grads)


class PassCounter:
    """Counts forward calls, images forwarded and backward passes of ``model`` while active.

    Use as a context manager (the hook is removed on exit, also on an exception). Outputs must be
    a tensor or a tuple/NamedTuple of tensors (a detector's ``DenseOutput``).

    Attributes:
        forward: model calls; images: images through them (batch sizes summed);
        backward: backward passes that reached the model's outputs.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward = self.backward = self.images = 0
        self._handle = None

    def reset(self) -> dict[str, int]:
        """Return the counts so far and start again from zero."""
        counts = self.counts()
        self.forward = self.backward = self.images = 0
        return counts

    def counts(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward, "images": self.images}

    def _hook(self, module, inputs, output):
        self.forward += 1
        if inputs and torch.is_tensor(inputs[0]):
            self.images += int(inputs[0].shape[0])
        tensors = (output,) if torch.is_tensor(output) else tuple(output)
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
            return None
        wrapped = _CountBackward.apply(self, *tensors)
        if torch.is_tensor(output):
            return wrapped[0]
        return type(output)(*wrapped) if hasattr(output, "_fields") else type(output)(wrapped)

    def __enter__(self) -> "PassCounter":
        if self._handle is not None:
            raise RuntimeError("PassCounter is already active")
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


__all__ = ["PassCounter"]
