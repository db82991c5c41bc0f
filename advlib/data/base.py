"""The detection dataset base class, concatenation and collation shared by VOC and COCO.

Every dataset yields ``(image, target)``: ``image`` float ``[3, H, W]`` in ``[0, 1]`` (resized, not
letterboxed, to ``size``), ``target`` a dict with ``boxes`` float32 ``[N, 4]`` xyxy in pixels of the
resized image, ``labels`` int64 ``[N]`` in ``1..C``, ``difficult`` bool ``[N]``, ``image_id`` (str)
and ``orig_size`` ``(h, w)``. Images without objects are kept (``N = 0``).
"""

from __future__ import annotations

import bisect
import hashlib
import operator
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from advlib.data.hashing import PathLike, hash_files
from advlib.data.images import load_rgb
from advlib.data.validate import check_size
from advlib.paths import display_path


def sha256_hex(parts: Sequence[bytes]) -> str:
    """Hex sha256 of the concatenated byte strings."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


class DetectionDataset(Dataset):
    """Common base: stored per-image annotations, image loading, resizing and the target dict.

    Subclasses fill ``classes``, ``ids`` and the per-image lists in ``__init__``; boxes are kept in
    original-image pixels (0-based xyxy, clipped) and scaled to ``size`` on access.
    """

    data_format = "base"

    def __init__(self, size: int | Sequence[int], cache_images: bool) -> None:
        self.size: tuple[int, int] = check_size(size)
        self.cache_images = bool(cache_images)
        self.classes: tuple[str, ...] = ()
        self.ids: list[str] = []
        self.root = Path()
        self.split = ""
        self.hash_cache: PathLike | None = None  # file-hash cache of identity(); None: the default
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
        rgb = load_rgb(path)  # L, I;16, CMYK, P, RGBA, ... -> RGB
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

    @property
    def files(self) -> list[Path]:
        """The image file of each item, in item order."""
        return list(self._files)

    def objects_per_class(self) -> dict[str, int]:
        """Number of objects of each class in this split (difficult ones included when kept).

        Returns:
            ``{class name: count}`` in label order; a count of 0 marks a class without objects here.
        """
        labels = np.concatenate([np.zeros(0, np.int64), *self._labels])
        counts = np.bincount(labels, minlength=len(self.classes) + 1)
        return {c: int(counts[k + 1]) for k, c in enumerate(self.classes)}

    def median_original_size(self) -> tuple[int, int]:
        """Median ``(h, w)`` of the original images (from the annotations), each the lower median.

        Returns:
            ``(h, w)`` in pixels; compare with ``size`` to tell how much images are shrunk.
        """
        if not self._orig_sizes:
            raise ValueError(f"dataset {self.root} split {self.split!r} has no images")
        return (int(statistics.median_low(h for h, _ in self._orig_sizes)),
                int(statistics.median_low(w for _, w in self._orig_sizes)))

    def resize_note(self, factor: float = 2.0) -> str | None:
        """One line saying images are resized a lot, or ``None`` when the median image is within
        ``factor`` of ``size`` on both sides."""
        (h, w), (H, W) = self.median_original_size(), self.size
        if max(h / H, w / W) <= factor:
            return None
        return (f"{self.split}: median image {w}x{h} (WxH) is resized to the model input {W}x{H} "
                f"({max(h / H, w / W):.1f}x smaller); small objects may vanish")

    def images_sha256(self) -> str:
        """sha256 over the item order, file names and bytes of every image (cached per file)."""
        digests = hash_files(self._files, self.hash_cache)
        return sha256_hex([f"{p.name}\0{d}\n".encode() for p, d in zip(self._files, digests)])

    def identity(self) -> dict[str, Any]:
        """JSON-able description of exactly this data, for model-cache keys (hashes, not timestamps).

        Returns:
            dict with ``format``, ``root`` (relative to the project when inside it), ``split``, ``ids_sha256`` (of the split's id
            list), ``annotations_sha256`` (sizes, boxes, labels, difficult flags), ``images_sha256``
            (every image file's bytes, see ``images_sha256``), ``classes``, ``size`` and ``num_images``.
        """
        if getattr(self, "_annotations_digests", None) is None:  # held in memory, so hashed once
            ann = [np.asarray(self._orig_sizes, dtype=np.int64).tobytes()]
            for b, l, d in zip(self._boxes, self._labels, self._difficult):
                ann += [np.int64(len(l)).tobytes(), b.tobytes(), l.tobytes(), d.tobytes()]
            self._annotations_digests = (sha256_hex(["\n".join(self.ids).encode()]), sha256_hex(ann))
        ids_sha, ann_sha = self._annotations_digests
        return {
            "format": self.data_format,
            "root": display_path(self.root),
            "split": self.split,
            "ids_sha256": ids_sha,
            "annotations_sha256": ann_sha,
            "images_sha256": self.images_sha256(),
            "classes": list(self.classes),
            "size": list(self.size),
            "num_images": len(self.ids),
        }


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

    def objects_per_class(self) -> dict[str, int]:
        """Objects per class summed over the parts (see ``DetectionDataset.objects_per_class``)."""
        counts = dict.fromkeys(self.classes, 0)
        for d in self.datasets:
            for c, n in d.objects_per_class().items():
                counts[c] += n
        return counts

    def identity(self) -> dict[str, Any]:
        """JSON-able identity: the parts' identities in order."""
        return {"format": "concat", "parts": [d.identity() for d in self.datasets]}


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
