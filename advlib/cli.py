"""Command line: ``python -m advlib.cli data|train|adversarial-set|attack-suite|reproduce`` (used by the
Makefile; ``train`` and ``adversarial-set`` also under ``torchrun``, :mod:`advlib.cli_train`).

``reproduce`` executes notebooks headlessly with papermill, injecting ``profile``; executed copies
go to ``notebooks/executed/`` (the source notebooks stay output-free for nbval and diffs) and each
notebook's wall time is recorded in ``results[/<profile>]/timings.json``. A failing notebook does
not stop the others; the command exits non-zero at the end if any failed. While a notebook runs it
prints which cell runs, the cell's time and the notebook's total (a heartbeat line every
``--heartbeat`` seconds, 60 by default) and the notebook's own printed lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from advlib.cli_train import add_commands
from advlib.paths import PROJECT_ROOT, display_path


def _cmd_data(args) -> int:
    """Generate the default data, or check a user's data (every image of both splits), before
    anything trains."""
    from advlib.experiment import Experiment

    exp = Experiment(profile=args.profile, seed=args.seed, data_root=args.data_root, data_format=args.data_format)
    if args.data_root is not None:
        exp.check_data()
    print(f"dataset ready: {display_path(exp.params.data_root)} ({len(exp.train_set)} train / {len(exp.test_set)} "
          f"test, {exp.num_classes} classes)")
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


class _NotebookProgress:
    """What ``reproduce`` prints for one notebook while papermill runs it.

    A line when each code cell starts (with the markdown heading above it) and ends (its time and the
    notebook's total so far), and a heartbeat line every ``heartbeat`` seconds while a cell runs, e.g.
    ``[01_mtd_task_domains] cell 7/21, 312 s in cell, 1450 s total``. It hooks papermill's
    ``NotebookExecutionManager.cell_start/cell_exception/cell_complete`` through a papermill engine
    (``_ProgressEngine``), so it needs no change to the notebooks.
    """

    def __init__(self, name: str, heartbeat: float = 60.0, out=None):
        self.name, self.heartbeat, self.out = name, heartbeat, out
        self.t0 = time.perf_counter()
        self.n_cells, self.index, self.cell_t0, self.section, self.failed = 0, None, None, "", False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {name}", daemon=True)

    def say(self, msg: str) -> None:
        print(f"[{self.name}] {msg}", file=self.out or sys.stdout, flush=True)

    def total(self) -> float:
        return time.perf_counter() - self.t0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                if self.index is not None:
                    self.say(f"cell {self.index + 1}/{self.n_cells}, {time.perf_counter() - self.cell_t0:.0f} s in cell, "
                             f"{self.total():.0f} s total")

    def attach(self, nb_man) -> None:
        """Wrap the hooks of papermill's execution manager (instance attributes; papermill calls them)."""
        self.n_cells = len(nb_man.nb.cells)
        start, exception, complete = nb_man.cell_start, nb_man.cell_exception, nb_man.cell_complete

        def cell_start(cell, cell_index=None, **kwargs):
            with self._lock:
                if cell.cell_type == "markdown":
                    heading = next((ln.lstrip("#").strip() for ln in cell.source.splitlines() if ln.startswith("#")), "")
                    self.section = heading or self.section
                elif cell.cell_type == "code":
                    self.index, self.cell_t0 = cell_index, time.perf_counter()
                    tags = cell.metadata.get("tags", [])
                    what = ("injected parameters" if "injected-parameters" in tags
                            else "parameters" if "parameters" in tags else self.section)
                    self.say(f"cell {cell_index + 1}/{self.n_cells} started{f' ({what})' if what else ''}, "
                             f"{self.total():.0f} s total")
            return start(cell, cell_index, **kwargs)

        def cell_exception(cell, cell_index=None, **kwargs):
            self.failed = True
            return exception(cell, cell_index, **kwargs)

        def cell_complete(cell, cell_index=None, **kwargs):
            with self._lock:
                if cell_index is not None and cell_index == self.index:
                    secs = time.perf_counter() - self.cell_t0
                    self.say(f"cell {cell_index + 1}/{self.n_cells} {'FAILED after' if self.failed else 'done in'} "
                             f"{secs:.1f} s, {self.total():.0f} s total")
                    self.index = None
            return complete(cell, cell_index, **kwargs)

        nb_man.cell_start, nb_man.cell_exception, nb_man.cell_complete = cell_start, cell_exception, cell_complete


class _PrefixedLines:
    """File-like for papermill's ``stdout_file``: the notebook's printed lines, indented, as they come."""

    def __init__(self, out=None, prefix: str = "    | "):
        self.out, self.prefix, self.buf = out, prefix, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            print(self.prefix + line.rsplit("\r", 1)[-1], file=self.out or sys.stdout, flush=True)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.buf:
            self.write("\n")


def _progress_engine_name() -> str:
    """Register (once) a papermill engine that hands the execution manager to a ``_NotebookProgress``."""
    from papermill.engines import NBClientEngine, papermill_engines

    class _ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, progress=None, **kwargs):
            if progress is not None:
                progress.attach(nb_man)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    if "advlib-progress" not in papermill_engines._engines:
        papermill_engines.register("advlib-progress", _ProgressEngine)
    return "advlib-progress"


