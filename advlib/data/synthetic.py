"""Generated shapes detection dataset in Pascal VOC layout (the project's default data).

The images are rendered by :mod:`advlib.data.shapes` (see there for what they show); the same
seed gives byte-identical files. :func:`generate_voc` writes the dataset atomically (temporary
sibling directory, then a rename), is idempotent, and first removes temporary directories that
interrupted runs of dead processes left beside the root; :func:`render_sample` renders one image
in memory (used by the tests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from advlib.data.shapes import MIN_VISIBLE, SHAPE_CLASSES, SyntheticConfig, SyntheticObject, render_sample
from advlib.data.voc import voc_annotation_xml

__all__ = ["SHAPE_CLASSES", "SyntheticConfig", "SyntheticObject", "generate_voc", "remove_stale_tmp",
           "render_sample"]

log = logging.getLogger(__name__)
_FORMAT_VERSION = 2


def _validate(config: SyntheticConfig, seed: int) -> None:
    """Raise ``ValueError`` naming the first bad field of ``config`` (or the seed)."""
    def bad(field: str, value: object, expected: str) -> ValueError:
        return ValueError(f"SyntheticConfig.{field}={value!r}: expected {expected}")

    c = config
    for f in dataclasses.fields(c):                   # ints must be ints; floats may be ints too
        value, kinds = getattr(c, f.name), (int, np.integer)
        if isinstance(f.default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise bad(f.name, value, "a bool")
            continue
        if isinstance(f.default, float):
            kinds = (int, float, np.integer, np.floating)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise bad(f.name, value, f"a {type(f.default).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    checks = [
        ("n_trainval", c.n_trainval >= 1, ">= 1"),
        ("n_test", c.n_test >= 1, ">= 1"),
        ("image_size", 32 <= c.image_size <= 4096, "in [32, 4096]"),
        ("min_objects", c.min_objects >= 1, ">= 1"),
        ("max_objects", c.min_objects <= c.max_objects <= 64, f"in [min_objects={c.min_objects}, 64]"),
        ("min_size", c.min_size >= 4, ">= 4"),
        ("max_size", c.min_size <= c.max_size <= 128, f"in [min_size={c.min_size}, 128]"),
        ("class_weights_ratio", c.class_weights_ratio >= 1.0, ">= 1"),
        ("max_occlusion", 0.0 <= c.max_occlusion <= 1 - MIN_VISIBLE, f"in [0, {1 - MIN_VISIBLE}]"),
        ("difficult_visible_fraction", 0.0 <= c.difficult_visible_fraction <= 1.0, "in [0, 1]"),
        ("jpeg_quality", 1 <= c.jpeg_quality <= 100, "in [1, 100]"),
        ("textured_fraction", 0.0 <= c.textured_fraction <= 1.0, "in [0, 1]"),
    ]
    for field, ok, expected in checks:
        if not ok:
            raise bad(field, getattr(c, field), expected)


def _annotation_xml(image_id: str, n: int, objects: list[SyntheticObject]) -> str:
    """Standard VOC XML; the integer box ``(x1, y1, x2, y2)`` becomes 1-based ``x1+1 .. x2``."""
    return voc_annotation_xml(f"{image_id}.jpg", n, n, [(o.name, o.box, o.difficult) for o in objects],
                              folder="SyntheticShapes", database="advlib synthetic shapes")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (``os.kill(pid, 0)``; another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_tmp(root: str | Path) -> list[Path]:
    """Remove ``<root>.tmp-<pid>`` / ``<root>.old-<pid>`` folders that dead processes left beside ``root``.

    Args:
        root: the dataset directory (its siblings are inspected).

    Returns:
        The removed paths (folders of live processes, including this one, are kept).
    """
    root = Path(root)
    removed = []
    if not root.parent.is_dir():
        return removed
    pattern = re.compile(re.escape(root.name) + r"\.(tmp|old)-(\d+)")
    for p in root.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or int(m.group(2)) == os.getpid() or _pid_alive(int(m.group(2))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        log.info("removed %s left by an interrupted generation (process %s)", p, m.group(2))
        removed.append(p)
    return removed


def _recipe(seed: int, config: SyntheticConfig) -> dict:
    """What determines the files (plain JSON types, so ``5`` and ``5.0`` give the same bytes)."""
    cfg = {f.name: type(f.default)(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {"format_version": _FORMAT_VERSION, "generator": "advlib.data.synthetic",
            "seed": int(seed), "config": cfg, "classes": list(SHAPE_CLASSES)}


def _split_ids(config: SyntheticConfig) -> dict[str, list[str]]:
    ids = [f"{i:06d}" for i in range(config.n_trainval + config.n_test)]
    return {"trainval": ids[:config.n_trainval], "test": ids[config.n_trainval:]}


def _mismatch(root: Path, recipe: dict, config: SyntheticConfig) -> str | None:
    """None if ``root`` holds a complete dataset made from ``recipe``, else what differs."""
    try:
        old = json.loads((root / "generation.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "has no generation.json (not a generated dataset)"
    except (OSError, ValueError) as err:
        return f"has an unreadable generation.json ({err})"
    diffs = [f"{k}: {old.get(k)!r} != requested {v!r}" for k, v in recipe.items()
             if k != "config" and old.get(k) != v]
    old_cfg = old.get("config") if isinstance(old.get("config"), dict) else {}
    diffs += [f"config.{k}: {old_cfg.get(k)!r} != requested {v!r}"
              for k, v in recipe["config"].items() if old_cfg.get(k) != v]
    if diffs:
        return "was generated with different settings (" + "; ".join(diffs) + ")"
    missing = [i for ids in _split_ids(config).values() for i in ids
               if not (root / "Annotations" / f"{i}.xml").is_file()
               or not (root / "JPEGImages" / f"{i}.jpg").is_file()]
    extra = ["classes.txt", "ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt"]
    missing += [e for e in extra if not (root / e).is_file()]
    if missing:
        return f"is incomplete ({len(missing)} files missing, e.g. {missing[:3]})"
    return None


def _write(tmp: Path, seed: int, config: SyntheticConfig, progress: bool) -> None:
    """Write the whole dataset into ``tmp`` (generation.json last)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp / sub).mkdir(parents=True)
    splits = _split_ids(config)
    counts = {s: {c: 0 for c in SHAPE_CLASSES} for s in splits}
    difficult = {s: {c: 0 for c in SHAPE_CLASSES} for s in splits}
    total = config.n_trainval + config.n_test
    with tqdm(total=total, desc=f"shapes -> {tmp.name}", disable=not progress, leave=False) as bar:
        for split, ids in splits.items():
            for image_id in ids:
                image, objects = render_sample(seed, int(image_id), config)
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg",
                                            quality=config.jpeg_quality, subsampling=0)
                (tmp / "Annotations" / f"{image_id}.xml").write_text(
                    _annotation_xml(image_id, config.image_size, objects), encoding="utf-8")
                for o in objects:
                    counts[split][o.name] += 1
                    difficult[split][o.name] += int(o.difficult)
                bar.update(1)
            (tmp / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids), encoding="utf-8")
    (tmp / "classes.txt").write_text("".join(c + "\n" for c in SHAPE_CLASSES), encoding="utf-8")
    meta = {**_recipe(seed, config), "images": {s: len(v) for s, v in splits.items()},
            "class_counts": counts, "difficult_counts": difficult}
    (tmp / "generation.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def generate_voc(root: str | Path, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Generate the shapes dataset in Pascal VOC layout under ``root`` (atomically, idempotent).

    Writes ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/{trainval,test}.txt``,
    ``classes.txt`` (names in label order 1..C) and ``generation.json`` (seed, config, class
    counts per split). Ids are ``000000..`` with trainval first. Box coordinates are 1-based
    like VOC: a reader recovers the tight pixel box as ``x1 = xmin - 1, x2 = xmax``.

    Args:
        root: dataset directory; generated in ``<root>.tmp-<pid>`` and renamed into place.
        seed: non-negative int; the same seed gives byte-identical files.
        config: dataset parameters (validated, ``ValueError`` names the bad field).
        overwrite: replace an existing ``root`` whose content differs (an identical dataset is
            kept; bump ``_FORMAT_VERSION`` when the drawing code changes).
        progress: show a tqdm progress bar.

    Returns:
        ``Path(root)``. Returns at once if ``root`` already holds this exact dataset.

    Raises:
        ValueError: bad ``config`` or ``seed``.
        FileExistsError: ``root`` exists, is not empty and differs, and ``overwrite`` is False.
    """
    _validate(config, seed)
    root = Path(root)
    remove_stale_tmp(root)
    recipe = _recipe(seed, config)
    if root.exists():
        problem = _mismatch(root, recipe, config)
        if problem is None:
            return root
        if not overwrite and not (root.is_dir() and not any(root.iterdir())):
            raise FileExistsError(f"{root} exists and {problem}; pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, seed, config, progress)
        if root.exists():                 # overwrite or empty placeholder: move it aside first
            old = root.parent / f"{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            try:
                os.replace(tmp, root)
            except OSError:               # another process finished first
                if _mismatch(root, recipe, config) is not None:
                    raise
                shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
