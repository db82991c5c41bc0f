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
    model = exp.model("std")
    res = exp.evaluate(model)
    print(f"STD ({exp.profile.backbone}, seed {args.seed}): clean mAP@0.5 (VOC07) = {res.map:.4f}; "
          f"{time.perf_counter() - t0:.1f} s (cache key {exp.last_meta['key']})")
    return 0


def _cmd_reproduce(args) -> int:
    import papermill as pm

    from advlib.results import output_dir

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
    p = sub.add_parser("reproduce", help="execute notebooks with papermill")
    p.add_argument("--profile", default="default")
    p.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    return {"data": _cmd_data, "train": _cmd_train, "reproduce": _cmd_reproduce}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
