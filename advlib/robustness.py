"""Robustness evaluation: attack whole test sets in batches, robustness tables (steps and ε sweeps:
:mod:`advlib.sweeps`).

Every number comes with the attack spec that produced it. White-box cells attack the evaluated
model; transfer cells evaluate model B on images crafted on model A, which are crafted once and
cached on disk as a VOC-layout dataset of PNGs (:class:`~advlib.cache.AdversarialCache`), so a
second table with the same cell is evaluation only, and the set can be reused as an adversarial
test set.

One rule for every adversarial image a number is measured on (white-box cells, transfer sets,
sweeps, :func:`evaluate_attack`): it is rounded to 8 bits (:func:`~advlib.cache.round_8bit`)
before detection, as a PNG stores it. The clean images are 8-bit, so with an ε of whole levels
(2, 4, 8, 16 / 255) the rounded image stays inside the ε-ball.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from advlib.attacks import AttackSpec, attack
from advlib.attacks.mda import components, craft_with_parts
from advlib.data import build_dataset
from advlib.distributed import gather, interleave, is_main, my_chunks
from advlib.imageset import ImageSet, iter_batches, num_batches, set_length, set_shape, set_targets
from advlib.evaluate import evaluate_coco, evaluate_voc
from advlib.utils import model_device, targets_to
from advlib.cache import AdversarialCache, ResultCache, data_fingerprint, model_fingerprint, round_8bit


def adversarial_images(model, images, targets: list[dict] | None, spec: AttackSpec, batch_size: int = 32,
                       device: torch.device | str | None = None, progress: bool = True,
                       snapshots: list[int] | None = None):
    """Craft adversarial examples for a whole set, batch by batch.

    Args:
        model: attacked detector.
        images: ``[N, 3, H, W]`` in ``[0, 1]`` (any device; results come back on the CPU), or an
            :class:`~advlib.imageset.ImageSet` read batch by batch (the result is in memory:
            :func:`attacked_detections` streams end to end).
        targets: ground truth per image (``None`` for objectives that do not use it).
        spec: the attack.
        batch_size: images per attack batch.
        device: where to attack (default: the model's device).
        progress: tqdm bar.
        snapshots: also return intermediate step counts (``{k: [N, 3, H, W]}``).

    Returns:
        ``[N, 3, H, W]`` adversarial images on the CPU (or a dict by step count).
    """
    n = set_length(images)
    if targets is not None and len(targets) != n:
        raise ValueError(f"{n} images but {len(targets)} targets")
    parts = [out for _, out in crafted_batches(model, images, targets, spec, batch_size, progress, device, snapshots)]
    parts = interleave(gather(parts))  # torchrun: every rank attacked every W-th batch
    if snapshots is not None:
        return {k: torch.cat([p[k] for p in parts]) for k in snapshots}
    return torch.cat(parts) if parts else torch.zeros((0, *set_shape(images)[1:]))


def crafted_batches(model, images, targets: list[dict] | None, spec: AttackSpec, batch_size: int = 32,
                    progress: bool = True, device=None, snapshots: list[int] | None = None, craft=None):
    """``(chunk, adversarial images [B, 3, H, W] on the CPU)`` for this rank's batches (all of them
    in a single process), one at a time: what a streamed adversarial set is written from (with
    ``snapshots``, ``{step: images}`` per batch). ``craft(model, x, targets, spec)`` replaces
    :func:`~advlib.attacks.attack` for a batch (e.g. one returning several named sets; a dict
    comes back with every value on the CPU)."""
    dev = torch.device(device) if device is not None else model_device(model)
    chunks = my_chunks(num_batches(images, batch_size))
    batches = iter_batches(images, targets, batch_size, chunks, pin_memory=dev.type == "cuda")
    for c, x, t in tqdm(batches, total=len(chunks), desc=spec.label(), disable=not (progress and is_main()),
                        leave=False):
        x, t = x.to(dev, non_blocking=True), None if targets is None else targets_to(dev, t)
        out = attack(model, x, t, spec, snapshots=snapshots) if craft is None else craft(model, x, t, spec)
        yield c, ({k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu())


def _detect_cpu(model, x: Tensor) -> list[dict]:
    """One batch's detections, moved to the CPU."""
    with torch.no_grad():
        return [{k: v.cpu() for k, v in d.items()} for d in model.detect(x.to(model_device(model), non_blocking=True))]


