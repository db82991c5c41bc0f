"""Checks: model input sizes, class lists (and choosing a subset), and image files before training."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from advlib.data.hashing import PathLike, cache_disabled, default_cache_dir, write_json_atomic
from advlib.data.images import check_image_file

if TYPE_CHECKING:
    from advlib.data.base import DetectionConcatDataset, DetectionDataset

log = logging.getLogger(__name__)
FULL_DECODE_MAX_IMAGES = 5000
FULL_DECODE_MAX_BYTES = 1 << 20


def check_size(size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``size`` as ``(H, W)`` positive ints (an int means a square).

    Args:
        size: an int or a pair of ints.

    Returns:
        ``(H, W)``.
    """
    try:
        pair = (size, size) if isinstance(size, int) else tuple(size)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def check_classes(classes: Sequence[str], source: str) -> tuple[str, ...]:
    """Validate a class list: non-empty strings, no duplicates.

    Args:
        classes: class names.
        source: where the list came from, for messages (e.g. a file path).

    Returns:
        The names, stripped, as a tuple.
    """
    if isinstance(classes, str) or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ValueError(f"classes from {source} must be a list of non-empty names, got {classes!r}")
    names = tuple(c.strip() for c in classes)
    if not names:
        raise ValueError(f"classes from {source} is empty")
    dupes = sorted(c for c, n in Counter(names).items() if n > 1)
    if dupes:
        raise ValueError(f"classes from {source} has duplicates: {dupes}")
    return names


def match_classes(requested: Sequence[str], available: Sequence[str], root: PathLike) -> dict[str, int]:
    """Match a user's class list to the dataset's classes, case-insensitively.

    Args:
        requested: the user's names (label ``k + 1`` is ``requested[k]``; their spelling is kept).
        available: the dataset's class names (see ``resolve_classes``).
        root: data root, for messages.

    Returns:
        ``{dataset class name: label}`` for the selected classes; other classes' objects are dropped.

    Raises:
        ValueError: a name matches no class (the message lists the available ones), matches two
            classes that differ only in case, or two names select the same class.
    """
    names = check_classes(requested, "the classes argument")
    exact = set(available)
    folded: dict[str, list[str]] = {}
    for a in available:
        folded.setdefault(a.casefold(), []).append(a)
    label_of: dict[str, int] = {}
    for k, name in enumerate(names):
        hits = [name] if name in exact else folded.get(name.casefold(), [])
        if not hits:
            raise ValueError(f"class {name!r} is not in the data at {root}; available classes: {list(available)}")
        if len(hits) > 1:
            raise ValueError(f"class {name!r} matches several classes of {root} that differ in case: {hits}")
        if hits[0] in label_of:
            raise ValueError(f"classes {names[label_of[hits[0]] - 1]!r} and {name!r} both select class {hits[0]!r}")
        label_of[hits[0]] = k + 1
    return label_of


def _parts(dataset: DetectionDataset | DetectionConcatDataset) -> list[DetectionDataset]:
    return list(getattr(dataset, "datasets", [dataset]))


def validate_images(dataset: DetectionDataset | DetectionConcatDataset, full_decode: bool | None = None,
                    cache_dir: PathLike | None = None) -> dict[str, Any]:
    """Check every image of a dataset before training, reporting all bad files at once.

    Each file is opened and its header verified (``PIL.Image.verify``), a JPEG must end with its
    end-of-image marker, and the size must match the annotation. A full decode of every image is
    added when ``full_decode`` is True, or, when it is ``None``, for splits of at most 5,000 images
    of at most 1 MB each. A passing verdict is cached by the dataset's fingerprint (its
    ``identity()``, which hashes every image file) in ``<cache_dir>/<fingerprint>.json``, so a second
    call for the same data only re-hashes changed files.

    Args:
        dataset: a ``DetectionDataset`` or ``DetectionConcatDataset``.
        full_decode: decode every pixel (True), header checks only (False), or decide by size (None).
        cache_dir: verdict folder; default ``<project>/data/cache/validated`` (not written when
            ``ADVLIB_NO_RESULT_CACHE`` is set).

    Returns:
        ``{"images": n, "full_decode": bool, "cached": bool, "seconds": float}``.

    Raises:
        ValueError: listing every bad file with its problem (unreadable, truncated, size mismatch).
    """
    start = time.perf_counter()
    parts = _parts(dataset)
    items = [(p, f, s) for d in parts for f, s, p in zip(d._files, d._orig_sizes, d._sources)]
    if full_decode is None:
        full_decode = len(items) <= FULL_DECODE_MAX_IMAGES and all(
            os.path.getsize(f) <= FULL_DECODE_MAX_BYTES for _, f, _ in items if f.is_file())
    ident = [{k: v for k, v in d.identity().items() if k != "size"} for d in parts]
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    persist = cache_dir is not None or not cache_disabled()
    verdict = Path(cache_dir if cache_dir is not None else default_cache_dir() / "validated") / f"{fingerprint}.json"
    if persist:
        try:
            old = json.loads(verdict.read_text(encoding="utf-8"))
            if old.get("ok") and (old.get("full_decode") or not full_decode):
                return {"images": len(items), "full_decode": bool(old["full_decode"]), "cached": True,
                        "seconds": time.perf_counter() - start}
        except (FileNotFoundError, ValueError, UnicodeDecodeError, AttributeError):
            pass
    bad = []
    for source, path, size in items:
        problem = check_image_file(path, size, full_decode)
        if problem is not None:
            bad.append(f"{path}: {problem} (annotation {source})")
    if bad:
        raise ValueError(f"{len(bad)} of {len(items)} image file(s) are bad:\n" + "\n".join(bad))
    seconds = time.perf_counter() - start
    if persist:
        write_json_atomic(verdict, {"ok": True, "full_decode": bool(full_decode), "images": len(items),
                                    "seconds": round(seconds, 3)})
    log.info("validated %d images (%s) in %.2f s", len(items), "full decode" if full_decode else "headers", seconds)
    return {"images": len(items), "full_decode": bool(full_decode), "cached": False, "seconds": seconds}
