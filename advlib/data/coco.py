"""COCO layout: ``annotations/instances_<split>.json`` indexed with ``pycocotools`` and ``COCODataset``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from advlib.data.base import DetectionDataset
from advlib.data.classes import detect_pair, read_classes_txt, warn_empty_classes
from advlib.data.layout import PathLike, coco_ann_file, find_data_root
from advlib.data.validate import check_classes, match_classes

log = logging.getLogger(__name__)
_TOL = 1.0  # boxes may overshoot the image by this many pixels; they are clipped


def load_coco_json(path: Path) -> dict[str, Any]:
    """Read a COCO instances file (UTF-8), checking it has ``images`` and ``categories`` lists."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{path}: expected a COCO instances file with 'images' and 'categories' lists")
    return data


def coco_categories(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The categories sorted by id, checked to be ``{'id', 'name'}`` entries."""
    cats = data["categories"]
    if not cats or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise ValueError(f"{path}: 'categories' must be a non-empty list of {{'id', 'name'}} entries")
    return sorted(cats, key=lambda c: c["id"])


def coco_split_classes(root: Path, splits: Sequence[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """Category names (by id) of the first split and its objects per name (crowd boxes excluded).

    Args:
        root: resolved COCO root.
        splits: split names; the others' category names must be the same set.

    Returns:
        ``(names, counts)``.
    """
    first = coco_ann_file(root, splits[0])
    data = load_coco_json(first)
    names = check_classes([str(c["name"]) for c in coco_categories(data, first)], str(first))
    for s in splits[1:]:
        path = coco_ann_file(root, s)
        other = [str(c["name"]) for c in coco_categories(load_coco_json(path), path)]
        if set(other) != set(names):
            raise ValueError(f"categories of {path} ({sorted(other)}) differ from those of {first} ({sorted(names)})")
    name_of = {c["id"]: str(c["name"]) for c in data["categories"]}
    counts = Counter(name_of.get(a.get("category_id")) for a in data.get("annotations") or []
                     if isinstance(a, dict) and not a.get("iscrowd", 0))
    return names, {n: counts.get(n, 0) for n in names}


class COCODataset(DetectionDataset):
    """COCO layout: ``root/annotations/instances_<split>.json``, images in ``root/<split>/`` or
    ``root/images/<split>/``.

    Category ids are remapped to labels ``1..C`` in order of category id (or to the order of
    ``classes`` if given, matched by name case-insensitively; other categories' boxes are dropped).
    Crowd annotations are dropped; boxes narrower or lower than 1 pixel are dropped with one
    warning; boxes within 1 pixel outside the image are clipped; annotations whose ``image_id`` is
    not among the images are ignored with one warning.

    Args:
        root: folder holding ``annotations/``.
        split: e.g. ``"val2017"``.
        classes: class names in label order (a subset of the categories); ``None`` -> ``classes.txt``
            in ``root`` if present, else the categories sorted by id.
        size: model input ``(H, W)`` (an int means square).
        cache_images: keep each resized image in memory as uint8 after its first load.
    """

    data_format = "coco"

    def __init__(self, root: PathLike, split: str = "val2017", classes: Sequence[str] | None = None,
                 size: int | Sequence[int] = (300, 300), cache_images: bool = False) -> None:
        super().__init__(size, cache_images)
        from pycocotools.coco import COCO

        self.root, self.split = find_data_root(root, "coco"), split
        self._split_file = ann_file = coco_ann_file(self.root, split)
        image_dir = next((d for d in (self.root / split, self.root / "images" / split) if d.is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(f"COCO image folder not found: neither {self.root / split} nor "
                                    f"{self.root / 'images' / split} exists")
        data = load_coco_json(ann_file)
        if not data["images"]:
            raise ValueError(f"{ann_file}: no images (empty split)")
        cats = coco_categories(data, ann_file)
        available = read_classes_txt(self.root) or check_classes([str(c["name"]) for c in cats], str(ann_file))
        if classes is None:
            self.classes, label_of = available, {c: k + 1 for k, c in enumerate(available)}
        else:
            label_of = match_classes(classes, available, self.root)
            self.classes = check_classes(classes, "the classes argument")
        coco = COCO()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.dataset = data
            coco.createIndex()
        orphans = sum(1 for a in data.get("annotations") or [] if a.get("image_id") not in coco.imgs)
        if orphans:
            warnings.warn(f"{ann_file}: ignored {orphans} annotation(s) whose image_id is not in 'images'",
                          stacklevel=2)
        listing = set(os.listdir(image_dir))
        degenerate, dropped = 0, Counter()
        for img_id in sorted(coco.imgs):
            img = coco.imgs[img_id]
            try:
                fname, w, h = str(img["file_name"]), int(img["width"]), int(img["height"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{ann_file}: image {img_id} needs file_name, width and height") from None
            if fname not in listing and not (image_dir / fname).is_file():
                raise FileNotFoundError(f"image file {image_dir / fname} not found (listed in {ann_file})")
            boxes, labels = [], []
            for ann in coco.imgToAnns.get(img_id, []):
                if ann.get("iscrowd", 0):
                    continue
                cat = coco.cats.get(ann.get("category_id"))
                if cat is None:
                    raise ValueError(f"{ann_file}: annotation {ann.get('id')} has unknown category_id "
                                     f"{ann.get('category_id')!r}")
                if cat["name"] not in available:
                    raise ValueError(f"{ann_file}: annotation {ann.get('id')} has class {cat['name']!r}, "
                                     f"which is not in the class list {list(available)}")
                bbox = ann.get("bbox")
                if (not isinstance(bbox, list) or len(bbox) != 4
                        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                    raise ValueError(f"{ann_file}: annotation {ann.get('id')} bbox must be 4 numbers, got {bbox!r}")
                if cat["name"] not in label_of:
                    dropped[cat["name"]] += 1
                    continue
                x, y, bw, bh = bbox
                if bw < 1 or bh < 1:
                    degenerate += 1
                    continue
                if x < -_TOL or y < -_TOL or x + bw > w + _TOL or y + bh > h + _TOL:
                    raise ValueError(f"{ann_file}: annotation {ann.get('id')} bbox [x, y, w, h] = {bbox} lies "
                                     f"outside the {w}x{h} (WxH) image {fname} by more than 1 pixel")
                x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
                x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
                if x2 <= x1 or y2 <= y1:
                    degenerate += 1
                    continue
                boxes.append((x1, y1, x2, y2))
                labels.append(label_of[cat["name"]])
            self.ids.append(str(img_id))
            self._files.append(image_dir / fname)
            self._sources.append(ann_file)
            self._orig_sizes.append((h, w))
            self._boxes.append(np.array(boxes, dtype=np.float32).reshape(-1, 4))  # [N, 4]
            self._labels.append(np.array(labels, dtype=np.int64))
            self._difficult.append(np.zeros(len(labels), dtype=bool))
        if degenerate:
            warnings.warn(f"{ann_file}: dropped {degenerate} degenerate box(es) (width or height < 1 pixel)",
                          stacklevel=2)
        if dropped:
            log.info("%s: dropped %d object(s) of %d unselected class(es)", ann_file, sum(dropped.values()),
                     len(dropped))
        pair = detect_pair(self.root, "coco")
        if pair is not None and split == pair[0]:
            warn_empty_classes(self.root, split, self.objects_per_class())
