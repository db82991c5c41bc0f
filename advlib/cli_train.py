"""``python -m advlib.cli train`` and ``adversarial-set``: any registered recipe trained into the model
cache, and an attack's adversarial set crafted on a cached model and saved (VOC layout, PNG), in one
process or under ``torchrun --nproc_per_node=N -m advlib.cli ...`` (one process per GPU, or gloo on
the CPU; :mod:`advlib.distributed`). The model lands under the same cache key a notebook asks for:
the batch size is the global batch, and neither the world size nor ``--micro-batches`` nor the
loader's workers enter the key.
"""

from __future__ import annotations

import argparse
import json
import time


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options that name a model (and the data it is trained on)."""
    p.add_argument("--profile", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default="std", help="a registered recipe (std, cls, loc, con, mtd, toat, owat, "
                   "cwat, cwat-fast, mtd-fast, robustdet, ...); the papers' recipes load on lookup")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe parameter (VALUE parsed as JSON, else a string), e.g. --param steps=10")
    p.add_argument("--parent", default=None, help="fine-tune from the model this recipe trains (e.g. std)")
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning epochs with --parent (default: the profile's finetune_epochs)")
    p.add_argument("--arch", default="ssd", help="detector family (ssd, retinanet, fcos, faster_rcnn)")
    p.add_argument("--backbone", default=None, help="default: the profile's")
    p.add_argument("--train-images", type=int, default=None, help="train on this fixed subset of the split")
    p.add_argument("--data-root", default=None, help="a VOC or COCO root (default: the generated dataset)")
    p.add_argument("--data-format", default="voc", choices=("voc", "coco"))
    p.add_argument("--device", default="auto")


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _experiment(args):
    from advlib.distributed import init_from_env, is_main
    from advlib.experiment import Experiment

    device = init_from_env(args.device)
    exp = Experiment(profile=args.profile, data_root=args.data_root, data_format=args.data_format, device=device,
                     seed=args.seed, progress=is_main())
    exp.micro_batches = getattr(args, "micro_batches", 1)
    return exp


def _trained(exp, args, cached_only: bool = False):
    """The model the arguments name: the family's vanilla model for ``std`` on another family
    (:meth:`Experiment.vanilla`), else :meth:`Experiment.trained`."""
    from advlib.recipes import RECIPES

    if args.recipe == "std" and args.arch != "ssd" and not args.param:
        return exp.vanilla(args.arch, args.backbone, cached_only=cached_only)
    recipe = RECIPES.build(args.recipe, **_params(args.param))
    cfg = exp.finetune_config(args.epochs) if args.parent else None
    return exp.trained(recipe, args.backbone, parent=args.parent, cfg=cfg, train_images=args.train_images,
                       cached_only=cached_only, arch=args.arch)


def cmd_train(args) -> int:
    from advlib.distributed import is_main, rank_world

    exp = _experiment(args)
    t0 = time.perf_counter()
    tm = _trained(exp, args)
    res = exp.evaluate(tm.model)  # every rank detects its share (torchrun), all get the mAP
    if is_main():
        print(f"{args.recipe} ({args.arch}, {tm.meta['spec']['backbone']}, seed {args.seed}, "
              f"{rank_world()[1]} process(es)): clean mAP@0.5 (VOC07) = {res.map:.4f}; "
              f"{time.perf_counter() - t0:.1f} s; cache key {tm.key}")
    return 0


def cmd_adversarial_set(args) -> int:
    from advlib.attacks import preset
    from advlib.cache import AdversarialCache, data_fingerprint
    from advlib.distributed import is_main
    from advlib.paths import display_path
    from advlib.robustness import crafted_batches

    exp = _experiment(args)
    tm = _trained(exp, args, cached_only=True)
    if tm is None:
        raise SystemExit(f"model {args.recipe!r} ({args.arch}, seed {args.seed}, profile {args.profile}) is not in "
                         "the model cache: train it first with `python -m advlib.cli train` and the same options")
    spec = preset(args.attack, seed=args.seed)
    if args.eps is not None:
        spec = spec.replace(eps=args.eps / 255)
    data = exp.eval_set.head(args.images) if args.images else exp.eval_set  # streamed: one batch in memory
    cache = AdversarialCache()
    key = cache.key(tm.model, spec, exp.data_id, data_fingerprint(data, data.targets))
    t0 = time.perf_counter()
    _, from_disk = cache.get_or_create_stream(
        key, lambda: crafted_batches(tm.model, data, data.targets, spec, args.batch_size, progress=is_main()),
        args.batch_size, data.shape[-2:], data.targets, exp.classes, spec, {"source": tm.key, "data": exp.data_id})
    if is_main():
        print(f"{spec.label()} on {args.recipe} ({tm.key}), {len(data)} images: "
              f"{'already saved' if from_disk else f'crafted in {time.perf_counter() - t0:.1f} s'} -> "
              f"{display_path(cache.path(key))} (read it with build_dataset(path, 'voc', 'test'))")
    return 0


def add_commands(sub) -> dict:
    """Add ``train`` and ``adversarial-set`` to the CLI's subparsers; returns their handlers."""
    p = sub.add_parser("train", help="train (or load) a model of any registered recipe and print its clean mAP")
    add_model_arguments(p)
    p.add_argument("--micro-batches", type=int, default=1,
                   help="gradient-accumulation shards per process of each global batch")
    p = sub.add_parser("adversarial-set", help="craft an attack's adversarial set on a cached model and save it")
    add_model_arguments(p)
    p.add_argument("--attack", required=True, help="an attack preset (A_cls, A_loc, DAG, RAP, RAD-SI, ...)")
    p.add_argument("--eps", type=float, default=None, help="ε in pixel levels (default: the preset's)")
    p.add_argument("--images", type=int, default=0, help="only the first N evaluation images")
    p.add_argument("--batch-size", type=int, default=32)
    return {"train": cmd_train, "adversarial-set": cmd_adversarial_set}
