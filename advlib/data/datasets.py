"""Detection datasets in VOC and COCO layout, resized to a fixed model input size.

Every dataset yields ``(image, target)``: ``image`` float ``[3, H, W]`` in ``[0, 1]`` (resized, not
letterboxed, to ``size``), ``target`` a dict with ``boxes`` float32 ``[N, 4]`` xyxy in pixels of the
resized image, ``labels`` int64 ``[N]`` in ``1..C``, ``difficult`` bool ``[N]``, ``image_id`` (str)
and ``orig_size`` ``(h, w)``. Images without objects are kept (``N = 0``).

VOC XML is parsed here with ``xml.etree.ElementTree`` rather than torchvision's ``VOCDetection``:
that class insists on a ``VOCdevkit/VOC<year>`` layout (so the generated dataset and custom VOC-style
folders would need renaming) and validates nothing (a missing ``<bndbox>`` or an inverted box only
surfaces as a shape error mid-training). All annotations of a split are parsed and validated once at
construction, so a bad file is reported, with its path, before training starts. COCO JSON is indexed
with ``pycocotools.coco.COCO``.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import math
import operator
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

PathLike = str | os.PathLike
_PER_CLASS_SPLIT = re.compile(r".+_(train|val|trainval|test)$")  # VOC per-class files, not splits
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_TOL = 1.0  # boxes may overshoot the image by this many pixels; they are clipped


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``size`` as ``(H, W)`` positive ints (an int means a square)."""
    try:
        pair = (size, size) if isinstance(size, int) else tuple(size)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def _check_classes(classes: Sequence[str], source: str) -> tuple[str, ...]:
    """Validate a class list: non-empty strings, no duplicates; ``source`` names where it came from."""
    if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ValueError(f"classes from {source} must be a list of non-empty names, got {classes!r}")
    names = tuple(c.strip() for c in classes)
    if not names:
        raise ValueError(f"classes from {source} is empty")
    dupes = sorted(c for c, n in Counter(names).items() if n > 1)
    if dupes:
        raise ValueError(f"classes from {source} has duplicates: {dupes}")
    return names


