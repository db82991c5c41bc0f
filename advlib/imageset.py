"""An evaluation set read batch by batch: what evaluation, robustness tables and attacks take when a
split should not sit in memory (VOC07 test at 300 px is about 5 GB of float32).

:class:`ImageSet` is a dataset and a list of its indices; its images are read through a
``DataLoader`` (workers, pinned memory on CUDA) one batch at a time, its targets (boxes only) are
held. Everything that takes ``images`` as a tensor also takes an ``ImageSet``
(:func:`iter_batches`), so a notebook on the default data keeps its in-memory tensor and a VOC/COCO
run streams, through the same functions. Its :meth:`ImageSet.fingerprint` equals
:func:`advlib.cache.data_fingerprint` of the same images stacked, so result and adversarial-set keys
do not depend on which of the two a run used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import cached_property

from torch import Tensor
from torch.utils.data import DataLoader, Subset


class ImageSet:
    """Images ``indices`` of ``dataset`` (items ``(float image [3, H, W], target)``), streamed.

    Args:
        dataset: a detection dataset (:class:`~advlib.data.base.DetectionDataset` or any with
            ``annotation(i)`` giving the target without reading the image, and ``size``).
        indices: which items, in order (default: all).
        num_workers: loader workers (0: read in this process).
    """

    def __init__(self, dataset, indices: Sequence[int] | None = None, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} images of {type(self.dataset).__name__}, {self.num_workers} workers)"

    @cached_property
    def targets(self) -> list[dict]:
        """Every image's target (read from the annotations, not the images)."""
        return [self.dataset.annotation(i) for i in self.indices]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        h, w = self.dataset.size
        return (len(self), 3, int(h), int(w))

    def __getitem__(self, item):
        """``set[i]``: image ``i`` as a tensor ``[3, H, W]``; ``set[a:b]``: an :class:`ImageSet` of
        those images (so that code slicing an image tensor works on a streamed set)."""
        if isinstance(item, slice):
            return ImageSet(self.dataset, self.indices[item], self.num_workers)
        return self.dataset[self.indices[item]][0]

    def head(self, n: int) -> "ImageSet":
        """The first ``n`` images."""
        return ImageSet(self.dataset, self.indices[:n], self.num_workers)

    def batches(self, batch_size: int, chunks: Sequence[int] | None = None, pin_memory: bool = False):
        """``(chunk, images [B, 3, H, W], targets)`` for the batches ``chunks`` (default: all) of
        ``batch_size`` consecutive images, read by a ``DataLoader``."""
        from advlib.data import collate

        n_chunks = math.ceil(len(self) / batch_size)
        chunks = list(range(n_chunks)) if chunks is None else list(chunks)
        sampler = [list(range(c * batch_size, min(len(self), (c + 1) * batch_size))) for c in chunks]
        loader = DataLoader(Subset(self.dataset, self.indices), batch_sampler=sampler, collate_fn=collate,
                            num_workers=self.num_workers, pin_memory=pin_memory)
        for c, (images, targets) in zip(chunks, loader):
            yield c, images, targets

    def load(self) -> tuple[Tensor, list[dict]]:
        """``(images [N, 3, H, W], targets)`` in memory (the fast path for small sets)."""
        from advlib.data import collate

        return collate([self.dataset[i] for i in self.indices])

    def fingerprint(self) -> str:
        """:func:`advlib.cache.data_fingerprint` of the stacked images and targets, hashed batch by
        batch (the same bytes in the same order)."""
        from advlib.cache import pixels_fingerprint

        return pixels_fingerprint(self.shape, (images for _, images, _ in self.batches(64)), self.targets)


def set_shape(images) -> tuple[int, ...]:
    """``(N, 3, H, W)`` of a tensor or an :class:`ImageSet`."""
    return tuple(images.shape)


def set_length(images) -> int:
    """Images in a tensor or an :class:`ImageSet`."""
    return set_shape(images)[0]


def set_targets(images, targets: list[dict] | None) -> list[dict] | None:
    """``targets``, or an :class:`ImageSet`'s own when ``None``."""
    if targets is None and isinstance(images, ImageSet):
        return images.targets
    return targets


def iter_batches(images, targets: list[dict] | None, batch_size: int, chunks: Sequence[int] | None = None,
                 pin_memory: bool = False) -> Iterator[tuple[int, Tensor, list[dict] | None]]:
    """``(chunk, images, targets)`` of the batches ``chunks`` (default: all) of a tensor (slices)
    or an :class:`ImageSet` (read from disk; its own targets when ``targets`` is ``None``)."""
    n_chunks = math.ceil(set_length(images) / batch_size)
    chunks = list(range(n_chunks)) if chunks is None else list(chunks)
    if isinstance(images, ImageSet):
        for c, x, t in images.batches(batch_size, chunks, pin_memory):
            yield c, x, (t if targets is None else targets[c * batch_size:(c + 1) * batch_size])
        return
    for c in chunks:
        sl = slice(c * batch_size, (c + 1) * batch_size)
        yield c, images[sl], None if targets is None else targets[sl]


def in_memory(images) -> Tensor:
    """A tensor's images unchanged, an :class:`ImageSet`'s read into one tensor: for the analyses
    that index images freely (gradients, t-SNE, relevance maps), which take the small subsets
    their budgets give them, never a whole real-data split."""
    return images.load()[0] if isinstance(images, ImageSet) else images


def num_batches(images, batch_size: int) -> int:
    return math.ceil(set_length(images) / batch_size)


__all__ = ["ImageSet", "in_memory", "iter_batches", "num_batches", "set_length", "set_shape", "set_targets"]