# tqdm (>= 4.66) takes its keyword defaults from TQDM_* variables (tqdm.utils.envwrap on
# tqdm.std.tqdm.__init__, read when the kernel imports tqdm): a bar refreshes at most once a minute.
TQDM_ENV = {"TQDM_MININTERVAL": "60"}
MAX_BAR_UPDATES = 5  # progress updates kept per output line in an executed notebook


def _compact_progress_text(text: str, keep: int = MAX_BAR_UPDATES) -> str:
    """Keep at most ``keep`` ``\\r``-separated updates per line (the first ones and the last), as a
    terminal would show the last one; tqdm bars would otherwise store every refresh."""
    lines = []
    for line in text.split("\n"):
        parts = line.split("\r")
        if len(parts) > keep:
            parts = parts[: keep - 1] + parts[-1:]
        lines.append("\r".join(parts))
    return "\n".join(lines)


def _widget_bar_text(model_id: str, state: dict) -> str | None:
    """The final text of a tqdm.notebook bar (an HBox of HTML, progress, HTML) from saved widget state."""
    import html

    box = state.get(model_id, {})
    kids = [state.get(str(c).removeprefix("IPY_MODEL_"), {}) for c in box.get("state", {}).get("children", [])]
    if box.get("model_name") != "HBoxModel" or len(kids) != 3 or "Progress" not in kids[1].get("model_name", ""):
        return None
    left, bar, right = (k.get("state", {}) for k in kids)
    frac = bar.get("value", 0) / bar["max"] if bar.get("max") else 0.0
    blocks = round(10 * min(max(frac, 0.0), 1.0))
    text = f"{left.get('value', '')}|{'█' * blocks}{' ' * (10 - blocks)}|{right.get('value', '')}"
    return html.unescape(text).replace("\u2007", " ")


def _compact_executed(path: Path) -> None:
    """Executed notebook: progress kept to one line per tqdm.notebook bar (its final text, and the
    saved widget state, about 9 kB a bar, dropped) and to ``MAX_BAR_UPDATES`` per text bar."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    changed, unconverted = False, 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and "\r" in out.get("text", ""):
                text = _compact_progress_text(out["text"])
                changed |= text != out["text"]
                out["text"] = text
            view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view:
                text = _widget_bar_text(view.get("model_id", ""), widgets)
                if text is None:
                    unconverted += 1
                else:
                    out["data"] = nbformat.from_dict({"text/plain": text})
                    changed = True
    if widgets and not unconverted:
        del nb.metadata["widgets"]
        changed = True
    pm_meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):  # papermill records absolute paths of this machine
        if pm_meta.get(key):
            pm_meta[key] = display_path(pm_meta[key])
            changed = True
    if changed:
        nbformat.write(nb, path)


def run_notebooks(notebooks, out_dir: Path, profile: str = "default", heartbeat: float = 60.0,
                  kernel_name: str = "python3", parameters: dict | None = None, out=None, run: str | None = None) -> dict:
    """Execute ``notebooks`` with papermill into ``out_dir``, printing progress (``_NotebookProgress``);
    each executed copy is ``NN_name.ipynb`` for the reproduction, else ``NN_name.<run>.ipynb`` (``run``:
    the run's output folder, default the profile's name), never over the reproduction's.

    A failing notebook does not stop the others. Returns ``{name: {"seconds", "status", "target"}}``.
    """
    saved_env = {key: os.environ.get(key) for key in TQDM_ENV}
    for key, value in TQDM_ENV.items():  # inherited by the kernels papermill starts; a user's TQDM_* wins
        os.environ.setdefault(key, value)
    try:
        run = (profile if profile != "default" else "") if run is None else run
        return _run_notebooks(notebooks, Path(out_dir), run.replace("/", "."), heartbeat, kernel_name,
                              {"profile": profile, **(parameters or {})}, out)
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)


def _run_notebooks(notebooks, out_dir, suffix, heartbeat, kernel_name, parameters, out) -> dict:
    import papermill as pm

    engine = _progress_engine_name()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for nb in map(Path, notebooks):
        target = out_dir / (f"{nb.stem}.{suffix}.ipynb" if suffix else nb.name)
        print(f"== {nb.name} (profile {parameters['profile']})", file=out or sys.stdout, flush=True)
        status = "ok"
        stdout = _PrefixedLines(out)
        with _NotebookProgress(nb.stem, heartbeat=heartbeat, out=out) as progress:
            try:
                pm.execute_notebook(str(nb), str(target), parameters=parameters,
                                    engine_name=engine, progress=progress, kernel_name=kernel_name,
                                    cwd=str(nb.parent), progress_bar=False, stdout_file=stdout)
            except Exception:  # keep going: every other notebook still runs
                traceback.print_exc()
                status = "failed"
            stdout.close()
        if target.exists():
            try:
                _compact_executed(target)
            except Exception:  # the executed notebook stays as papermill wrote it
                traceback.print_exc()
        secs = progress.total()
        report[nb.name] = {"seconds": secs, "status": status, "target": target}
        print(f"   {status} in {secs:.1f} s -> {display_path(target)}", file=out or sys.stdout, flush=True)
    return report


def _data_parameters(args) -> dict:
    """The notebooks' data parameters given on the command line (``--data-root`` etc.)."""
    return {k: v for k, v in (("data_root", args.data_root), ("data_format", args.data_format),
                              ("device", args.device)) if v is not None}


