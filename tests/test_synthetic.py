"""Tests for advlib.data.synthetic: VOC layout, determinism, statistics, atomicity, validation."""

from __future__ import annotations

import hashlib
import json
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advlib.data.synthetic import SHAPE_CLASSES, SyntheticConfig, generate_voc, render_sample

TINY = SyntheticConfig(n_trainval=20, n_test=10, image_size=64)
STATS = SyntheticConfig(n_trainval=240, n_test=60, image_size=64)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_split(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _parse(xml_path: Path) -> tuple[ET.Element, list[dict]]:
    ann = ET.parse(xml_path).getroot()
    objs = []
    for o in ann.findall("object"):
        bb = o.find("bndbox")
        objs.append({"name": o.findtext("name"), "difficult": int(o.findtext("difficult")),
                     "truncated": int(o.findtext("truncated")), "pose": o.findtext("pose"),
                     "box": tuple(int(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))})
    return ann, objs


@pytest.fixture(scope="module")
def stats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_voc(tmp_path_factory.mktemp("stats") / "shapes", seed=3, config=STATS,
                        progress=False)


def test_layout_and_xml(stats_root: Path) -> None:
    root, n = stats_root, STATS.image_size
    classes = (root / "classes.txt").read_text().split()
    assert len(classes) >= 10 and classes == list(SHAPE_CLASSES)
    trainval, test = _read_split(root, "trainval"), _read_split(root, "test")
    assert len(trainval) == STATS.n_trainval and len(test) == STATS.n_test
    assert not set(trainval) & set(test)
    ids = set(trainval) | set(test)
    assert {p.stem for p in (root / "Annotations").glob("*.xml")} == ids
    assert {p.stem for p in (root / "JPEGImages").glob("*.jpg")} == ids
    assert not list(root.parent.glob("*.tmp-*"))
    for image_id in sorted(ids)[:80]:
        ann, objs = _parse(root / "Annotations" / f"{image_id}.xml")
        assert ann.tag == "annotation" and ann.find("folder") is not None
        assert ann.findtext("filename") == f"{image_id}.jpg"
        size = ann.find("size")
        assert (int(size.findtext("width")), int(size.findtext("height")),
                int(size.findtext("depth"))) == (n, n, 3)
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.size == (n, n) and im.mode == "RGB"
        for o in objs:
            xmin, ymin, xmax, ymax = o["box"]
            assert 1 <= xmin < xmax <= n and 1 <= ymin < ymax <= n
            assert o["name"] in classes and o["pose"] == "Unspecified" and o["truncated"] == 0
            assert o["difficult"] in (0, 1)


def test_statistics(stats_root: Path) -> None:
    counts = {"trainval": Counter(), "test": Counter()}
    n_difficult = n_objects = 0
    multi_class_images = 0
    for split in counts:
        for image_id in _read_split(stats_root, split):
            _, objs = _parse(stats_root / "Annotations" / f"{image_id}.xml")
            assert STATS.min_objects <= len(objs) <= STATS.max_objects
            counts[split].update(o["name"] for o in objs)
            multi_class_images += len({o["name"] for o in objs}) >= 2
            n_difficult += sum(o["difficult"] for o in objs)
            n_objects += len(objs)
    assert multi_class_images >= 1
    for split in counts:                                  # every class in both splits
        assert set(counts[split]) == set(SHAPE_CLASSES)
    total = counts["trainval"] + counts["test"]
    freq = [total[c] for c in SHAPE_CLASSES]
    assert max(freq) > 2 * min(freq)                      # long tail (configured 5:1)
    assert 0 < n_difficult < 0.3 * n_objects
    meta = json.loads((stats_root / "generation.json").read_text())
    assert meta["seed"] == 3 and meta["config"]["n_trainval"] == STATS.n_trainval
    for split in counts:
        assert meta["class_counts"][split] == {c: counts[split][c] for c in SHAPE_CLASSES}


def test_render_matches_files_and_boxes_are_tight(stats_root: Path) -> None:
    n = STATS.image_size
    for index in (0, 7, 250):
        image, objects = render_sample(3, index, STATS)
        assert image.shape == (n, n, 3) and image.dtype == np.uint8
        image_id = f"{index:06d}"
        _, objs = _parse(stats_root / "Annotations" / f"{image_id}.xml")
        assert [o["box"] for o in objs] == [(x1 + 1, y1 + 1, x2, y2) for x1, y1, x2, y2 in
                                            (ob.box for ob in objects)]
        assert [o["name"] for o in objs] == [ob.name for ob in objects]
        with Image.open(stats_root / "JPEGImages" / f"{image_id}.jpg") as im:
            decoded = np.asarray(im.convert("RGB"), np.float32)
        assert np.abs(decoded - image).mean() < 4.0    # the file is this rendering (JPEG q95)
        for ob in objects:
            x1, y1, x2, y2 = ob.box
            assert ob.mask.shape == (y2 - y1, x2 - x1)
            # tight: every edge row/column of the box holds a drawn pixel
            assert ob.mask[0].any() and ob.mask[-1].any()
            assert ob.mask[:, 0].any() and ob.mask[:, -1].any()


def _full_mask(ob, n: int) -> np.ndarray:
    full = np.zeros((n, n), bool)
    x1, y1, x2, y2 = ob.box
    full[y1:y2, x1:x2] = ob.mask
    return full


def test_occlusion_and_difficult_flags() -> None:
    """Recompute visibility from the masks: drawing order, max_occlusion, difficult threshold."""
    cfg, n = STATS, STATS.image_size
    seen_overlap = False
    for index in range(60):
        _, objects = render_sample(5, index, cfg)
        masks = [_full_mask(ob, n) for ob in objects]
        for j, ob in enumerate(objects):
            area = masks[j].sum()
            visible = masks[j].copy()
            for k in range(j + 1, len(objects)):
                newly = (visible & masks[k]).sum()
                assert newly <= cfg.max_occlusion * area + 1e-9
                seen_overlap |= newly > 0
                visible &= ~masks[k]
            frac = visible.sum() / area
            assert abs(frac - ob.visible_fraction) < 1e-9
            assert ob.difficult == (frac < cfg.difficult_visible_fraction)
    assert seen_overlap


def test_deterministic(tmp_path: Path) -> None:
    a = generate_voc(tmp_path / "a", seed=11, config=TINY, progress=False)
    b = generate_voc(tmp_path / "b", seed=11, config=TINY, progress=False)
    c = generate_voc(tmp_path / "c", seed=12, config=TINY, progress=False)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert set(ha) == set(hc) and ha != hc
    assert sum(ha[k] != hc[k] for k in ha if k.startswith("JPEGImages")) == 30
    # int/numpy values for the same settings are the same dataset (plain JSON in generation.json)
    same = SyntheticConfig(**{**TINY.__dict__, "class_weights_ratio": 5, "n_test": np.int64(10)})
    assert generate_voc(a, seed=np.int64(11), config=same, progress=False) == a
    assert _hashes(a) == ha
    # an image does not depend on how many images come before it in generation order
    img_a, _ = render_sample(11, 25, TINY)
    img_b, _ = render_sample(11, 25, TINY)
    assert np.array_equal(img_a, img_b)


def test_idempotent_conflict_overwrite(tmp_path: Path) -> None:
    root = generate_voc(tmp_path / "d", seed=0, config=TINY, progress=False)
    before = _hashes(root)
    mtime = (root / "generation.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert generate_voc(root, seed=0, config=TINY, progress=False) == root
    assert time.perf_counter() - t0 < 1.0
    assert (root / "generation.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="seed") as err:
        generate_voc(root, seed=1, config=TINY, progress=False)
    assert str(root) in str(err.value)
    with pytest.raises(FileExistsError, match="n_test"):
        generate_voc(root, seed=0, config=SyntheticConfig(n_trainval=20, n_test=11, image_size=64),
                     progress=False)
    assert _hashes(root) == before                          # failed calls changed nothing
    generate_voc(root, seed=1, config=TINY, overwrite=True, progress=False)
    assert json.loads((root / "generation.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]   # no .tmp-/.old- left


def test_existing_directories(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_voc(empty, seed=0, config=TINY, progress=False)     # an empty placeholder is fine
    assert (empty / "generation.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="generation.json"):
        generate_voc(other, seed=0, config=TINY, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
    (empty / "Annotations" / "000003.xml").unlink()              # incomplete dataset
    with pytest.raises(FileExistsError, match="incomplete"):
        generate_voc(empty, seed=0, config=TINY, progress=False)


def test_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import advlib.data.synthetic as synthetic

    real, calls = synthetic.render_sample, []

    def flaky(seed: int, index: int, config: SyntheticConfig):
        calls.append(index)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(seed, index, config)

    monkeypatch.setattr(synthetic, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_voc(tmp_path / "half", seed=0, config=TINY, progress=False)
    assert list(tmp_path.iterdir()) == []                 # no half-written root, no .tmp- dir


@pytest.mark.parametrize("field, value", [
    ("min_objects", 9), ("image_size", 16), ("n_test", 0), ("n_trainval", 0),
    ("min_size", 70), ("max_size", 200), ("class_weights_ratio", 0.5), ("max_occlusion", 1.0),
    ("difficult_visible_fraction", 1.5), ("jpeg_quality", 0), ("n_test", 2.5),
    ("max_occlusion", "0.5"), ("max_objects", True),
])
def test_bad_config(tmp_path: Path, field: str, value: object) -> None:
    cfg = SyntheticConfig(**{**TINY.__dict__, field: value})
    with pytest.raises(ValueError, match=field):
        generate_voc(tmp_path / "x", config=cfg, progress=False)
    assert not (tmp_path / "x").exists()


def test_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_voc(tmp_path / "x", seed=-1, config=TINY, progress=False)


def _old_annotation_xml(image_id: str, n: int, objects) -> str:
    """The generator's own VOC writer before it moved to ``voc_annotation_xml`` (kept verbatim as
    the reference that the shared writer must reproduce byte for byte)."""
    parts = [f"<annotation>\n\t<folder>SyntheticShapes</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             "\t<source>\n\t\t<database>advlib synthetic shapes</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{n}</width>\n\t\t<height>{n}</height>\n\t\t<depth>3</depth>\n"
             "\t</size>\n\t<segmented>0</segmented>\n"]
    for o in objects:
        x1, y1, x2, y2 = o.box
        parts.append(f"\t<object>\n\t\t<name>{o.name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{int(o.difficult)}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def test_shared_writer_reproduces_the_old_annotations(tmp_path: Path) -> None:
    root = generate_voc(tmp_path / "shapes", seed=7, config=TINY, progress=False)
    for index in range(0, TINY.n_trainval + TINY.n_test, 3):
        _, objects = render_sample(7, index, TINY)
        text = (root / "Annotations" / f"{index:06d}.xml").read_text(encoding="utf-8")
        assert text == _old_annotation_xml(f"{index:06d}", TINY.image_size, objects)


def test_stale_tmp_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free (reuse within the test is vanishingly unlikely)
    stale = tmp_path / f"shapes.tmp-{dead.pid}"
    (stale / "JPEGImages").mkdir(parents=True)
    live = tmp_path / f"shapes.tmp-{os.getppid()}"  # the parent process is alive: kept
    live.mkdir()
    other = tmp_path / f"other.tmp-{dead.pid}"  # another dataset's folder: not ours to remove
    other.mkdir()
    generate_voc(tmp_path / "shapes", seed=1, config=TINY, progress=False)
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shapes", live.name, other.name])
