"""RobustDet's adversarially-aware convolution: its cost against the plain convolution.

Every distinct Conv2d of the default profile's SSD (``tiny_vgg``, 12 classes, 128 px) at its real
input size is timed forward + backward (gradients for the weights, the bias, the input and the
mixing vector, as in adversarial training through the discriminator) as a plain convolution and
as an :class:`~advlib.models.aaconv.AAConv2d` (K = 4, random softmax mixing) in each
implementation. Totals count each shape as often as the model uses it. Target: AAconv at most
2x the plain convolutions.

    python benchmarks/robustdet.py [--batch 16] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from advlib.models import build_ssd  # noqa: E402
from advlib.models.aaconv import IMPLS, AAConv2d, KernelMixing  # noqa: E402


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time (``time.perf_counter``) of ``fn()`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_shapes(model: nn.Module, image_size: int) -> list[tuple[str, nn.Conv2d, tuple[int, int], int]]:
    """Each distinct Conv2d configuration with its input size, found with forward hooks.

    Returns:
        ``(first module name, conv, (H, W) of its input, number of convs with this shape)`` per shape.
    """
    found: dict[tuple, list] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(mod, inputs, _out, name=name):
                key = (mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                       mod.dilation, mod.groups, mod.bias is not None, tuple(inputs[0].shape[-2:]))
                if key in found:
                    found[key][3] += 1
                else:
                    found[key] = [name, mod, tuple(inputs[0].shape[-2:]), 1]
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.rand(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    return [tuple(v) for v in found.values()]


def aaconv_overhead(
    batch: int = 16,
    repeats: int = 10,
    K: int = 4,
    image_size: int = 128,
    channels_last: bool = True,
    seed: int = 0,
) -> dict:
    """Forward + backward seconds of every conv shape, plain against AAConv2d (each implementation).

    Args:
        batch: images per batch.
        repeats: timed runs per layer (median taken, after 2 warm-up runs).
        K: kernels per AAConv2d.
        image_size: input size of the default profile's model.
        channels_last: feed channels_last inputs, as the SSD does.
        seed: for the inputs, the output gradients and the mixing vectors.

    Returns:
        ``layers`` (per shape: ``plain_s`` and ``<impl>_s`` seconds, ratios), ``plain_s`` and
        ``aaconv_s`` totals (shapes counted as often as the model has them, ``aaconv`` being the
        default ``aggregate`` implementation), ``ratio`` = aaconv / plain, and ``by_impl`` (total
        and ratio of each implementation).
    """
    torch.manual_seed(seed)
    model = build_ssd("tiny_vgg", num_classes=12, image_size=image_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layers = []
    for name, conv, (h, w), count in conv_shapes(model, image_size):
        conv = conv.to(memory_format=fmt)
        x = torch.randn(batch, conv.in_channels, h, w).contiguous(memory_format=fmt).requires_grad_()
        with torch.no_grad():
            grad_out = torch.randn_like(conv(x))
        pi = torch.softmax(torch.randn(batch, K), dim=1).requires_grad_()

        def step(layer: nn.Module, extra: tuple = ()) -> None:
            out = layer(x)
            torch.autograd.grad(out, (*layer.parameters(), x, *extra), grad_out)

        row = {"layer": name, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
               "kernel": list(conv.kernel_size), "stride": list(conv.stride), "input_hw": [h, w], "count": count,
               "plain_s": _median_seconds(lambda: step(conv), repeats)}
        for impl in IMPLS:
            aa = AAConv2d.from_conv(conv, K, KernelMixing(pi), impl=impl)
            row[f"{impl}_s"] = _median_seconds(lambda aa=aa: step(aa, (pi,)), repeats)
            row[f"{impl}_ratio"] = row[f"{impl}_s"] / row["plain_s"]
        layers.append(row)
    plain = sum(r["plain_s"] * r["count"] for r in layers)
    by_impl = {}
    for impl in IMPLS:
        total = sum(r[f"{impl}_s"] * r["count"] for r in layers)
        by_impl[impl] = {"total_s": total, "ratio": total / plain}
    return {
        "batch": batch, "K": K, "repeats": repeats, "image_size": image_size, "channels_last": channels_last,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "layers": layers, "plain_s": plain, "aaconv_s": by_impl["aggregate"]["total_s"],
        "ratio": by_impl["aggregate"]["ratio"], "by_impl": by_impl,
    }


def model_step_overhead(exp, batch: int = 32, repeats: int = 5) -> dict:
    """One training step (multibox loss forward + backward + optimiser step on the same clean
    batch) of the SSD against the RobustDet model built from it (K = 4, discriminator included),
    and one full RobustDet update (its recipe: an MTD-style attack step on a half-batch, the clean,
    adversarial and third groups, the triplet loss), timed in one run. Target: the model's step at
    most 3x the SSD's."""
    import copy

    from advlib.data import collate
    from advlib.papers.robustdet import RobustDetRecipe
    from advlib.train import StandardRecipe, TrainConfig, make_optimizer
    from advlib.utils import targets_to

    images, targets = collate([exp.train_set[i] for i in range(batch)])
    images, targets = images.to(exp.device), targets_to(exp.device, targets)
    ssd = exp.build()
    rd_recipe = RobustDetRecipe()
    robust = rd_recipe.prepare_model(copy.deepcopy(ssd)).to(exp.device)
    std = StandardRecipe()

    def stepper(model, loss_fn):
        opt = make_optimizer(model, TrainConfig())

        def step():
            model.train()
            loss = loss_fn(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    half = batch // 2
    t_ssd = _median_seconds(stepper(ssd, lambda m: std(m, images, targets)), repeats)
    t_rd = _median_seconds(stepper(robust, lambda m: std(m, images, targets)), repeats)
    t_upd = _median_seconds(stepper(robust, lambda m: rd_recipe(m, images[:half], targets[:half])), repeats)
    return {"robustdet_batch": batch, "ssd_step_s": t_ssd, "robustdet_model_step_s": t_rd,
            "robustdet_model_step_ratio": t_rd / t_ssd, "robustdet_update_s": t_upd,
            "robustdet_update_ratio": t_upd / t_ssd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = aaconv_overhead(args.batch, args.repeats)
    for r in res["layers"]:
        print(f"{r['layer']:32s} {r['in_channels']:4d}->{r['out_channels']:<4d} k{r['kernel'][0]} s{r['stride'][0]} "
              f"{r['input_hw'][0]:4d}px x{r['count']}  plain {r['plain_s'] * 1e3:7.2f} ms  "
              + "  ".join(f"{i} {r[f'{i}_ratio']:.2f}x" for i in IMPLS))
    print(json.dumps({k: v for k, v in res.items() if k != "layers"}, indent=1))


if __name__ == "__main__":
    main()
