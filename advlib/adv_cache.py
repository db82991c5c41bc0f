"""The adversarial-test-set cache (:class:`AdversarialCache`, ``data/cache/adv/<key>/``): a set
crafted once is saved as a VOC-layout dataset of PNGs and read back 8-bit; the rules of
:mod:`advlib.cache` (keys, atomic writes, key locks, warnings) apply."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from advlib.cache import _key_lock, _not_writable, hash_json, model_fingerprint, round_8bit, to_uint8
from advlib.paths import cache_root

def _xml(image_id: str, size: tuple[int, int], target: dict, classes) -> str:
    """The VOC annotation of one adversarial image (the one VOC writer, names escaped)."""
    from advlib.data.voc import voc_annotation_xml

    labels = target["labels"].tolist()
    diff = target.get("difficult", torch.zeros(len(labels), dtype=torch.bool)).tolist()
    objects = [(classes[lab - 1], tuple(b), bool(d)) for lab, b, d in zip(labels, target["boxes"].tolist(), diff)]
    return voc_annotation_xml(f"{image_id}.png", size[1], size[0], objects)


class AdversarialCache:
    """Adversarial test sets on disk (``data/cache/adv/<key>/``, VOC layout, PNG images).

    The key hashes the source model's fingerprint, the attack spec, the caller's name for the
    clean set and the clean set's pixel + ground-truth fingerprint (so a subset never reuses
    another subset's images).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "adv"

    def key(self, source_model: nn.Module, spec, data_id: str, data_fp: str) -> str:
        """The key of ``spec`` crafted on ``source_model`` from the clean set ``data_id`` whose
        :func:`data_fingerprint` is ``data_fp``."""
        return hash_json({"model": model_fingerprint(source_model), "spec": spec.to_dict(), "data": data_id,
                          "pixels": data_fp}, 20)

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Tensor | None:
        d = self.path(key)
        ids_file = d / "ImageSets" / "Main" / "test.txt"
        if not (d / "spec.json").exists() or not ids_file.exists():
            return None
        ids = ids_file.read_text().split()
        arrays = [np.asarray(Image.open(d / "JPEGImages" / f"{i}.png").convert("RGB")) for i in ids]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)  # [N,H,W,3] -> [N,3,H,W]

    def _write(self, key: str, batches, batch_size: int, size: tuple[int, int], targets: list[dict], classes, spec,
               meta: dict, collective: bool) -> None:
        """Write a set from ``(chunk, images)`` batches (chunk ``c`` holds images ``c·batch_size …``)
        into a temporary folder renamed into place at the end (a warning if the cache is not
        writable). ``collective``: every torchrun rank calls this with its own chunks and writes
        their PNGs into one shared temporary folder; rank 0 prepares it, writes the annotations
        and renames it."""
        from advlib.distributed import barrier, rank_world

        rank, world = rank_world() if collective else (0, 1)
        d = self.path(key)
        tmp = d.with_name(f"{d.name}.tmp-dist" if world > 1 else f"{d.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        ids = [f"{i:06d}" for i in range(len(targets))]
        ok = True
        try:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # a torchrun run killed midway
                for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
                    (tmp / sub).mkdir(parents=True)
        except OSError as exc:
            ok = False
            _not_writable(self.root, exc, "adversarial sets")
        if world > 1:
            barrier()
        for chunk, images in batches:
            u8 = to_uint8(images).permute(0, 2, 3, 1).numpy()  # [B,3,H,W] -> [B,H,W,3]
            try:
                for j, arr in enumerate(u8):
                    if ok:
                        Image.fromarray(arr).save(tmp / "JPEGImages" / f"{ids[chunk * batch_size + j]}.png")
            except OSError as exc:
                ok = False
                _not_writable(self.root, exc, "adversarial sets")
        if world > 1:
            barrier()
        if rank == 0 and ok:
            try:
                for i, t in zip(ids, targets):
                    (tmp / "Annotations" / f"{i}.xml").write_text(_xml(i, size, t, classes))
                (tmp / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
                (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
                (tmp / "spec.json").write_text(json.dumps({"spec": spec.to_dict(), **meta}, indent=1, default=str))
                if d.exists():
                    shutil.rmtree(d)
                os.replace(tmp, d)
            except OSError as exc:
                ok = False
                _not_writable(self.root, exc, "adversarial sets")
        if not ok and rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if world > 1:
            barrier()

    def save(self, key: str, images: Tensor, targets: list[dict], classes, spec, meta: dict) -> Tensor:
        """Write atomically (a warning if the cache is not writable); returns the 8-bit-rounded
        images (:func:`round_8bit`), written or not."""
        self._write(key, [(0, images)], max(1, len(images)), tuple(images.shape[-2:]), targets, classes, spec, meta,
                    collective=False)
        return round_8bit(images)

    def complete(self, key: str) -> bool:
        """Whether the set of ``key`` is on disk (written sets are renamed into place whole)."""
        d = self.path(key)
        return (d / "spec.json").exists() and (d / "ImageSets" / "Main" / "test.txt").exists()

    def get_or_create_stream(self, key: str, craft_batches: Callable, batch_size: int, size: tuple[int, int],
                             targets: list[dict], classes, spec, meta: dict) -> tuple[Path, bool]:
        """``(folder, came from disk)`` of ``key``: the set crafted batch by batch and written as it
        comes (``craft_batches()`` yields ``(chunk, images)``; under torchrun, this rank's chunks),
        so that no more than a batch is in memory; read it back with
        ``build_dataset(folder, "voc", "test")``. Rank 0 holds the key's lock."""
        from advlib.distributed import gather, rank_world

        lock = _key_lock(self.root, key) if rank_world()[0] == 0 else contextlib.nullcontext()
        with lock:
            done = gather(self.complete(key))[0]  # rank 0's view decides for every rank
            if not done:
                self._write(key, craft_batches(), batch_size, size, targets, classes, spec, meta, collective=True)
        return self.path(key), done

    def get_or_create(self, key: str, craft: Callable[[], Tensor], targets: list[dict], classes, spec,
                      meta: dict) -> tuple[Tensor, bool]:
        """``(images [N, 3, H, W], came from disk)`` of ``key``: loaded, or crafted and saved, under the
        key's file lock (another process crafting it is waited for). Under torchrun every rank
        crafts its share (``craft`` gathers the set on every rank) and rank 0 alone locks and
        saves; the other ranks return the set rank 0 saved (8-bit, as it is read back)."""
        from advlib.distributed import barrier, rank_world

        rank, world = rank_world()
        if rank != 0:
            adv = self.load(key)
            if adv is not None:
                return adv, True
            crafted = craft()
            barrier()  # rank 0 has saved
            adv = self.load(key)
            return (round_8bit(crafted) if adv is None else adv), False  # not writable: the same rounding
        with _key_lock(self.root, key):
            adv = self.load(key)
            if adv is None:
                adv = self.save(key, craft(), targets, classes, spec, meta)
                if world > 1:
                    barrier()
                return adv, False
            return adv, True
