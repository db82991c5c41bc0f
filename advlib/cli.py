"""Command line: ``python -m advlib.cli data|train|reproduce`` (used by the Makefile).

``reproduce`` executes notebooks headlessly with papermill, injecting ``profile``; executed copies
go to ``notebooks/executed/`` (the source notebooks stay output-free for nbval and diffs) and each
notebook's wall time is recorded in ``results[/<profile>]/timings.json``. A failing notebook does
not stop the others; the command exits non-zero at the end if any failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from advlib.profiles import PROJECT_ROOT


def _cmd_data(args) -> int:
    from advlib.experiment import Experiment

    exp = Experiment(profile=args.profile, seed=args.seed)
    print(f"dataset ready: {exp.params.data_root} ({len(exp.train_set)} train / {len(exp.test_set)} test, "
          f"{exp.num_classes} classes)")
    return 0


def _cmd_train(args) -> int:
    from advlib.experiment import Experiment

    exp = Experiment(profile=args.profile, seed=args.seed)
    t0 = time.perf_counter()
    tm = exp.trained("std")
    res = exp.evaluate(tm.model)
    print(f"STD ({exp.profile.backbone}, seed {args.seed}): clean mAP@0.5 (VOC07) = {res.map:.4f}; "
          f"{time.perf_counter() - t0:.1f} s (cache key {tm.key})")
    return 0


#: the attack suite: every preset on the STD model
SUITE = ("A_cls", "A_loc", "multibox", "MDA", "TOA", "OWA", "CWA", "DAG", "DAG-orig", "RAP", "RAP-label",
         "RAP-shape", "Dfool", "Loc")


def _cmd_attack_suite(args) -> int:
    """Every attack of the suite on the STD model (white-box), each with its mean |δ| / ε."""
    from advlib.attacks import preset
    from advlib.robustness import robustness_table

    from advlib.experiment import Experiment

    exp = Experiment(profile=args.profile, seed=args.seed)
    tm = exp.trained("std")
    images, targets = exp.eval_data
    if args.images:
        images, targets = images[: args.images], targets[: args.images]
    attacks = {"clean": None, **{n: preset(n, seed=args.seed) for n in SUITE}}
    if exp.profile.name == "smoke":
        attacks = {k: (v if v is None else v.replace(steps=min(v.steps, 2))) for k, v in attacks.items()}
    t0 = time.perf_counter()
    table = robustness_table({"STD": tm.model}, attacks, images, targets, exp.classes, progress=True)
    seconds = time.perf_counter() - t0
    clean = table.get("STD", "clean")
    for c in table.cells:
        print(f"{c.attack:10s} mAP {c.map:.4f}  ({c.map / clean:6.1%} of clean)  {c.seconds:6.1f} s")
    path = exp.save_json({"profile": exp.profile.to_dict(), "model": tm.key, "num_images": len(targets),
                          "table": table.to_dict(), "seconds": seconds}, "attack_suite.json")
    print("wrote", path)
    return 0


def _cmd_reproduce(args) -> int:
    import papermill as pm

    from advlib.results import output_dir

    # progress bars in executed notebooks: a line every 30 s, not every step (tqdm reads TQDM_*)
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    out_dir = PROJECT_ROOT / "notebooks" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_path = output_dir("results", args.profile) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    failed = []
    for nb in args.notebooks:
        nb = Path(nb)
        target = out_dir / nb.name if args.profile == "default" else out_dir / f"{nb.stem}.{args.profile}.ipynb"
        print(f"== {nb.name} (profile {args.profile})", flush=True)
        t0 = time.perf_counter()
        status = "ok"
        try:
            pm.execute_notebook(str(nb), str(target), parameters={"profile": args.profile},
                                kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
        except Exception:  # keep going: every other notebook still runs
            traceback.print_exc()
            status = "failed"
            failed.append(nb.name)
        secs = time.perf_counter() - t0
        timings[nb.name] = {"seconds": round(secs, 1), "status": status, "profile": args.profile,
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
        print(f"   {status} in {secs:.1f} s -> {target}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m advlib.cli", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("data", "generate the default dataset of a profile"),
                           ("train", "train (or load) the STD model and print its clean mAP")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--profile", default="default")
        p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("attack-suite", help="every attack on the STD model, with the attack-suite bars")
    p.add_argument("--profile", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=0, help="use only the first N evaluation images")
    p = sub.add_parser("reproduce", help="execute notebooks with papermill")
    p.add_argument("--profile", default="default")
    p.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    commands = {"data": _cmd_data, "train": _cmd_train, "attack-suite": _cmd_attack_suite, "reproduce": _cmd_reproduce}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
