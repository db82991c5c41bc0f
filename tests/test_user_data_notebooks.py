"""The smoke profile of the notebooks, unchanged, on data that is not ours: a VOC dataset with
train/val splits and a class that appears only in the test split, and a COCO-JSON dataset with
odd class names and non-square images of several sizes (papermill, as a user runs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
# 00 runs on both datasets; each paper notebook on one of them (01 VOC, 02 COCO, 03 VOC, 04 COCO, 05
# COCO, later ones alternating), since each costs about a minute and the formats differ only in the
# core's reading, which 00 and the unit tests cover. The two datasets' runs go side by side, one
# thread each (module fixture `runs`), which keeps `make test` inside CI's time on 2 cores.
_ON = {"01": "voc", "02": "coco", "03": "voc", "04": "coco", "05": "coco"}


def _dataset(i: int, nb: Path) -> str:
    return _ON.get(nb.stem[:2], "voc" if i % 2 == 1 else "coco")


VOC_NOTEBOOKS = [nb for i, nb in enumerate(NOTEBOOKS) if nb.stem.startswith("00") or _dataset(i, nb) == "voc"]
COCO_NOTEBOOKS = [nb for i, nb in enumerate(NOTEBOOKS) if nb.stem.startswith("00") or _dataset(i, nb) == "coco"]
ODD = {"circle": "Fire hydrant & co", "square": "tête <carrée>", "triangle": "tri angle"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from advlib.data.synthetic import SyntheticConfig, generate_voc

    root = tmp_path_factory.mktemp("gen") / "shapes"
    generate_voc(root, seed=3, config=SyntheticConfig(n_trainval=96, n_test=24, image_size=64), progress=False)
    return root


def make_trainval_voc(src: Path, dst: Path) -> Path:
    """VOC with ``train``/``val`` split files and a class (``zebra``) found only in ``val``."""
    shutil.copytree(src, dst)
    main = dst / "ImageSets" / "Main"
    (main / "trainval.txt").rename(main / "train.txt")
    (main / "test.txt").rename(main / "val.txt")
    (dst / "classes.txt").unlink()
    first_val = (main / "val.txt").read_text().split()[0]
    xml = dst / "Annotations" / f"{first_val}.xml"
    tree = ET.parse(xml)
    tree.getroot().find("object").find("name").text = "zebra"
    tree.write(xml)
    return dst


def make_coco(src: Path, dst: Path) -> Path:
    """COCO JSON (``train``/``val``) with odd class names and images resized to odd sizes."""
    from advlib.data import VOCDataset

    names = [ODD.get(c, c) for c in (src / "classes.txt").read_text().split()]
    cats = [{"id": 10 + k, "name": n} for k, n in enumerate(names)]
    sizes = [(97, 61), (64, 128), (150, 90)]
    for split, voc_split in (("train", "trainval"), ("val", "test")):
        ds = VOCDataset(src, voc_split, size=64)
        (dst / split).mkdir(parents=True)
        images, anns = [], []
        for i in range(len(ds)):
            w, h = sizes[i % len(sizes)]
            name = f"{split}_{i:04d}.png"
            Image.open(ds.files[i]).convert("RGB").resize((w, h)).save(dst / split / name)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
            t = ds.annotation(i)
            for b, lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
                x1, y1, x2, y2 = b[0] * w / 64, b[1] * h / 64, b[2] * w / 64, b[3] * h / 64
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 10 + lab - 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        (dst / "annotations").mkdir(exist_ok=True)
        (dst / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def voc_data(generated, tmp_path_factory):
    """The VOC dataset and one model cache shared by every notebook's run (as a user runs the
    notebooks in order: later ones reuse the models earlier ones trained)."""
    base = tmp_path_factory.mktemp("voc")
    return make_trainval_voc(generated, base / "my voc"), base / "cache"


@pytest.fixture(scope="module")
def coco_data(generated, tmp_path_factory):
    base = tmp_path_factory.mktemp("coco")
    return make_coco(generated, base / "coco"), base / "cache"


def _papermill(nb: Path, out: Path, cache: Path, params: dict) -> subprocess.CompletedProcess:
    """One notebook as a user runs it (papermill), in its own process with one thread, its own
    output root and the dataset's shared model cache."""
    env = {**os.environ, "ADVLIB_CACHE_DIR": str(cache), "ADVLIB_OUTPUT_ROOT": str(out / "out"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("ADVLIB_NO_RESULT_CACHE", None)
    args = [sys.executable, "-m", "papermill", str(nb), str(out / nb.name), "-k", "python3", "--cwd", str(NB_DIR),
            "--no-progress-bar", "-p", "profile", "smoke"]
    for key, value in params.items():
        args += ["-r", key, str(value)]  # raw strings (paths with spaces, format names)
    return subprocess.run(args, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def runs(voc_data, coco_data, tmp_path_factory) -> dict:
    """Every notebook on both datasets: the VOC runs in order in one thread, the COCO runs in
    another (later notebooks reuse the models earlier ones trained, as a user's would)."""
    base = tmp_path_factory.mktemp("runs")
    chains = {"voc": ([*VOC_NOTEBOOKS], voc_data, {"data_root": voc_data[0]}),
              "coco": ([*COCO_NOTEBOOKS], coco_data, {"data_root": coco_data[0], "data_format": "coco"})}
    done: dict = {}

    def chain(kind: str) -> None:
        notebooks, (_, cache), params = chains[kind]
        for nb in notebooks:
            out = base / kind / nb.stem
            out.mkdir(parents=True)
            done[(kind, nb.stem)] = (_papermill(nb, out, cache, params), out)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(chain, chains))
    return done


def run(runs: dict, kind: str, nb: Path) -> tuple[dict, Path]:
    """The results files a notebook's run wrote (``{name: path}``) and its output root."""
    proc, out = runs[(kind, nb.stem)]
    assert proc.returncode == 0, f"{nb.name} on {kind} failed:\n{proc.stderr[-4000:]}"
    found = list((out / "out" / "results").rglob("*.json"))
    assert found, "the notebook wrote no results"
    return {p.name: p for p in found}, out / "out"


@pytest.mark.slow
@pytest.mark.parametrize("nb", VOC_NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_notebook_on_a_train_val_voc_with_a_test_only_class(nb, runs):
    files, out_root = run(runs, "voc", nb)
    written = next(iter(files.values()))
    # results of a user's dataset go below results/<folder>-<hash>/smoke, never over the reproduction
    rel = written.relative_to(out_root / "results")
    assert rel.parts[0].startswith("my voc-") and rel.parts[1] == "smoke"
    out = json.loads(written.read_text(encoding="utf-8"))
    if nb.stem.startswith("00"):
        per_class = {r["class"]: r for r in out["tables"]["clean"]["per_class"]}
        assert per_class["zebra"]["note"] == "no training objects"
        assert out["dataset"]["split"] == "val"
    # no path of this machine's checkout (the user's data_root is kept as they gave it)
    assert str(NB_DIR.parent) not in written.read_text(encoding="utf-8")
    assert all(c["verdict"] == "not testable on this data" for c in out["claims"])  # untrained smoke model


@pytest.mark.slow
@pytest.mark.parametrize("nb", COCO_NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_notebook_on_coco_with_odd_names_and_sizes(nb, runs):
    files, _ = run(runs, "coco", nb)
    out = json.loads(next(iter(files.values())).read_text(encoding="utf-8"))
    if nb.stem.startswith("00"):
        assert {r["class"] for r in out["tables"]["clean"]["per_class"]} >= set(ODD.values())
        assert out["dataset"]["format"] == "coco" and out["dataset"]["split"] == "val"