def all_ranks(mine: list[list[dict]]) -> list[dict]:
    """Every image's detections in order from this rank's per-batch lists (torchrun: each rank
    detected every W-th batch; a single process: its own batches)."""
    return [d for batch in interleave(gather(mine)) for d in batch]


def attacked_detections(model, images, targets: list[dict] | None, spec: AttackSpec | None, batch_size: int = 32,
                        progress: bool = True, keep: int | None = None):
    """Detections of ``model`` on every image after ``spec`` (``None``: clean), batch by batch:
    attack (:func:`crafted_batches`), round to 8 bits, detect, keep only the detections, so that
    nothing of the size of the set is held (``images`` a tensor or an
    :class:`~advlib.imageset.ImageSet`; under torchrun each rank takes every W-th batch and all
    ranks get all detections). With ``keep``, returns ``(detections, the first keep (adversarial)
    images [keep, 3, H, W])``."""
    if spec is None:
        chunks = my_chunks(num_batches(images, batch_size))
        batches = iter_batches(images, None, batch_size, chunks, pin_memory=model_device(model).type == "cuda")
        source = ((c, x) for c, x, _ in tqdm(batches, total=len(chunks), desc="clean", leave=False,
                                             disable=not (progress and is_main())))
    else:
        source = ((c, round_8bit(x)) for c, x in crafted_batches(model, images, targets, spec, batch_size, progress))
    mine, kept = [], []
    for _, x in source:
        mine.append(_detect_cpu(model, x))
        if keep and sum(len(k) for k in kept) < keep:
            kept.append(x.cpu())
    dets = all_ranks(mine)
    if keep is None:
        return dets
    kept = interleave(gather(kept))  # each rank kept its first chunks: r, r + W, ...
    return dets, torch.cat(kept)[:keep] if kept else torch.zeros((0, *set_shape(images)[1:]))


def detect_all(model, images, batch_size: int = 64) -> list[dict]:
    """Detections for a set of images (a tensor or an :class:`~advlib.imageset.ImageSet`), on the
    CPU (under torchrun each rank detects every W-th batch and all ranks get all detections)."""
    return attacked_detections(model, images, None, None, batch_size, progress=False)


def mean_ap(model, images, targets: list[dict] | None, num_classes: int, use_07_metric: bool = True,
            class_names=None):
    """VOC mAP@0.5 of ``model`` on ``images`` (a tensor, or an :class:`~advlib.imageset.ImageSet`
    whose own targets are used when ``targets`` is ``None``; a :class:`~advlib.evaluate.VOCResult`)."""
    return evaluate_voc(detect_all(model, images), set_targets(images, targets), num_classes,
                        use_07_metric=use_07_metric, class_names=class_names)


# ------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class Transfer:
    """A transfer attack: craft on ``source`` (a model name), evaluate on every row."""

    source: str
    spec: AttackSpec


