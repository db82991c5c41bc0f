"""Peak memory of streaming evaluation (``make bench-memory``): evaluate and PGD-attack a generated
VOC-layout test split at 300 px with an SSD (tiny_vgg), through the same robustness table the
notebooks use, streamed (:class:`advlib.imageset.ImageSet`), for splits of several sizes; each size
runs in its own process so that its peak resident memory (``ru_maxrss``) is its own. The smallest
split is generated; a larger one repeats its images under new ids (:func:`replicated_split`).

    python benchmarks/memory.py --sizes 500 5000 [--steps 10] [--batch 8] [--image-size 300]

Writes ``benchmarks/results/streaming-memory-cpu.json`` with every size's peak RSS, seconds and
mAPs, and the difference in peak RSS between the largest and the smallest split (the issue's bar:
under 200 MB). The model is untrained (seeded): memory and time do not depend on its weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def replicated_split(base: Path, n: int) -> Path:
    """A VOC-layout test split of ``n`` images made of the generated ``base`` split's test images
    repeated under new ids (JPEGs hard-linked, annotations rewritten): generating thousands of
    300 px images takes longer than evaluating them, and memory does not care whether pixels repeat."""
    import shutil

    out = base.with_name(f"{base.name}-x{n}")
    if (out / "ImageSets" / "Main" / "test.txt").exists():
        return out
    ids = (base / "ImageSets" / "Main" / "test.txt").read_text().split()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp / sub).mkdir(parents=True)
    new = [f"{i:06d}" for i in range(n)]
    for i, new_id in enumerate(new):
        old = ids[i % len(ids)]
        xml = (base / "Annotations" / f"{old}.xml").read_text().replace(f"<filename>{old}.jpg<", f"<filename>{new_id}.jpg<")
        (tmp / "Annotations" / f"{new_id}.xml").write_text(xml)
        (tmp / "JPEGImages" / f"{new_id}.jpg").hardlink_to(base / "JPEGImages" / f"{old}.jpg")
    (tmp / "ImageSets" / "Main" / "test.txt").write_text("\n".join(new) + "\n")
    (tmp / "ImageSets" / "Main" / "trainval.txt").write_text("")
    shutil.copy(base / "classes.txt", tmp / "classes.txt")
    tmp.rename(out)
    return out


def one(n: int, image_size: int, steps: int, batch: int, base_images: int) -> dict:
    import torch

    from advlib.attacks import AttackSpec
    from advlib.data import VOCDataset
    from advlib.data.synthetic import SyntheticConfig, generate_voc
    from advlib.imageset import ImageSet
    from advlib.models import build_ssd
    from advlib.robustness import robustness_table

    root = generate_voc(ROOT / "data" / f"bench-stream-{base_images}-{image_size}", seed=0,
                        config=SyntheticConfig(n_trainval=8, n_test=base_images, image_size=image_size), progress=False)
    if n != base_images:
        root = replicated_split(root, n)
    data = ImageSet(VOCDataset(root, "test", size=image_size))
    classes = data.dataset.classes
    torch.manual_seed(0)
    model = build_ssd("tiny_vgg", len(classes), image_size).eval()
    spec = AttackSpec("cls", 8 / 255, 2 / 255, steps, random_start=True)
    before = _peak_mb()
    t0 = time.perf_counter()
    table = robustness_table({"SSD": model}, {"clean": None, f"PGD-{steps}": spec}, data, None, classes,
                             batch_size=batch, progress=False, result_cache=False)
    return {"images": n, "distinct_images": min(n, base_images), "image_size": image_size, "attack": spec.label(), "attack_batch": batch,
            "peak_rss_mb_before_table": before, "peak_rss_mb": _peak_mb(), "seconds": time.perf_counter() - t0,
            "map": {c.attack: c.map for c in table.cells},
            "in_memory_float32_gb": n * 3 * image_size * image_size * 4 / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=300)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process's size
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.image_size, args.steps, args.batch, min(args.sizes))))
        return 0
    import torch

    runs = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--steps", str(args.steps), "--batch",
                              str(args.batch), "--image-size", str(args.image_size), "--sizes",
                              *map(str, args.sizes)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n} images at {args.image_size} px: peak RSS {runs[-1]['peak_rss_mb']:.0f} MB, "
              f"{runs[-1]['seconds']:.0f} s, mAP {runs[-1]['map']}", flush=True)
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
              "runs": runs, "peak_rss_growth_mb": runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"],
              "bar_mb": 200}
    path = ROOT / "benchmarks" / "results" / "streaming-memory-cpu.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"peak RSS grows {result['peak_rss_growth_mb']:.0f} MB from {runs[0]['images']} to {runs[-1]['images']} "
          f"images (bar: under 200 MB); wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
