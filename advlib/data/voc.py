"""Pascal VOC layout: the XML writer, the validating XML reader and ``VOCDataset``.

VOC XML is parsed with ``xml.etree.ElementTree`` rather than torchvision's ``VOCDetection``: that
class insists on a ``VOCdevkit/VOC<year>`` layout and validates nothing (a missing ``<bndbox>`` or
an inverted box only surfaces as a shape error mid-training). All annotations of a split are parsed
and validated once at construction, so a bad file is reported, with its path, before training.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence
from xml.sax.saxutils import escape

import numpy as np

from advlib.data.base import DetectionConcatDataset, DetectionDataset
from advlib.data.classes import detect_pair, read_classes_txt, warn_empty_classes
from advlib.data.images import image_index
from advlib.data.layout import PathLike, find_data_root, read_ids, voc_split_file
from advlib.data.validate import check_classes, match_classes

log = logging.getLogger(__name__)
_TOL = 1.0  # boxes may overshoot the image by this many pixels; they are clipped


class VOCObject(NamedTuple):
    """One object for ``voc_annotation_xml``: ``box`` is 0-based xyxy in pixels (``x2``, ``y2`` are
    the right/bottom edges), written as VOC's 1-based ``xmin = x1 + 1 .. xmax = x2``."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False


