"""Robustness evaluation: attack a dataset in batches, evaluate, tag every number with its spec."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from advlib.attacks import AttackSpec, attack


def adversarial_images(model, images: Tensor, targets: list[dict], spec: AttackSpec, batch_size: int = 32,
                       device: torch.device | str | None = None, progress: bool = True) -> Tensor:
    """Craft adversarial examples for a whole set, batch by batch.

    Args:
        model: attacked detector.
        images: ``[N, 3, H, W]`` in ``[0, 1]`` (any device; results come back on the CPU).
        targets: ground truth per image.
        spec: the attack.
        batch_size: images per attack batch.
        device: where to attack (default: the model's device).
        progress: tqdm bar.

    Returns:
        ``[N, 3, H, W]`` adversarial images on the CPU.
    """
    if len(targets) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    for i in tqdm(range(0, images.shape[0], batch_size), desc=spec.label(), disable=not progress, leave=False):
        x = images[i:i + batch_size].to(dev)
        t = [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in tt.items()} for tt in targets[i:i + batch_size]]
        out.append(attack(model, x, t, spec).cpu())
    return torch.cat(out) if out else images.new_zeros((0, *images.shape[1:]))


def evaluate_attack(exp, model, spec: AttackSpec | None, batch_size: int = 32, progress: bool = True) -> dict:
    """mAP (VOC07 11-point and all-point) of ``model`` on the experiment's evaluation subset under
    ``spec`` (``None`` = clean), with the spec attached."""
    images, targets = exp.eval_data
    if spec is not None:
        images = adversarial_images(model, images, targets, spec, batch_size, exp.device, progress)
    res07 = exp.evaluate(model, images, targets, use_07_metric=True)
    res_all = exp.evaluate(model, images, targets, use_07_metric=False)
    return {"map": res07.map, "map_allpoint": res_all.map, "ap": res07.ap,
            "spec": None if spec is None else spec.to_dict(), "images": images,
            "num_images": int(images.shape[0])}
