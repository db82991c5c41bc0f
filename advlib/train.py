"""One training loop for every recipe.

A *recipe* turns a batch into a scalar loss (standard SSD loss, adversarial training on an
attack, MTD, CWAT, ...). The loop owns everything else: optimiser (SGD with momentum as the
papers, or AdamW, no weight decay on BN and biases), warm-up plus cosine or step schedule,
batched augmentation drawn from a seeded generator, gradient clipping, a tqdm bar, and a
checkpoint after every epoch from which a killed run resumes to bit-identical weights (every
random draw of epoch ``e`` comes from a generator seeded by ``(seed, e)``, so nothing but the
model/optimiser/schedule state, and a recipe's own state, needs saving).

Free adversarial training (Shafahi et al. 2019; CWAT Algorithm 1) is the same loop: a recipe with
``replays = m`` gets each minibatch ``m`` times in a row, one optimiser step per replay, and
carries its perturbation itself (:class:`advlib.recipes.FreeAdversarialRecipe`). The loop counts
the forward and backward passes every iteration actually runs (:class:`advlib.passes.PassCounter`)
into the history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from advlib.augment import augment_batch
from advlib.cache import atomic_torch_save
from advlib.distributed import average_gradients, broadcast_buffers, rank_world
from advlib.losses import REDUCERS, match_targets, multibox_terms
from advlib.passes import PassCounter
from advlib.utils import targets_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """A training schedule.

    Attributes:
        epochs, batch_size: schedule length and batch.
        optimizer: ``sgd`` (momentum, as the papers) or ``adamw``.
        lr, weight_decay, momentum: optimiser settings (no decay on BN weights and biases).
        warmup_frac: fraction of all steps with linear warm-up.
        schedule: ``cosine`` or ``step`` (``milestones`` as fractions of training, ``gamma``).
        grad_clip: max gradient norm (``0`` disables).
        augment: flip + photometric + scale jitter, drawn from the seeded generator.
        seed: seeds shuffling and augmentation (model init is seeded by the caller).
        num_workers: DataLoader workers.
        amp: mixed precision for the training loss (float16 with a gradient scaler on CUDA,
            bfloat16 on the CPU); the attacks inside adversarial recipes stay float32.
        channels_last: model and batches in channels-last memory format (faster convolutions on
            recent GPUs, above all with ``amp``); the model is handed back contiguous. A memory
            layout, not a different model: like ``num_workers`` it is not in :meth:`key_dict`.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_frac: float = 0.04
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    grad_clip: float = 10.0
    augment: bool = True
    seed: int = 0
    num_workers: int = 0
    amp: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")

    @classmethod
    def from_profile(cls, profile, seed: int = 0, finetune: bool = False) -> "TrainConfig":
        """The STD schedule of a profile (``profile.train``), or its fine-tuning schedule for
        adversarial recipes (``finetune_epochs`` at ``finetune_lr``, no warm-up)."""
        cfg = dataclasses.replace(profile.train, seed=seed)
        if finetune:
            cfg = dataclasses.replace(cfg, epochs=profile.finetune_epochs, lr=profile.finetune_lr, warmup_frac=0.0)
        return cfg

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def key_dict(self) -> dict:
        """What of the schedule determines the model (the model-cache key, checkpoints): all but
        the loader's ``num_workers``, recorded as 0 whatever it is so that keys written before
        it was left out stay valid; ``amp`` only when on. The world size (torchrun) is not in the
        config at all."""
        d = {**self.to_dict(), "num_workers": 0}
        del d["channels_last"]
        if not self.amp:
            del d["amp"]  # keys written before the field existed stay valid
        return d


class Recipe(Protocol):
    """Turns a batch into a training loss. ``spec()`` is part of the model-cache key.

    Optional: ``replays`` (int, default 1: each minibatch is trained on that many times in a row,
    free adversarial training), ``state_dict()`` / ``load_state_dict()`` for state the recipe
    carries across batches (saved in the checkpoint), and ``prepare_model(model) -> model`` for a
    recipe that trains another architecture built from the parent (RobustDet's; the model cache
    applies it before loading or training).
    """

    name: str

    def __call__(self, model: nn.Module, images: Tensor, targets: list[dict]) -> Tensor: ...

    def spec(self) -> dict: ...