def _sha256(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def find_data_root(root: PathLike, data_format: str = "voc", year: str | int | None = None) -> Path:
    """Resolve a user-given data path to the folder a dataset reads.

    Args:
        root: for VOC, the year folder (holding ``Annotations/``), a ``VOCdevkit`` folder, or its
            parent; for COCO, the folder holding ``annotations/``.
        data_format: ``"voc"`` or ``"coco"``.
        year: VOC year (``"2007"`` or ``"2012"``) when ``root`` is above the year folder; default 2007.

    Returns:
        The resolved absolute folder (VOC: the one holding ``Annotations/``).
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data root {path} does not exist")
    fmt = data_format.lower()
    if fmt == "coco":
        if not (path / "annotations").is_dir():
            raise FileNotFoundError(f"COCO root {path} has no annotations/ folder (expected "
                                    f"{path / 'annotations' / 'instances_<split>.json'})")
        return path.resolve()
    if fmt != "voc":
        raise ValueError(f"data_format must be 'voc' or 'coco', got {data_format!r}")
    if (path / "Annotations").is_dir():
        return path.resolve()
    year = "2007" if year is None else str(year)
    if not year.isdigit():
        raise ValueError(f"year must be like '2007' or '2012', got {year!r}")
    for cand in (path / f"VOC{year}", path / "VOCdevkit" / f"VOC{year}"):
        if (cand / "Annotations").is_dir():
            return cand.resolve()
    found = sorted(p.name for p in [*path.glob("VOC*"), *path.glob("VOCdevkit/VOC*")]
                   if p.is_dir() and re.fullmatch(r"VOC\d{4}", p.name))
    raise FileNotFoundError(f"no VOC data for year {year} under {path}: expected Annotations/ in {path}, "
                            f"{path / f'VOC{year}'} or {path / 'VOCdevkit' / f'VOC{year}'}; "
                            f"found VOC folders: {found or 'none'} (pass year=...)")


class DetectionDataset(Dataset):
    """Common base: stored per-image annotations, image loading, resizing and the target dict.

    Subclasses fill ``classes``, ``ids`` and the per-image lists in ``__init__``; boxes are kept in
    original-image pixels (0-based xyxy, clipped) and scaled to ``size`` on access.
    """

    data_format = "base"

    def __init__(self, size: int | Sequence[int], cache_images: bool) -> None:
        self.size: tuple[int, int] = _check_size(size)
        self.cache_images = bool(cache_images)
        self.classes: tuple[str, ...] = ()
        self.ids: list[str] = []
        self.root = Path()
        self.split = ""
        self._split_file = Path()
        self._files: list[Path] = []  # image file per item
        self._sources: list[Path] = []  # annotation file per item, for error messages
        self._orig_sizes: list[tuple[int, int]] = []  # (h, w) from the annotation
        self._boxes: list[np.ndarray] = []  # float32 [N, 4] xyxy, original pixels
        self._labels: list[np.ndarray] = []  # int64 [N] in 1..C
        self._difficult: list[np.ndarray] = []  # bool [N]
        self._cache: list[Tensor | None] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, i: int) -> int:
        n = len(self.ids)
        i = operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return i

    def annotation(self, i: int) -> dict[str, Any]:
        """The target of item ``i`` without loading the image (for statistics).

        Args:
            i: item index.

        Returns:
            The target dict (``boxes`` scaled to ``size``, ``labels``, ``difficult``, ``image_id``,
            ``orig_size`` from the annotation file).
        """
        i = self._index(i)
        h, w = self._orig_sizes[i]
        H, W = self.size
        scale = np.array([W / w, H / h, W / w, H / h])
        return {
            "boxes": torch.from_numpy((self._boxes[i] * scale).astype(np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(self._labels[i].copy()),
            "difficult": torch.from_numpy(self._difficult[i].copy()),
            "image_id": self.ids[i],
            "orig_size": (h, w),
        }

    def _load_uint8(self, i: int) -> Tensor:
        """Read, convert to RGB, check the size against the annotation, resize; uint8 [3, H, W]."""
        path = self._files[i]
        try:
            with Image.open(path) as im:
                im.load()
                rgb = im.convert("RGB")  # L, CMYK, P, RGBA, ... -> RGB
        except FileNotFoundError:
            raise FileNotFoundError(f"image file {path} not found") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image file {path}: {e}") from e
        h, w = self._orig_sizes[i]
        if (rgb.height, rgb.width) != (h, w):
            raise ValueError(f"image file {path} is {rgb.width}x{rgb.height} (WxH) but "
                             f"{self._sources[i]} says {w}x{h}")
        H, W = self.size
        if (h, w) != (H, W):
            rgb = rgb.resize((W, H), Image.BILINEAR)
        arr = np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # [H, W, 3] -> [3, H, W], C order

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        """Load item ``i``.

        Args:
            i: item index.

        Returns:
            ``(image, target)``: image float32 ``[3, H, W]`` in ``[0, 1]``; target as in ``annotation``.
        """
        i = self._index(i)
        if self.cache_images and not self._cache:
            self._cache = [None] * len(self.ids)
        image = self._cache[i] if self.cache_images else None
        if image is None:
            image = self._load_uint8(i)
            if self.cache_images:
                self._cache[i] = image
        # uint8 -> float in numpy: tiny per-image torch ops are slow when the intra-op thread pool
        # competes for busy cores (measured 40 us vs 1.7 ms per 128x128 image on 2 loaded cores)
        pixels = image.numpy().astype(np.float32)
        pixels /= 255.0
        return torch.from_numpy(pixels), self.annotation(i)

    def identity(self) -> dict[str, Any]:
        """JSON-able description of exactly this data, for model-cache keys (hashes, not timestamps).

        Returns:
            dict with ``format``, ``root`` (resolved), ``split``, ``ids_sha256`` (of the split's id
            list), ``annotations_sha256`` (sizes, boxes, labels, difficult flags), ``classes``,
            ``size`` and ``num_images``.
        """
        ann = [np.asarray(self._orig_sizes, dtype=np.int64).tobytes()]
        for b, l, d in zip(self._boxes, self._labels, self._difficult):
            ann += [np.int64(len(l)).tobytes(), b.tobytes(), l.tobytes(), d.tobytes()]
        return {
            "format": self.data_format,
            "root": str(self.root),
            "split": self.split,
            "ids_sha256": _sha256(["\n".join(self.ids).encode()]),
            "annotations_sha256": _sha256(ann),
            "classes": list(self.classes),
            "size": list(self.size),
            "num_images": len(self.ids),
        }


# ----------------------------------------------------------------------------------------- VOC


class _VOCRecord(NamedTuple):
    xml: Path
    size: tuple[int, int]  # (h, w)
    boxes: np.ndarray  # float32 [N, 4] 0-based xyxy, clipped
    names: list[str]
    difficult: np.ndarray  # bool [N]


def _xml_number(parent: ET.Element, tag: str, xml: Path, where: str) -> float:
    text = parent.findtext(tag)
    if text is None or not text.strip():
        raise ValueError(f"{xml}: {where} has no <{tag}> element")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{xml}: {where} <{tag}> is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{xml}: {where} <{tag}> is not finite: {text.strip()!r}")
    return value


def _parse_voc_xml(xml: Path) -> _VOCRecord:
    """Parse and validate one VOC annotation (1-based inclusive pixel boxes -> 0-based xyxy)."""
    try:
        tree = ET.parse(xml)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {xml} not found") from None
    except ET.ParseError as e:
        raise ValueError(f"{xml}: not valid XML ({e})") from None
    root = tree.getroot()
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml}: missing <size> element (needs <width> and <height>)")
    w, h = _xml_number(size, "width", xml, "<size>"), _xml_number(size, "height", xml, "<size>")
    if w < 1 or h < 1 or w != int(w) or h != int(h):
        raise ValueError(f"{xml}: <size> must hold positive integers, got width={w}, height={h}")
    w, h = int(w), int(h)
    objects = root.findall("object")
    boxes = np.zeros((len(objects), 4), dtype=np.float32)  # [N, 4]
    names, difficult = [], np.zeros(len(objects), dtype=bool)
    for k, obj in enumerate(objects):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{xml}: object {k} has no <name> element")
        where = f"object {k} ({name!r})"
        diff = obj.findtext("difficult")
        if diff is not None and diff.strip():
            try:
                difficult[k] = bool(int(float(diff)))
            except ValueError:
                raise ValueError(f"{xml}: {where} <difficult> is not a number: {diff.strip()!r}") from None
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{xml}: {where} has no <bndbox> element")
        raw = [_xml_number(bnd, t, xml, f"{where} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax")]
        x1, y1, x2, y2 = raw[0] - 1.0, raw[1] - 1.0, raw[2], raw[3]
        desc = f"{where} bndbox (xmin, ymin, xmax, ymax) = {tuple(raw)}"
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{xml}: {desc} is empty: x2 <= x1 or y2 <= y1 in 0-based xyxy {[x1, y1, x2, y2]}")
        if x1 < -_TOL or y1 < -_TOL or x2 > w + _TOL or y2 > h + _TOL:
            raise ValueError(f"{xml}: {desc} lies outside the {w}x{h} (WxH) image by more than 1 pixel")
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{xml}: {desc} lies outside the {w}x{h} (WxH) image")
        boxes[k] = (x1, y1, x2, y2)
        names.append(name)
    return _VOCRecord(xml, (h, w), boxes, names, difficult)


def _voc_split_file(root: Path, split: str) -> Path:
    main = root / "ImageSets" / "Main"
    path = main / f"{split}.txt"
    if not path.is_file():
        avail = sorted(p.stem for p in main.glob("*.txt") if not _PER_CLASS_SPLIT.match(p.stem))
        raise FileNotFoundError(f"VOC split file {path} not found; available splits: "
                                f"{', '.join(avail) if avail else f'none (no split files in {main})'}")
    return path


def _read_ids(path: Path) -> list[str]:
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {path} lists no image ids (empty split)")
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"split file {path} lists ids more than once: {dupes}")
    return ids


def _parse_voc_split(root: Path, split: str) -> tuple[Path, list[str], list[_VOCRecord]]:
    split_file = _voc_split_file(root, split)
    ids = _read_ids(split_file)
    ann_dir = root / "Annotations"
    return split_file, ids, [_parse_voc_xml(ann_dir / f"{i}.xml") for i in ids]


def _voc_classes(root: Path, split: str, records: list[_VOCRecord] | None = None) -> tuple[str, ...]:
    """classes.txt beside Annotations/, else sorted object names of trainval (else of ``split``)."""
    txt = root / "classes.txt"
    if txt.is_file():
        return _check_classes([ln for ln in txt.read_text().splitlines() if ln.strip()], str(txt))
    source = "trainval" if (root / "ImageSets" / "Main" / "trainval.txt").is_file() else split
    if records is None or source != split:
        _, _, records = _parse_voc_split(root, source)
    names = sorted({n for r in records for n in r.names})
    if not names:
        raise ValueError(f"no objects in the '{source}' split of {root} to take class names from; "
                         f"write {txt} (one name per line) or pass classes=")
    return tuple(names)


def _image_index(folder: Path) -> dict[str, str]:
    """Map file stem -> file name for the images in ``folder`` (prefers .jpg over other extensions)."""
    index: dict[str, str] = {}
    with os.scandir(folder) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() in _IMAGE_EXTS and (stem not in index or ext.lower() == ".jpg"):
                index[stem] = e.name
    return index


class VOCDataset(DetectionDataset):
    """Pascal VOC layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``, ``ImageSets/Main/<split>.txt``.

    Args:
        root: the year folder, a ``VOCdevkit`` folder or its parent (see ``find_data_root``).
        split: name of a split file in ``ImageSets/Main``.
        classes: class names (label ``i + 1`` is ``classes[i]``); ``None`` -> ``resolve_classes``.
        size: model input ``(H, W)`` (an int means square); images are resized to it.
        keep_difficult: keep difficult objects (flagged ``difficult=True``, which evaluation
            ignores as VOC does) or drop them (training may).
        cache_images: keep each resized image in memory as uint8 after its first load.
        year: VOC year when ``root`` is above the year folder (default 2007).
    """

    data_format = "voc"

    def __init__(self, root: PathLike, split: str = "trainval", classes: Sequence[str] | None = None,
                 size: int | Sequence[int] = (300, 300), keep_difficult: bool = True,
                 cache_images: bool = False, year: str | int | None = None) -> None:
        super().__init__(size, cache_images)
        self.root, self.split, self.keep_difficult = find_data_root(root, "voc", year), split, keep_difficult
        image_dir = self.root / "JPEGImages"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"VOC image folder {image_dir} not found")
        self._split_file, self.ids, records = _parse_voc_split(self.root, split)
        self.classes = (_check_classes(classes, "the classes argument") if classes is not None
                        else _voc_classes(self.root, split, records))
        label_of = {c: k + 1 for k, c in enumerate(self.classes)}
        stems = _image_index(image_dir)
        missing = [i for i in self.ids if i not in stems]
        if missing:
            raise FileNotFoundError(f"image file {image_dir / (missing[0] + '.jpg')} not found (nor another "
                                    f"extension); {len(missing)} image(s) of {self._split_file} are missing")
        for i, rec in zip(self.ids, records):
            for k, name in enumerate(rec.names):
                if name not in label_of:
                    raise ValueError(f"{rec.xml}: object {k} has class {name!r}, which is not in the "
                                     f"class list {list(self.classes)}")
            keep = np.ones(len(rec.names), dtype=bool) if keep_difficult else ~rec.difficult
            self._files.append(image_dir / stems[i])
            self._sources.append(rec.xml)
            self._orig_sizes.append(rec.size)
            self._boxes.append(rec.boxes[keep])
            self._labels.append(np.array([label_of[n] for n in rec.names], dtype=np.int64)[keep])
            self._difficult.append(rec.difficult[keep])

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "keep_difficult": bool(self.keep_difficult)}


# ---------------------------------------------------------------------------------------- COCO


def _coco_ann_file(root: Path, split: str) -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        avail = sorted(p.stem[len("instances_"):] for p in (root / "annotations").glob("instances_*.json"))
        raise FileNotFoundError(f"COCO annotation file {path} not found; available splits: "
                                f"{', '.join(avail) if avail else 'none'}")
    return path


def _load_coco_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError(f"{path}: expected a COCO instances file with 'images' and 'categories' lists")
    return data


def _coco_categories(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    cats = data["categories"]
    if not cats or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise ValueError(f"{path}: 'categories' must be a non-empty list of {{'id', 'name'}} entries")
    return sorted(cats, key=lambda c: c["id"])


class COCODataset(DetectionDataset):
    """COCO layout: ``root/annotations/instances_<split>.json``, images in ``root/<split>/`` or
    ``root/images/<split>/``.

    Category ids are remapped to labels ``1..C`` in order of category id (or to the order of
    ``classes`` if given, matched by name). Crowd annotations are dropped; boxes narrower or lower
    than 1 pixel are dropped with one warning; boxes within 1 pixel outside the image are clipped.

    Args:
        root: folder holding ``annotations/``.
        split: e.g. ``"val2017"``.
        classes: class names in label order; ``None`` -> the categories sorted by id.
        size: model input ``(H, W)`` (an int means square).
        cache_images: keep each resized image in memory as uint8 after its first load.
    """

    data_format = "coco"

    def __init__(self, root: PathLike, split: str = "val2017", classes: Sequence[str] | None = None,
                 size: int | Sequence[int] = (300, 300), cache_images: bool = False) -> None:
        super().__init__(size, cache_images)
        from pycocotools.coco import COCO

        self.root, self.split = find_data_root(root, "coco"), split
        self._split_file = ann_file = _coco_ann_file(self.root, split)
        image_dir = next((d for d in (self.root / split, self.root / "images" / split) if d.is_dir()), None)
        if image_dir is None:
            raise FileNotFoundError(f"COCO image folder not found: neither {self.root / split} nor "
                                    f"{self.root / 'images' / split} exists")
        data = _load_coco_json(ann_file)
        if not data["images"]:
            raise ValueError(f"{ann_file}: no images (empty split)")
        cats = _coco_categories(data, ann_file)
        names = [str(c["name"]) for c in cats]
        self.classes = _check_classes(classes if classes is not None else names,
                                      "the classes argument" if classes is not None else str(ann_file))
        label_of = {c: k + 1 for k, c in enumerate(self.classes)}
        coco = COCO()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.dataset = data
            coco.createIndex()
        listing = set(os.listdir(image_dir))
        degenerate = 0
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
                if cat["name"] not in label_of:
                    raise ValueError(f"{ann_file}: annotation {ann.get('id')} has class {cat['name']!r}, "
                                     f"which is not in the class list {list(self.classes)}")
                bbox = ann.get("bbox")
                if (not isinstance(bbox, list) or len(bbox) != 4
                        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                    raise ValueError(f"{ann_file}: annotation {ann.get('id')} bbox must be 4 numbers, got {bbox!r}")
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


# ------------------------------------------------------------------------------------- helpers


def resolve_classes(root: PathLike, data_format: str, split: str = "trainval",
                    year: str | int | None = None) -> tuple[str, ...]:
    """The class list a dataset uses when ``classes=None``.

    Args:
        root: data root (see ``find_data_root``).
        data_format: ``"voc"`` or ``"coco"``.
        split: VOC: fallback split when there is no ``trainval`` file; COCO: the split whose
            ``instances_<split>.json`` holds the categories.
        year: VOC year when ``root`` is above the year folder.

    Returns:
        VOC: ``classes.txt`` beside ``Annotations/`` (one name per line) if present, else the sorted
        object names of the trainval split. COCO: category names sorted by category id.
    """
    path = find_data_root(root, data_format, year)
    if data_format.lower() == "voc":
        return _voc_classes(path, split)
    ann_file = _coco_ann_file(path, split)
    return _check_classes([str(c["name"]) for c in _coco_categories(_load_coco_json(ann_file), ann_file)],
                          str(ann_file))


def build_dataset(data_root: PathLike, data_format: str, split: str, classes: Sequence[str] | None = None,
                  size: int | Sequence[int] = (300, 300), **kw: Any) -> DetectionDataset:
    """Build a ``VOCDataset`` or ``COCODataset`` by format name.

    Args:
        data_root: data root (see ``find_data_root``).
        data_format: ``"voc"`` or ``"coco"``.
        split: split name.
        classes: class names or ``None``.
        size: model input ``(H, W)``.
        **kw: passed on (``keep_difficult``, ``cache_images``, ``year`` for VOC; ``cache_images`` for COCO).

    Returns:
        The dataset.
    """
    fmt = str(data_format).lower()
    if fmt == "voc":
        return VOCDataset(data_root, split=split, classes=classes, size=size, **kw)
    if fmt == "coco":
        return COCODataset(data_root, split=split, classes=classes, size=size, **kw)
    raise ValueError(f"data_format must be 'voc' or 'coco', got {data_format!r}")


class DetectionConcatDataset(ConcatDataset):
    """``ConcatDataset`` of detection datasets that share classes and size; keeps ``classes``,
    ``size``, ``ids``, ``annotation(i)`` and ``identity()``."""

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        super().__init__(datasets)
        first = datasets[0]
        for d in datasets[1:]:
            if d.classes != first.classes:
                raise ValueError(f"classes disagree: {d.root} has {list(d.classes)}, "
                                 f"{first.root} has {list(first.classes)}")
            if d.size != first.size:
                raise ValueError(f"sizes disagree: {d.size} vs {first.size}")
        self.classes, self.size = first.classes, first.size
        self.ids = [i for d in datasets for i in d.ids]

    def annotation(self, i: int) -> dict[str, Any]:
        """The target of item ``i`` without loading the image."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        d = bisect.bisect_right(self.cumulative_sizes, i)
        return self.datasets[d].annotation(i - (self.cumulative_sizes[d - 1] if d else 0))

    def identity(self) -> dict[str, Any]:
        """JSON-able identity: the parts' identities in order."""
        return {"format": "concat", "parts": [d.identity() for d in self.datasets]}


def voc0712(root: PathLike, size: int | Sequence[int] = (300, 300), classes: Sequence[str] | None = None,
            keep_difficult: bool = True, cache_images: bool = False) -> DetectionConcatDataset:
    """VOC2007 trainval + VOC2012 trainval, the papers' training set ("07+12").

    Args:
        root: a ``VOCdevkit`` folder or its parent, holding ``VOC2007`` and ``VOC2012``.
        size, classes, keep_difficult, cache_images: as for ``VOCDataset``. With ``classes=None``
            each year resolves its own classes and they must agree.

    Returns:
        A ``DetectionConcatDataset`` (a ``ConcatDataset``) of the two.
    """
    r07, r12 = find_data_root(root, "voc", "2007"), find_data_root(root, "voc", "2012")
    if r07 == r12:
        raise ValueError(f"voc0712 needs a VOCdevkit folder (or its parent) holding VOC2007 and VOC2012, "
                         f"got the single year folder {r07}")
    parts = [VOCDataset(r, "trainval", classes, size, keep_difficult, cache_images) for r in (r07, r12)]
    return DetectionConcatDataset(parts)


def collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Collate ``(image, target)`` pairs for a ``DataLoader``.

    Args:
        batch: items of a detection dataset (images all of one size).

    Returns:
        ``(images, targets)``: images ``[B, 3, H, W]``, targets a list of ``B`` dicts.
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    shapes = sorted({tuple(img.shape) for img, _ in batch})
    if len(shapes) > 1:
        raise ValueError(f"collate needs images of one size, got shapes {shapes}")
    return torch.stack([img for img, _ in batch]), [t for _, t in batch]  # B x [3, H, W] -> [B, 3, H, W]