@dataclass
class Cell:
    model: str
    attack: str
    source: str
    map: float
    map_allpoint: float
    spec: dict | None
    seconds: float
    cached: bool = False  # transfer cell: the adversarial set came from the on-disk cache
    result_cached: bool = False  # the number itself came from the result cache (no attack run)
    ap: list | None = None  # per-class AP (VOC07 rule unless the table says otherwise)
    coco_ap: float | None = None  # COCO box AP@[.5:.95] (tables built with coco=True)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RobustnessTable:
    """Models × attacks → mAP; ``cells`` keep the spec, source model and time of every number."""

    cells: list[Cell] = field(default_factory=list)
    classes: tuple = ()

    @property
    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame([c.to_dict() for c in self.cells])
        if df.empty:
            return df
        order_m = list(dict.fromkeys(df["model"]))
        order_a = list(dict.fromkeys(df["attack"]))
        return df.pivot(index="model", columns="attack", values="map").loc[order_m, order_a]

    @property
    def coco_frame(self) -> pd.DataFrame:
        """Models × attacks → COCO box AP@[.5:.95] (tables built with ``coco=True``; else NaN)."""
        df = pd.DataFrame([c.to_dict() for c in self.cells])
        if df.empty:
            return df
        df["coco_ap"] = df["coco_ap"].astype(float)
        order_m = list(dict.fromkeys(df["model"]))
        order_a = list(dict.fromkeys(df["attack"]))
        return df.pivot(index="model", columns="attack", values="coco_ap").loc[order_m, order_a]

    def per_class(self, attack_name: str) -> pd.DataFrame:
        """Per-class AP of every model under one column (classes × models)."""
        cols = {c.model: c.ap for c in self.cells if c.attack == attack_name}
        if not cols:
            raise KeyError(f"no column {attack_name!r}; have {sorted({c.attack for c in self.cells})}")
        return pd.DataFrame(cols, index=list(self.classes) or None)

    def get(self, model: str, attack_name: str) -> float:
        for c in self.cells:
            if c.model == model and c.attack == attack_name:
                return c.map
        raise KeyError(f"no cell ({model!r}, {attack_name!r})")

    def to_dict(self) -> dict:
        return {"map": self.frame.to_dict(), "cells": [c.to_dict() for c in self.cells]}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _valid_cell(v) -> bool:
    """A cached robustness cell: float ``map`` and ``map_allpoint``, a list of numbers ``ap``."""
    return (isinstance(v, dict) and _number(v.get("map")) and _number(v.get("map_allpoint"))
            and isinstance(v.get("ap"), list) and all(_number(a) for a in v["ap"]))


def _mda_groups(attacks: Mapping) -> dict[str, dict[str, str | None]]:
    """White-box MDA columns that craft A_cls and A_loc apart, each with the table's columns that
    are exactly those two attacks: ``{column: {"mda": MDA column, "cls": column | None, "loc":
    column | None}}`` for every member of a group."""
    members = {}
    for col, atk in attacks.items():
        if not (isinstance(atk, AttackSpec) and atk.objective == "mda" and not atk.params):
            continue
        parts = components(atk)
        if parts is None:
            continue
        g = {"mda": col, **{p.objective: next((c for c, a in attacks.items() if isinstance(a, AttackSpec) and a == p), None)
                            for p in parts}}
        members.update({c: g for c in g.values() if c is not None})
    return members


def mda_detections(model, images, targets: list[dict], spec: AttackSpec, want: set[str], batch_size: int = 32,
                   progress: bool = True) -> dict[str, list[dict]]:
    """Detections of ``model`` after the MDA ``spec`` and, from the same two crafts, after the
    A_cls and A_loc attacks it picks between (``want`` ⊆ ``{"mda", "cls", "loc"}``), batch by batch
    like :func:`attacked_detections` (rounded to 8 bits; torchrun: every W-th batch per rank)."""
    mine: dict[str, list] = {w: [] for w in want}
    for _, out in crafted_batches(model, images, targets, spec, batch_size, progress, craft=craft_with_parts):
        for w in want:
            mine[w].append(_detect_cpu(model, round_8bit(out[w])))
    return {w: all_ranks(m) for w, m in mine.items()}


