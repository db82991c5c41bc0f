"""Class lists: ``classes.txt``, the union of the splits' object names, and empty-class warnings."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

from advlib.data.layout import PathLike, find_data_root, read_text, resolve_splits
from advlib.data.validate import check_classes

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str, str]] = set()  # (root, split, class) already warned about


def read_classes_txt(root: Path) -> tuple[str, ...] | None:
    """Names in ``<root>/classes.txt`` (UTF-8, one per line, blank lines skipped), or None without one."""
    txt = root / "classes.txt"
    if not txt.is_file():
        return None
    return check_classes([ln for ln in read_text(txt).splitlines() if ln.strip()], str(txt))


def detect_pair(root: Path, data_format: str) -> tuple[str, str] | None:
    """The auto-detected ``(train, test)`` split pair of a resolved root, or None when none fits."""
    try:
        return resolve_splits(root, data_format)
    except FileNotFoundError:
        return None


def warn_empty_classes(root: Path, split: str, counts: dict[str, int]) -> list[str]:
    """Warn once per class (and root, split) about classes with no objects in a training split.

    Args:
        root: data root, for the message.
        split: the training split's name.
        counts: ``{class: objects in the split}``.

    Returns:
        The classes with no objects (warned now or earlier).
    """
    empty = [c for c, n in counts.items() if n == 0]
    for c in empty:
        if (str(root), split, c) not in _WARNED:
            _WARNED.add((str(root), split, c))
            warnings.warn(f"class {c!r} has no objects in the training split {split!r} of {root}; it is kept "
                          f"(the detector cannot learn it)", stacklevel=3)
    return empty


def _splits_arg(root: Path, data_format: str, splits: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """Split names to read and whether ``splits[0]`` is a training split (for warnings)."""
    pair = detect_pair(root, data_format) if splits is None or isinstance(splits, str) else None
    if isinstance(splits, str):  # one split: read it together with the detected pair
        return list(dict.fromkeys([*(pair or ()), splits])), pair is not None
    if splits is None:
        if pair is None:
            resolve_splits(root, data_format)  # raises, listing the available splits
        return list(pair), True
    if not splits or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"splits must be split names, got {splits!r}")
    return list(dict.fromkeys(splits)), True


def resolve_classes(root: PathLike, data_format: str, splits: str | Sequence[str] | None = None,
                    year: str | int | None = None) -> tuple[str, ...]:
    """The class list a dataset uses when ``classes=None``.

    Args:
        root: data root (see ``find_data_root``).
        data_format: ``"voc"`` or ``"coco"``.
        splits: ``(train, test)`` split names (the first is the training split); ``None`` detects
            them with ``resolve_splits``; a single name reads that split plus the detected pair.
        year: VOC year when ``root`` is above the year folder.

    Returns:
        ``classes.txt`` (beside ``Annotations/`` for VOC, in the root for COCO; UTF-8, one name per
        line) if present. Else VOC: the sorted union of the object names of all ``splits``; COCO:
        the category names sorted by category id (of the first split; the others must agree).
        With names from the annotations, a class without objects in the training split is kept
        and warned about once (``warnings.warn`` naming it).
    """
    path = find_data_root(root, data_format, year)
    listed = read_classes_txt(path)
    if listed is not None:
        return listed
    names, first_is_train = _splits_arg(path, data_format, splits)
    if str(data_format).lower() == "coco":
        from advlib.data.coco import coco_split_classes

        classes, counts = coco_split_classes(path, names)
    else:
        from advlib.data.voc import voc_split_names

        per_split = voc_split_names(path, names)
        classes = tuple(sorted({n for c in per_split.values() for n in c}))
        if not classes:
            raise ValueError(f"no objects in the splits {names} of {path} to take class names from; "
                             f"write {path / 'classes.txt'} (one name per line) or pass classes=")
        counts = per_split[names[0]]
    if first_is_train:
        warn_empty_classes(path, names[0], {c: counts.get(c, 0) for c in classes})
    return classes