class StandardRecipe:
    """STD: the clean multibox loss (SSD; MTD eq. 1), averaged over images. A family whose own
    training loss differs from its attack terms defines ``training_loss(images, targets)``
    (Faster R-CNN: torchvision's sampled train-mode loss, which trains it twice as well), used in
    training mode with the multibox reducer."""

    name = "std"

    def __init__(self, reducer: str = "multibox") -> None:
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {reducer!r}; expected one of {sorted(REDUCERS)}")
        self.reducer = reducer

    def __call__(self, model: nn.Module, images: Tensor, targets: list[dict]) -> Tensor:
        own = getattr(model, "training_loss", None)
        if callable(own) and model.training and self.reducer == "multibox":
            return own(images, targets)
        matched = match_targets(model, targets)
        return REDUCERS[self.reducer](multibox_terms(model(images), matched)).mean()

    def spec(self) -> dict:
        return {"recipe": self.name, "reducer": self.reducer}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; weight decay on conv/linear weights only, not BN or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` of ``total``."""
    warm = int(cfg.warmup_frac * total)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.gamma ** sum(step >= m * total for m in cfg.milestones)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _shard_generator(seed: int, epoch: int, step: int, shard: int) -> torch.Generator:
    """Augmentation draws of one shard of a global batch (micro-batches, ranks)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + shard)


def _plain(obj):
    """``obj`` as JSON types (what a ``weights_only`` checkpoint may hold besides tensors)."""
    return json.loads(json.dumps(obj, default=str))


def train(
    model: nn.Module,
    dataset,
    recipe: Recipe,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    desc: str | None = None,
    micro_batches: int = 1,
) -> list[dict]:
    """Train ``model`` in place with ``recipe``; resume from ``checkpoint_dir`` if it holds one.

    Args:
        model: the detector (on any device; moved to ``device``).
        dataset: a detection dataset returning ``(image [3,H,W], target)``.
        recipe: batch -> loss (see :class:`Recipe`).
        cfg: the schedule.
        device: where to train.
        checkpoint_dir: ``last.pt`` is written there after every epoch (atomically) and resumed
            from; ``None`` disables checkpoints.
        progress: show a tqdm bar.
        stop_after_epochs: stop after this many epochs *in this call* (simulates a kill; tests).
        desc: progress-bar label.
        micro_batches: shards of this process's part of every global batch, each backpropagated
            on its own (gradient accumulation). Under torchrun (an initialised process group) each
            rank takes ``1 / world_size`` of every global batch and the gradients are averaged
            over the ranks (:mod:`advlib.distributed`); only rank 0 writes checkpoints and shows
            progress. With one process and one micro-batch the loop is exactly the plain one.

    Returns:
        Per-epoch history: ``[{"epoch", "loss", "lr", "seconds", "images_per_s", "iterations",
        "forward_per_iter", "backward_per_iter"}]``; an iteration is one optimiser step (a
        minibatch gives ``recipe.replays`` of them), the passes are counted as they run.
    """
    from advlib.data import collate

    device = torch.device(device)
    model.to(device)
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot train on an empty dataset")
    bs = min(cfg.batch_size, n)
    replays = int(getattr(recipe, "replays", 1))
    if replays < 1:
        raise ValueError(f"recipe {recipe.name!r}: replays must be >= 1, got {replays}")
    rank, world = rank_world()
    shards = world * micro_batches
    if micro_batches < 1 or bs % shards:
        raise ValueError(f"the global batch of {bs} images must split into world_size {world} x micro_batches "
                         f"{micro_batches} equal shards")
    if shards > 1 and replays > 1:
        raise ValueError(f"recipe {recipe.name!r} replays each minibatch (free adversarial training), which does "
                         "not support micro-batches or several processes yet")
    steps_per_epoch = n // bs
    iters_per_epoch = steps_per_epoch * replays
    total = iters_per_epoch * cfg.epochs
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
    history: list[dict] = []
    start_epoch = 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if ckpt is not None:
        try:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            warnings.warn(f"cannot write checkpoints to {ckpt.parent} ({exc}); training without them", stacklevel=2)
            ckpt = None
    if ckpt is not None:
        if ckpt.exists():
            try:  # tensors and JSON types only: a planted checkpoint cannot run code
                state = torch.load(ckpt, map_location=device, weights_only=True)
                if state.get("cfg") != _plain(cfg.key_dict()) or state.get("recipe") != _plain(recipe.spec()):
                    raise ValueError("checkpoint was written by a different configuration")
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                if hasattr(recipe, "load_state_dict"):
                    recipe.load_state_dict(state.get("recipe_state") or {})
                start_epoch, history = state["epoch"], state["history"]
                log.info("resuming %s from epoch %d", ckpt, start_epoch)
            except Exception as exc:  # corrupt, foreign or unsafe checkpoint: start over, loudly
                warnings.warn(f"ignoring checkpoint {ckpt} ({exc}); training from scratch", stacklevel=2)
                start_epoch, history = 0, []
    ckpt_write, progress = (ckpt, progress) if rank == 0 else (None, False)  # torchrun: rank 0 writes and reports
    bar = tqdm(total=total, initial=start_epoch * iters_per_epoch, desc=desc or recipe.name,
               disable=not progress, leave=False)
    shard = bs // shards
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")  # disabled: pass-through
    mine = slice(rank * micro_batches * shard, (rank + 1) * micro_batches * shard)  # this rank's part of a batch
    epochs_run = 0
    counter = PassCounter(model)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        counter.__enter__()
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
            gen = _epoch_generator(cfg.seed, epoch)
            order = torch.randperm(n, generator=gen).tolist()
            batches = [order[i * bs:(i + 1) * bs][mine] for i in range(steps_per_epoch)]
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
                                pin_memory=device.type == "cuda")
            model.train()
            t0, loss_sum, seen = time.perf_counter(), 0.0, 0
            counter.reset()
            for step, (images, targets) in enumerate(loader):
                images = images.to(device, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = targets_to(device, targets)
                if shards == 1:
                    parts = [augment_batch(images, targets, gen) if cfg.augment else (images, targets)]
                else:  # each shard its own draws, whichever rank or micro-batch trains it
                    parts = []
                    for j in range(micro_batches):
                        x, t = images[j * shard:(j + 1) * shard], targets[j * shard:(j + 1) * shard]
                        g = _shard_generator(cfg.seed, epoch, step, rank * micro_batches + j)
                        parts.append(augment_batch(x, t, g) if cfg.augment else (x, t))
                for _ in range(replays):  # free adversarial training replays the minibatch
                    model.train()
                    opt.zero_grad(set_to_none=True)
                    loss = 0.0
                    for x, t in parts:
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                            part_loss = recipe(model, x, t).float()
                        if not torch.isfinite(part_loss):
                            raise FloatingPointError(f"non-finite loss {part_loss.item()} at epoch {epoch}; "
                                                     "lower the learning rate")
                        scaler.scale(part_loss / len(parts)).backward()
                        loss = loss + part_loss.detach() / len(parts)
                    scaler.unscale_(opt)
                    if world > 1:
                        loss = average_gradients(model, loss)
                    if cfg.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    loss_sum += float(loss)
                    seen += 1
                    bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
            broadcast_buffers(model)  # torchrun: every rank ends the epoch with rank 0's BN statistics
            secs = time.perf_counter() - t0
            passes = counter.reset()
            history.append({"epoch": epoch + 1, "loss": loss_sum / iters_per_epoch,
                            "lr": opt.param_groups[0]["lr"], "seconds": secs,
                            "images_per_s": steps_per_epoch * bs / max(secs, 1e-9), "iterations": seen,
                            "forward_per_iter": passes["forward"] / max(seen, 1),
                            "backward_per_iter": passes["backward"] / max(seen, 1)})
            epochs_run += 1
            if ckpt_write is not None:
                atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": _plain(history),
                                   "cfg": _plain(cfg.key_dict()), "recipe": _plain(recipe.spec()),
                                   "recipe_state": recipe.state_dict() if hasattr(recipe, "state_dict") else {}},
                                  ckpt)
    finally:
        counter.close()
        bar.close()
        if cfg.channels_last:
            model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history