def transfer_set(source, spec: AttackSpec, images, targets: list[dict], classes, cache: AdversarialCache | None = None,
                 data_id: str = "", source_name: str = "", batch_size: int = 32, progress: bool = True,
                 data_fp: str | None = None) -> tuple:
    """``(adversarial set, came from disk)``: ``spec`` crafted on the model ``source`` from the clean
    set ``images``/``targets`` (keyed by the source, the spec, ``data_id`` and the clean set's
    fingerprint), cached on disk as a VOC-layout set of PNGs. A tensor set comes back as a tensor
    (8-bit values); an :class:`~advlib.imageset.ImageSet` is crafted and written batch by batch and
    comes back as an ImageSet reading the cached folder."""
    cache = cache or AdversarialCache()
    targets = set_targets(images, targets)
    key = cache.key(source, spec, data_id, data_fp or data_fingerprint(images, targets))
    meta = {"source": source_name, "data": data_id}
    if isinstance(images, ImageSet):  # streamed: written and re-read batch by batch
        path, on_disk = cache.get_or_create_stream(
            key, lambda: crafted_batches(source, images, targets, spec, batch_size, progress), batch_size,
            images.shape[-2:], targets, classes, spec, meta)
        return ImageSet(build_dataset(path, "voc", "test", size=images.shape[-2:]), num_workers=images.num_workers), on_disk
    return cache.get_or_create(key, lambda: adversarial_images(source, images, targets, spec, batch_size, progress=progress),
                               targets, classes, spec, meta)


