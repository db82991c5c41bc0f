"""Benchmarks (``make bench``): training step, evaluation throughput, PGD step vs training step, one RAD
gradient (relevance map and its input gradient) vs the PGD step, a robustness table's MDA column
computed with its A_cls/A_loc columns against the three computed apart, and CWAT-fast against MTD-PGD10 (wall time per epoch and over the whole schedule, E epochs
against E/m, with the passes per iteration counted as they run).

Everything is measured in one run on the same batch, so the ratios are comparable; the machine,
device and thread count are printed and written with the numbers to
``benchmarks/results/<profile>-<device>.json``.

    python benchmarks/run.py --profile default [--device auto] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from advlib.attacks import PRESETS, pgd  # noqa: E402
from advlib.attacks.engine import run_attack  # noqa: E402
from advlib.attacks import make_objective  # noqa: E402
from advlib.data import collate  # noqa: E402
from advlib.experiment import Experiment  # noqa: E402
from advlib.train import StandardRecipe, TrainConfig, make_optimizer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--cost-images", type=int, default=64, help="training images of the CWAT-fast/MTD-PGD10 run")
    ap.add_argument("--cost-epochs", type=int, default=4, help="E of MTD-PGD10 (CWAT-fast runs E/m)")
    args = ap.parse_args(argv)

    exp = Experiment(profile=args.profile, device=args.device, progress=False)
    dev = exp.device
    bs = args.batch_size or exp.profile.train.batch_size
    images, targets = collate([exp.train_set[i] for i in range(bs)])
    images = images.to(dev)
    targets = [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    model = exp.build()
    info = machine_info(dev)
    print("machine:", json.dumps(info))

    recipe = StandardRecipe()
    opt = make_optimizer(model, TrainConfig())

    def fwd_bwd():
        model.train()
        loss = recipe(model, images, targets)
        model.zero_grad(set_to_none=True)
        loss.backward()

    def train_step():
        fwd_bwd()
        opt.step()

    spec = pgd("cls", steps=1, random_start=False)
    objective = make_objective(spec)
    state = objective.prepare(model, images, targets)

    def pgd_step():
        run_attack(model, images, objective, spec, state)

    def match_only():
        objective.prepare(model, images, targets)

    t_fb = timeit(fwd_bwd, dev, args.repeats)
    t_train = timeit(train_step, dev, args.repeats)
    t_pgd = timeit(pgd_step, dev, args.repeats)
    t_match = timeit(match_only, dev, args.repeats)
    # one RAD gradient (relevance map + its input gradient, one copy, no SI) as one engine step
    rad_spec = PRESETS["RAD"].replace(steps=1)
    rad_objective = make_objective(rad_spec)
    rad_state = rad_objective.prepare(model, images, None)
    t_rad = timeit(lambda: run_attack(model, images, rad_objective, rad_spec, rad_state), dev, args.repeats)
    eval_images, eval_targets = exp.eval_data
    n_eval = min(256, eval_images.shape[0])
    model.eval()
    t_eval = timeit(lambda: exp.evaluate(model, eval_images[:n_eval], eval_targets[:n_eval]), dev, max(1, args.repeats // 2), 1)
    res = {
        "profile": exp.profile.name, "batch_size": bs, "image_size": exp.profile.image_size,
        "backbone": exp.profile.backbone, "machine": info,
        "train_step_s": t_train, "train_images_per_s": bs / t_train,
        "forward_backward_s": t_fb,
        "pgd_step_s": t_pgd, "pgd_step_over_forward_backward": t_pgd / t_fb,
        "anchor_matching_s": t_match,
        "rad_step_s": t_rad, "rad_step_over_pgd_step": t_rad / t_pgd,
        "eval_images": n_eval, "eval_s_per_image": t_eval / n_eval, "eval_images_per_s": n_eval / t_eval,
    }
    res.update(mda_table_speedup(exp, min(32, n_eval)))
    res.update(fast_training_speedup(exp, args.cost_images, args.cost_epochs))
    res.update(robustdet_overheads(exp, args.repeats))
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k:32s} {v:.4f}")
    out = ROOT / "benchmarks" / "results" / f"{exp.profile.name}-{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", out)
    return res


def mda_table_speedup(exp, n_images: int) -> dict:
    """A robustness table with PGD A_cls, A_loc and MDA columns (MDA from the same two crafts)
    against the three columns as three tables, on one model and the first ``n_images`` evaluation
    images, no result cache, timed in this run (the numbers must agree)."""
    from advlib.attacks import preset
    from advlib.robustness import robustness_table

    k = exp.profile.attack_steps
    cols = {c: preset(c, steps=k, seed=0) for c in ("A_cls", "A_loc", "MDA")}
    images, targets = exp.eval_data
    x, t = images[:n_images], targets[:n_images]
    model = {"m": exp.build().eval()}
    kw = dict(progress=False, result_cache=False)
    t0 = time.perf_counter()
    apart = {c: robustness_table(model, {c: s}, x, t, exp.classes, **kw).get("m", c) for c, s in cols.items()}
    t_apart = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = robustness_table(model, cols, x, t, exp.classes, **kw)
    t_together = time.perf_counter() - t0
    if any(together.get("m", c) != v for c, v in apart.items()):
        raise AssertionError(f"MDA with its parts changed a number: {apart} vs {together.frame.to_dict()}")
    return {"mda_table_images": n_images, "mda_table_apart_s": t_apart, "mda_table_together_s": t_together,
            "mda_table_speedup": t_apart / t_together}


def fast_training_speedup(exp, n_images: int, epochs: int) -> dict:
    """CWAT-fast over MTD-PGD10 from the same untrained model, timed in this run (CWAT Appendix B)."""
    from torch.utils.data import Subset

    from advlib.papers import cwat, mtd  # noqa: F401  (registers the recipes)
    from advlib.recipes import make_recipe

    recipes = {"MTD-PGD10": make_recipe("mtd", steps=10), "CWAT-fast": make_recipe("cwat-fast")}
    cfg = TrainConfig.from_profile(exp.profile, finetune=True)
    n = min(n_images, len(exp.train_set))
    t = cwat.training_cost(exp.build(), Subset(exp.train_set, range(n)), recipes, cfg, epochs, device=exp.device)
    speed = cwat.speedups(t)
    return {"cost_images": n, "cost_epochs": epochs,
            "mtd_pgd10_s_per_epoch": float(t.loc["MTD-PGD10", "seconds_per_epoch"]),
            "cwat_fast_s_per_epoch": float(t.loc["CWAT-fast", "seconds_per_epoch"]),
            "cwat_fast_speedup_per_epoch": speed["per_epoch_speedup"],
            "cwat_fast_speedup_schedule": speed["schedule_speedup"],
            "passes_per_iter": {k: [float(t.loc[k, "forward_per_iter"]), float(t.loc[k, "backward_per_iter"])]
                                for k in recipes}}


def robustdet_overheads(exp, repeats: int) -> dict:
    """AAConv2d against the plain convolutions (batch 16, every conv shape of the default model)
    and the RobustDet model's training step against the SSD's, measured in this run."""
    from benchmarks.robustdet import aaconv_overhead, model_step_overhead

    aa = aaconv_overhead(batch=16, repeats=max(repeats, 5), image_size=exp.profile.image_size)
    return {"aaconv_over_conv": aa["ratio"], "aaconv_by_impl": {k: v["ratio"] for k, v in aa["by_impl"].items()},
            **model_step_overhead(exp, repeats=repeats)}


if __name__ == "__main__":
    main()
