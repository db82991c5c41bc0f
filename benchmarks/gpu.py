"""The papers' detectors at the papers' scale on one device (``make bench-gpu``): SSD300 with a VGG16
and with a ResNet-50 backbone at batch 32, images per second for a training step (float32 and AMP,
optionally channels_last), a PGD step (float32, as every attack) and evaluation (detection), and the
PGD step / training step ratio, beside the device name, thread count and versions, written to
``benchmarks/results/<device name>.json``.

The anchor: NVIDIA's SSD300 v1.1 reference (ResNet-50 backbone, DALI) trains at about 663 img/s with
AMP on one A100-80GB; our ResNet-50 SSD300's AMP img/s is printed beside it.

    python benchmarks/gpu.py                                   # CUDA: vgg16 and resnet50, batch 32
    python benchmarks/gpu.py --device cpu --backbones tiny_vgg --image-size 64 --batch 4 --repeats 2  # a check

Inputs are random images with random boxes: throughput does not depend on the data; weights are
random (ImageNet weights change nothing here and need a download).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import timeit  # noqa: E402  (benchmarks/run.py: the median of repeats after a warm-up)

NVIDIA_SSD300_AMP_A100 = 663.0  # img/s, NVIDIA DeepLearningExamples SSD300 v1.1, 1x A100-80GB, AMP


def batch(n: int, size: int, num_classes: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g).to(device)
    targets = []
    for _ in range(n):
        k = 3
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = 0.1 * size + torch.rand(k, 2, generator=g) * size * 0.3
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).clamp(0, size).to(device),
                        "labels": torch.randint(1, num_classes + 1, (k,), generator=g).to(device)})
    return images, targets


def measure(backbone: str, device: torch.device, size: int, bs: int, repeats: int, channels_last: bool,
            num_classes: int = 20) -> dict:
    from advlib.attacks import AttackSpec, attack
    from advlib.models import build_ssd
    from advlib.train import StandardRecipe, TrainConfig, make_optimizer

    torch.manual_seed(0)
    model = build_ssd(backbone, num_classes, size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, targets = batch(bs, size, num_classes, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(model, TrainConfig(optimizer="sgd", lr=1e-3))
    recipe = StandardRecipe()
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def train_step(amp: bool):
        model.train()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = recipe(model, images, targets).float()
        opt.zero_grad(set_to_none=True)
        if amp:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    spec = AttackSpec("cls", 8 / 255, 2 / 255, 1, random_start=False)

    def pgd_step():
        attack(model, images, targets, spec)

    @torch.no_grad()
    def detect():
        model.eval()
        model.detect(images)

    out = {"backbone": backbone, "image_size": size, "batch": bs, "channels_last": channels_last}
    for name, fn in (("train_fp32", lambda: train_step(False)), ("train_amp", lambda: train_step(True)),
                     ("pgd_step", pgd_step), ("eval", detect)):
        s = timeit(fn, device, repeats, warmup=1)
        out[f"{name}_s"] = s
        out[f"{name}_images_per_s"] = bs / s
    out["pgd_step_over_train_step"] = out["pgd_step_s"] / out["train_fp32_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbones", nargs="+", default=["vgg16", "resnet50"])
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/<device name>.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    machine = {"device": str(device), "name": name, "python": platform.python_version(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    print(machine, flush=True)
    runs = []
    for b in args.backbones:
        r = measure(b, device, args.image_size, args.batch, args.repeats, args.channels_last)
        runs.append(r)
        print(f"SSD{args.image_size}-{b}, batch {args.batch}: train {r['train_fp32_images_per_s']:.1f} img/s "
              f"(AMP {r['train_amp_images_per_s']:.1f}), PGD step {r['pgd_step_images_per_s']:.1f} img/s "
              f"({r['pgd_step_over_train_step']:.2f} x a training step), eval {r['eval_images_per_s']:.1f} img/s",
              flush=True)
    anchor = next((r for r in runs if r["backbone"] == "resnet50" and r["image_size"] == 300), None)
    result = {"machine": machine, "runs": runs,
              "nvidia_ssd300_resnet50_amp_a100_images_per_s": NVIDIA_SSD300_AMP_A100,
              "ours_resnet50_amp_images_per_s": None if anchor is None else anchor["train_amp_images_per_s"]}
    if anchor is not None:
        print(f"ResNet-50 SSD300 AMP training: {anchor['train_amp_images_per_s']:.0f} img/s on {name}; NVIDIA's "
              f"reference: {NVIDIA_SSD300_AMP_A100:.0f} img/s on one A100-80GB (DALI)")
    safe = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu-{safe}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