def _num(v: Any) -> str:
    """Integers as integers, floats with ``repr`` (exact round trip)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return repr(float(v))


def voc_annotation_xml(filename: str, width: int, height: int, objects: Iterable[VOCObject | tuple],
                       folder: str | None = None, database: str | None = None) -> str:
    """One Pascal VOC annotation as XML text (names are escaped, so ``&`` and ``<`` round-trip).

    Args:
        filename: image file name (``<filename>``).
        width, height: image size in pixels.
        objects: ``VOCObject``s or ``(name, (x1, y1, x2, y2), difficult)`` tuples, boxes 0-based xyxy.
        folder: optional ``<folder>``; database: optional ``<source><database>``.

    Returns:
        The XML document (tab-indented, trailing newline).
    """
    parts = ["<annotation>\n"]
    if folder is not None:
        parts.append(f"\t<folder>{escape(folder)}</folder>\n")
    parts.append(f"\t<filename>{escape(filename)}</filename>\n")
    if database is not None:
        parts.append(f"\t<source>\n\t\t<database>{escape(database)}</database>\n\t</source>\n")
    parts.append(f"\t<size>\n\t\t<width>{_num(width)}</width>\n\t\t<height>{_num(height)}</height>\n"
                 "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n")
    for obj in objects:
        name, (x1, y1, x2, y2), difficult = VOCObject(*obj)
        parts.append(f"\t<object>\n\t\t<name>{escape(name)}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{int(bool(difficult))}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{_num(x1 + 1)}</xmin>\n\t\t\t<ymin>{_num(y1 + 1)}</ymin>\n"
                     f"\t\t\t<xmax>{_num(x2)}</xmax>\n\t\t\t<ymax>{_num(y2)}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


class VOCRecord(NamedTuple):
    """A parsed annotation: ``size`` ``(h, w)``, ``boxes`` float32 ``[N, 4]`` 0-based xyxy (clipped)."""

    xml: Path
    size: tuple[int, int]
    boxes: np.ndarray
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


def parse_voc_xml(xml: Path) -> VOCRecord:
    """Parse and validate one VOC annotation (1-based inclusive pixel boxes -> 0-based xyxy).

    Args:
        xml: the annotation file.

    Returns:
        The ``VOCRecord``; ValueError names the file and the bad element.
    """
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
    return VOCRecord(xml, (h, w), boxes, names, difficult)


def parse_voc_split(root: Path, split: str) -> tuple[Path, list[str], list[VOCRecord]]:
    """Split file, ids and parsed annotations of one split of a VOC year folder."""
    split_file = voc_split_file(root, split)
    ids = read_ids(split_file)
    ann_dir = root / "Annotations"
    return split_file, ids, [parse_voc_xml(ann_dir / f"{i}.xml") for i in ids]


def voc_split_names(root: Path, splits: Sequence[str],
                    known: dict[str, list[VOCRecord]] | None = None) -> dict[str, Counter]:
    """Objects per class name in each split (``known`` holds splits parsed already)."""
    known = known or {}
    out = {}
    for s in splits:
        records = known[s] if s in known else parse_voc_split(root, s)[2]
        out[s] = Counter(n for r in records for n in r.names)
    return out


class VOCDataset(DetectionDataset):
    """Pascal VOC layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``, ``ImageSets/Main/<split>.txt``.

    Args:
        root: the year folder, a ``VOCdevkit`` folder or its parent (see ``find_data_root``).
        split: name of a split file in ``ImageSets/Main``.
        classes: class names (label ``i + 1`` is ``classes[i]``), a subset of the data's classes
            matched case-insensitively (objects of other classes are dropped; images left without
            objects stay as background); ``None`` -> ``resolve_classes`` (``classes.txt``, else the
            union over this split and the detected train/test pair).
        size: model input ``(H, W)`` (an int means square); images are resized to it.
        keep_difficult: keep difficult objects (flagged ``difficult=True``, which evaluation
            ignores as VOC does) or drop them (training may).
        cache_images: keep each resized image in memory as uint8 after its first load.
        year: VOC year when ``root`` is above the year folder (default: the only one, else 2007).
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
        self._split_file, self.ids, records = parse_voc_split(self.root, split)
        pair = detect_pair(self.root, "voc")
        available = read_classes_txt(self.root)
        if available is None:
            splits = list(dict.fromkeys([*(pair or ()), split]))
            per_split = voc_split_names(self.root, splits, {split: records})
            available = tuple(sorted({n for c in per_split.values() for n in c}))
            if not available and classes is not None:  # no objects anywhere: nothing to match against
                available = check_classes(classes, "the classes argument")
            if not available:
                raise ValueError(f"no objects in the splits {splits} of {self.root} to take class names from; "
                                 f"write {self.root / 'classes.txt'} (one name per line) or pass classes=")
        if classes is None:
            self.classes, label_of = available, {c: k + 1 for k, c in enumerate(available)}
        else:
            label_of = match_classes(classes, available, self.root)
            self.classes = check_classes(classes, "the classes argument")
        stems = image_index(image_dir)
        missing = [i for i in self.ids if i not in stems]
        if missing:
            raise FileNotFoundError(f"image file {image_dir / (missing[0] + '.jpg')} not found (nor another "
                                    f"extension); {len(missing)} image(s) of {self._split_file} are missing")
        known, dropped = set(available), Counter()
        for i, rec in zip(self.ids, records):
            for k, name in enumerate(rec.names):
                if name not in known:
                    raise ValueError(f"{rec.xml}: object {k} has class {name!r}, which is not in the "
                                     f"class list {list(available)}")
            labels = np.array([label_of.get(n, 0) for n in rec.names], dtype=np.int64)
            dropped.update(n for n, lab in zip(rec.names, labels) if lab == 0)
            keep = (labels > 0) & (True if keep_difficult else ~rec.difficult)
            self._files.append(image_dir / stems[i])
            self._sources.append(rec.xml)
            self._orig_sizes.append(rec.size)
            self._boxes.append(rec.boxes[keep])
            self._labels.append(labels[keep])
            self._difficult.append(rec.difficult[keep])
        if dropped:
            log.info("%s %s: dropped %d object(s) of %d unselected class(es)", self.root, split,
                     sum(dropped.values()), len(dropped))
        if pair is not None and split == pair[0]:
            warn_empty_classes(self.root, split, self.objects_per_class())

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "keep_difficult": bool(self.keep_difficult)}


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
