"""Where the data is: the data root, split files and split names of VOC and COCO folders."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

PathLike = str | os.PathLike
log = logging.getLogger(__name__)

_PER_CLASS_SPLIT = re.compile(r".+_(train|val|trainval|test)$")  # VOC per-class files, not splits
_GENERIC_PAIRS = (("trainval", "test"), ("train", "val"), ("train", "test"))
_COCO_PAIRS = (("train2017", "val2017"),) + _GENERIC_PAIRS


def read_text(path: Path) -> str:
    """Read a text file as UTF-8 (a byte-order mark is dropped), naming the file on a decode error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None


def _voc_year_dirs(path: Path) -> dict[str, Path]:
    """``{year: folder}`` for the ``VOC<year>`` folders holding ``Annotations/`` in ``path`` or ``path/VOCdevkit``."""
    found: dict[str, Path] = {}
    for base in (path, path / "VOCdevkit"):
        for p in sorted(base.glob("VOC*")):
            if re.fullmatch(r"VOC\d{4}", p.name) and (p / "Annotations").is_dir():
                found.setdefault(p.name[3:], p)
    return found


def find_data_root(root: PathLike, data_format: str = "voc", year: str | int | None = None) -> Path:
    """Resolve a user-given data path to the folder a dataset reads.

    Args:
        root: for VOC, the year folder (holding ``Annotations/``), a ``VOCdevkit`` folder, or its
            parent; for COCO, the folder holding ``annotations/``.
        data_format: ``"voc"`` or ``"coco"``.
        year: VOC year (``"2007"`` or ``"2012"``) when ``root`` is above the year folder. ``None``:
            the only ``VOC<year>`` folder if there is exactly one, else ``VOC2007``.

    Returns:
        The resolved absolute folder (VOC: the one holding ``Annotations/``).
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data root {path} does not exist")
    fmt = str(data_format).lower()
    if fmt == "coco":
        if not (path / "annotations").is_dir():
            raise FileNotFoundError(f"COCO root {path} has no annotations/ folder (expected "
                                    f"{path / 'annotations' / 'instances_<split>.json'})")
        return path.resolve()
    if fmt != "voc":
        raise ValueError(f"data_format must be 'voc' or 'coco', got {data_format!r}")
    if (path / "Annotations").is_dir():
        return path.resolve()
    found = _voc_year_dirs(path)
    if year is None:
        if len(found) == 1:
            return next(iter(found.values())).resolve()
        year = "2007"
    year = str(year)
    if not year.isdigit():
        raise ValueError(f"year must be like '2007' or '2012', got {year!r}")
    if year in found:
        return found[year].resolve()
    names = sorted(p.name for p in [*path.glob("VOC*"), *path.glob("VOCdevkit/VOC*")]
                   if p.is_dir() and re.fullmatch(r"VOC\d{4}", p.name))
    raise FileNotFoundError(f"no VOC data for year {year} under {path}: expected Annotations/ in {path}, "
                            f"{path / f'VOC{year}'} or {path / 'VOCdevkit' / f'VOC{year}'}; "
                            f"found VOC folders: {names or 'none'} (pass year=...)")


def available_splits(root: Path, data_format: str) -> list[str]:
    """Split names present in a resolved data root (VOC split files, COCO instances files), sorted."""
    if str(data_format).lower() == "coco":
        return sorted(p.stem[len("instances_"):] for p in (root / "annotations").glob("instances_*.json"))
    main = root / "ImageSets" / "Main"
    return sorted(p.stem for p in main.glob("*.txt") if not _PER_CLASS_SPLIT.match(p.stem))


def voc_split_file(root: Path, split: str) -> Path:
    """``ImageSets/Main/<split>.txt`` of a VOC year folder; FileNotFoundError lists the available splits."""
    main = root / "ImageSets" / "Main"
    path = main / f"{split}.txt"
    if not path.is_file():
        avail = available_splits(root, "voc")
        raise FileNotFoundError(f"VOC split file {path} not found; available splits: "
                                f"{', '.join(avail) if avail else f'none (no split files in {main})'}")
    return path


def coco_ann_file(root: Path, split: str) -> Path:
    """``annotations/instances_<split>.json``; FileNotFoundError lists the available splits."""
    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        avail = available_splits(root, "coco")
        raise FileNotFoundError(f"COCO annotation file {path} not found; available splits: "
                                f"{', '.join(avail) if avail else 'none'}")
    return path


def read_ids(path: Path) -> list[str]:
    """Image ids of a VOC split file (first word of each non-empty line), checked for emptiness and repeats."""
    ids = [line.split()[0] for line in read_text(path).splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {path} lists no image ids (empty split)")
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"split file {path} lists ids more than once: {dupes}")
    return ids


def resolve_splits(root: PathLike, data_format: str, train_split: str | None = None,
                   test_split: str | None = None, year: str | int | None = None) -> tuple[str, str]:
    """Training and test split names, auto-detected where ``None``.

    Pairs are tried in order ``trainval``/``test``, ``train``/``val``, ``train``/``test`` (COCO:
    ``train2017``/``val2017`` first); a given name fixes its side of the pair. A split exists when
    ``ImageSets/Main/<name>.txt`` (VOC) or ``annotations/instances_<name>.json`` (COCO) does.

    Args:
        root: data root (see ``find_data_root``).
        data_format: ``"voc"`` or ``"coco"``.
        train_split, test_split: split names, or ``None`` to detect.
        year: VOC year when ``root`` is above the year folder.

    Returns:
        ``(train_split, test_split)``; the choice is logged (``logging.info``).

    Raises:
        FileNotFoundError: a named split is missing, or no pair fits; lists the available splits.
    """
    path = find_data_root(root, data_format, year)
    fmt = str(data_format).lower()
    avail = available_splits(path, fmt)
    where = path / ("annotations" if fmt == "coco" else "ImageSets/Main")
    for name in (train_split, test_split):
        if name is not None and name not in avail:
            raise FileNotFoundError(f"split {name!r} not found in {where}; available splits: "
                                    f"{', '.join(avail) if avail else 'none'}")
    if train_split is not None and test_split is not None:
        return train_split, test_split
    pairs = _COCO_PAIRS if fmt == "coco" else _GENERIC_PAIRS
    if train_split is not None:  # partners of the given name first, then any test-side name
        cands = [(train_split, b) for a, b in pairs if a == train_split] + [(train_split, b) for _, b in pairs]
    elif test_split is not None:
        cands = [(a, test_split) for a, b in pairs if b == test_split] + [(a, test_split) for a, _ in pairs]
    else:
        cands = list(pairs)
    for a, b in cands:
        if a != b and a in avail and b in avail:
            log.info("splits of %s: train=%r, test=%r", path, a, b)
            return a, b
    tried = ", ".join(f"{a}/{b}" for a, b in dict.fromkeys(cands))
    raise FileNotFoundError(f"cannot pick train/test splits in {where} (tried {tried}); available splits: "
                            f"{', '.join(avail) if avail else 'none'}; pass the split names")
