"""Building a dataset by format name."""

from __future__ import annotations

from typing import Any, Sequence

from advlib.data.base import DetectionDataset
from advlib.data.coco import COCODataset
from advlib.data.layout import PathLike, resolve_splits
from advlib.data.voc import VOCDataset


def build_dataset(data_root: PathLike, data_format: str, split: str | None,
                  classes: Sequence[str] | None = None, size: int | Sequence[int] = (300, 300),
                  year: str | int | None = None, **kw: Any) -> DetectionDataset:
    """Build a ``VOCDataset`` or ``COCODataset`` by format name.

    Args:
        data_root: data root (see ``find_data_root``).
        data_format: ``"voc"`` or ``"coco"``.
        split: split name; ``None`` -> the training split ``resolve_splits`` detects.
        classes: class names (a subset of the data's, matched case-insensitively) or ``None``.
        size: model input ``(H, W)``.
        year: VOC year when ``data_root`` is above the year folder (ignored for COCO).
        **kw: passed on (``keep_difficult``, ``cache_images`` for VOC; ``cache_images`` for COCO).

    Returns:
        The dataset.
    """
    fmt = str(data_format).lower()
    if fmt not in ("voc", "coco"):
        raise ValueError(f"data_format must be 'voc' or 'coco', got {data_format!r}")
    if split is None:
        split = resolve_splits(data_root, fmt, year=year)[0]
    if fmt == "voc":
        return VOCDataset(data_root, split=split, classes=classes, size=size, year=year, **kw)
    return COCODataset(data_root, split=split, classes=classes, size=size, **kw)
