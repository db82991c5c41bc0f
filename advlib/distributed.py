"""Many processes on ``torch.distributed`` (launched by ``torchrun``, never by us): who this process
is, the process group from torchrun's environment, gradient averaging, and gathering per-rank
results in rank order.

Everything here is a no-op in a single process (no process group, or a group of one), so the
library's code paths are the same with and without torchrun.

**How training shards a batch.** The configured batch size is the *global* batch. Each optimiser
step's global batch (the same images, in the same order, as a single process draws) is cut into
``world_size × micro_batches`` equal contiguous shards; rank ``r`` takes shards
``r·m … r·m + m − 1`` (``m`` micro-batches), each with its own augmentation draws (a generator
seeded by seed, epoch, step and shard index), backpropagates each shard's loss divided by ``m``,
and the ranks' gradients are averaged (:func:`average_gradients`) before clipping and the step.
So ``N`` processes with one micro-batch each and one process with ``N`` micro-batches compute the
same update, and a model is the same (to float tolerance) whatever the world size; batch-norm
statistics are per shard in both. We shard the global batch rather than hand each rank a
``DistributedSampler`` slice of the dataset: the global batches then equal the single-process
ones, which is what lets the model cache leave the world size out of its key.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes (checkpoints, caches, logs): rank 0, or the only process."""
    return rank_world()[0] == 0


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment), with
    NCCL on CUDA (each rank on GPU ``LOCAL_RANK``) and gloo on the CPU; returns the device this
    rank should use. Without torchrun's variables it does nothing and returns ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device if device != "auto" else "cpu"


def average_gradients(model: nn.Module, loss: torch.Tensor | float | None = None) -> float | None:
    """Average every parameter's gradient over the ranks (one flat all-reduce; a parameter that
    got no gradient on this rank counts as zero), and with it ``loss``: returns the ranks' mean
    loss (``loss`` itself in a single process)."""
    rank, world = rank_world()
    if world == 1:
        return None if loss is None else float(loss)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    extra = torch.tensor([0.0 if loss is None else float(loss)], device=params[0].device, dtype=params[0].grad.dtype)
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [extra])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
    return None if loss is None else float(flat[-1])


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics, which each rank updates
    on its own shards), so that all ranks hold the same model."""
    if rank_world()[1] == 1:
        return
    for b in model.buffers():
        dist.broadcast(b, 0)


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def my_chunks(n_chunks: int) -> list[int]:
    """The chunk indices (e.g. attack or evaluation batches) this rank processes: ``r, r + W, …``;
    :func:`gather` then :func:`interleave` puts the results back in chunk order."""
    rank, world = rank_world()
    return list(range(rank, n_chunks, world))


def interleave(per_rank: list[list[Any]]) -> list[Any]:
    """The inverse of :func:`my_chunks`: ``per_rank[r][j]`` is chunk ``r + j·W``; returns chunks in
    order."""
    world = len(per_rank)
    total = sum(len(p) for p in per_rank)
    return [per_rank[i % world][i // world] for i in range(total)]


__all__ = ["average_gradients", "barrier", "broadcast_buffers", "gather", "init_from_env", "interleave", "is_main", "my_chunks",
           "rank_world"]