def robustness_table(models: Mapping[str, torch.nn.Module], attacks: Mapping[str, AttackSpec | Transfer | None],
                     images: Tensor, targets: list[dict], classes, sources: Mapping[str, torch.nn.Module] | None = None,
                     cache: AdversarialCache | None = None, data_id: str = "", batch_size: int = 32,
                     progress: bool = True, use_07_metric: bool = True,
                     result_cache: ResultCache | bool | None = None, coco: bool = False) -> RobustnessTable:
    """Evaluate every model under every attack.

    Args:
        models: row name -> detector.
        attacks: column name -> ``None`` (clean), an :class:`AttackSpec` (white-box: attacks the
            row's model), or a :class:`Transfer` (crafted once on ``sources[source]`` or
            ``models[source]``, cached on disk, evaluated on every row).
        images, targets: the clean evaluation set: a tensor, or an
            :class:`~advlib.imageset.ImageSet` read batch by batch (``targets`` ``None``: its own).
        classes: class names (for mAP and the cached sets' annotations).
        sources: extra source models for transfer columns (not evaluated as rows).
        cache: where transfer sets are cached (default ``data/cache/adv``).
        data_id: name of the clean set (part of the transfer cache key, with its pixels' and
            targets' fingerprint).
        batch_size, progress, use_07_metric: evaluation settings.
        result_cache: cache of the cells' numbers (default ``data/cache/results``; ``False``
            recomputes everything). A cell found there runs no attack.
        coco: also COCO box AP@[.5:.95] of every cell (:func:`~advlib.evaluate.evaluate_coco`,
            pycocotools), in ``Cell.coco_ap`` and :attr:`RobustnessTable.coco_frame`.

    A white-box MDA column is computed together with the table's A_cls and A_loc columns that are
    exactly the two attacks it picks between (:func:`~advlib.attacks.mda.components`): one craft of
    each gives the three cells, the numbers of three separate runs (:func:`mda_detections`); each
    cell's ``seconds`` is its share of the crafts plus its own evaluation.

    Returns:
        A :class:`RobustnessTable`.
    """
    cache = cache or AdversarialCache()
    results = ResultCache.resolve(result_cache)
    pool = {**(sources or {}), **models}
    for col, atk in attacks.items():
        if isinstance(atk, Transfer) and atk.source not in pool:
            raise ValueError(f"transfer column {col!r}: unknown source model {atk.source!r}; have {sorted(pool)}")
    targets = set_targets(images, targets)
    table = RobustnessTable(classes=tuple(classes))
    data_fp = data_fingerprint(images, targets)
    fingerprints = {name: model_fingerprint(m) for name, m in pool.items()}
    crafted: dict[str, tuple] = {}  # crafted once per table, and once ever thanks to the disk cache

    def set_of(col: str, atk: Transfer) -> tuple:
        if col not in crafted:
            crafted[col] = transfer_set(pool[atk.source], atk.spec, images, targets, classes, cache, data_id,
                                        atk.source, batch_size, progress, data_fp)
        return crafted[col]

    def cell_key(row: str, col: str) -> str:
        atk = attacks[col]
        transfer = isinstance(atk, Transfer)
        spec = atk.spec if transfer else atk
        return results.key(kind="robustness_cell", model=fingerprints[row],
                           source=fingerprints[atk.source] if transfer else None,
                           spec=None if spec is None else spec.to_dict(), data=data_fp, use_07=use_07_metric,
                           **({"coco": True} if coco else {}))

    def cached_value(row: str, col: str) -> dict | None:
        value = results.get(cell_key(row, col), _valid_cell)
        return None if value is not None and coco and not _number(value.get("coco_ap")) else value

    groups = _mda_groups(attacks)
    for row, model in models.items():
        fused: dict[str, tuple[list[dict], float]] = {}  # column -> (detections, seconds) from its MDA group
        for col, atk in attacks.items():
            t0 = time.perf_counter()
            transfer = isinstance(atk, Transfer)
            spec = atk.spec if transfer else atk
            source = atk.source if transfer else row
            value = cached_value(row, col)
            hit_result, set_cached, seconds = value is not None, False, None
            if value is None:
                g = groups.get(col)
                if col not in fused and g is not None and (col == g["mda"] or cached_value(row, g["mda"]) is None):
                    # MDA and its A_cls / A_loc columns from one craft of each (the MDA cell is uncached)
                    want = {p: c for p, c in g.items() if c is not None and (c == col or cached_value(row, c) is None)}
                    found = mda_detections(model, images, targets, attacks[g["mda"]], set(want), batch_size, progress)
                    share = (time.perf_counter() - t0) / len(want)
                    fused.update({c: (found[p], share) for p, c in want.items()})
                if col in fused:
                    dets, seconds = fused.pop(col)
                elif atk is None:
                    dets = detect_all(model, images)
                elif transfer:
                    adv, set_cached = set_of(col, atk)
                    dets = detect_all(model, adv)
                else:  # attack, round and detect batch by batch: no adversarial set is held
                    dets = attacked_detections(model, images, targets, atk, batch_size, progress)
                t_eval = time.perf_counter()
                r = evaluate_voc(dets, targets, len(classes), use_07_metric=use_07_metric, class_names=classes)
                r_all = evaluate_voc(dets, targets, len(classes), use_07_metric=False, class_names=classes)
                value = {"map": float(r.map), "map_allpoint": float(r_all.map), "ap": [float(a) for a in r.ap]}
                if coco:
                    value["coco_ap"] = float(evaluate_coco(dets, targets, len(classes))["AP"])
                results.put(cell_key(row, col), value, {"model": row, "attack": col})
                if seconds is not None:  # its share of the group's attacks, and its own evaluation
                    seconds += time.perf_counter() - t_eval
            table.cells.append(Cell(row, col, source, value["map"], value["map_allpoint"],
                                    None if spec is None else spec.to_dict(),
                                    time.perf_counter() - t0 if seconds is None else seconds,
                                    set_cached, hit_result, value["ap"], value.get("coco_ap")))
    return table


def evaluate_attack(exp, model, spec: AttackSpec | None, batch_size: int = 32, progress: bool = True,
                    keep_images: int = 16) -> dict:
    """mAP (VOC07 11-point and all-point) of ``model`` on the experiment's evaluation subset under
    ``spec`` (``None`` = clean), with the spec attached and the first ``keep_images`` adversarial
    images returned; the subset is streamed (:attr:`Experiment.eval_set`), attacked, rounded and
    detected batch by batch, so that memory does not grow with its size."""
    data = exp.eval_set
    dets, kept = attacked_detections(model, data, data.targets, spec, batch_size, progress, keep=keep_images)
    res07 = evaluate_voc(dets, data.targets, exp.num_classes, use_07_metric=True, class_names=exp.classes)
    res_all = evaluate_voc(dets, data.targets, exp.num_classes, use_07_metric=False, class_names=exp.classes)
    return {"map": res07.map, "map_allpoint": res_all.map, "ap": res07.ap,
            "spec": None if spec is None else spec.to_dict(), "images": kept, "num_images": len(data)}