def _cmd_reproduce(args) -> int:
    from advlib.results import output_dir

    from advlib.experiment import run_folder
    from advlib.profiles import validate_params

    out_dir = PROJECT_ROOT / "notebooks" / "executed"
    run = run_folder(validate_params(args.profile, args.data_root, args.data_format or "voc"))
    timings_path = output_dir("results", run) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    failed = []
    for nb in args.notebooks:  # one at a time, so timings.json is written after each notebook
        rep = run_notebooks([nb], out_dir, profile=args.profile, heartbeat=args.heartbeat,
                            parameters=_data_parameters(args), run=run)[Path(nb).name]
        if rep["status"] != "ok":
            failed.append(Path(nb).name)
        timings[Path(nb).name] = {"seconds": round(rep["seconds"], 1), "status": rep["status"], "profile": args.profile,
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    if run == "" and any(Path(nb).name.startswith("06_") for nb in args.notebooks) and "06_" not in " ".join(failed):
        _update_readme()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _update_readme(readme: Path | None = None) -> None:
    """The README's matrix block (heat-map and scorecard counts) from the reproduction's
    ``results/06_matrix.json``: regenerated by ``make reproduce``, never by other runs."""
    from advlib.cache import atomic_write_text
    from advlib.results import readme_block, replace_block

    readme = readme or PROJECT_ROOT / "README.md"
    counts = json.loads((PROJECT_ROOT / "results" / "06_matrix.json").read_text())["tables"]["scorecard"]["counts"]
    atomic_write_text(readme, replace_block(readme.read_text(), "matrix", readme_block(
        counts, "figures/06_matrix_heatmap.png", "results/SCORECARD.md")))
    print(f"updated the matrix block of {readme.name}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m advlib.cli", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="generate the default dataset of a profile, or check --data-root")
    p.add_argument("--profile", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="a VOC or COCO root (the voc/coco profiles need one)")
    p.add_argument("--data-format", default="voc", choices=("voc", "coco"))
    commands = {"data": _cmd_data, **add_commands(sub)}
    p = sub.add_parser("attack-suite", help="every attack on the STD model, with the attack-suite bars")
    p.add_argument("--profile", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=0, help="use only the first N evaluation images")
    p = sub.add_parser("reproduce", help="execute notebooks with papermill")
    p.add_argument("--profile", default="default")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="seconds between progress lines while a cell runs")
    p.add_argument("--data-root", default=None, help="passed to every notebook's data_root parameter")
    p.add_argument("--data-format", default=None, choices=("voc", "coco"))
    p.add_argument("--device", default=None, help="passed to every notebook's device parameter")
    p.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    commands.update({"attack-suite": _cmd_attack_suite, "reproduce": _cmd_reproduce})
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
