"""Robustness evaluation: attack whole test sets in batches, robustness tables, sweeps.

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

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from advlib.attacks import AttackSpec, attack
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
                    progress: bool = True, device=None, snapshots: list[int] | None = None):
    """``(chunk, adversarial images [B, 3, H, W] on the CPU)`` for this rank's batches (all of them
    in a single process), one at a time: what a streamed adversarial set is written from (with
    ``snapshots``, ``{step: images}`` per batch)."""
    dev = torch.device(device) if device is not None else model_device(model)
    chunks = my_chunks(num_batches(images, batch_size))
    batches = iter_batches(images, targets, batch_size, chunks, pin_memory=dev.type == "cuda")
    for c, x, t in tqdm(batches, total=len(chunks), desc=spec.label(), disable=not (progress and is_main()),
                        leave=False):
        out = attack(model, x.to(dev, non_blocking=True), None if targets is None else targets_to(dev, t), spec,
                     snapshots=snapshots)
        yield c, ({k: v.cpu() for k, v in out.items()} if snapshots is not None else out.cpu())


def _detect_cpu(model, x: Tensor) -> list[dict]:
    """One batch's detections, moved to the CPU."""
    with torch.no_grad():
        return [{k: v.cpu() for k, v in d.items()} for d in model.detect(x.to(model_device(model), non_blocking=True))]


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
    dets = [d for batch in interleave(gather(mine)) for d in batch]
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


def _valid_sweep_rows(rows) -> bool:
    """Cached sweep rows: numeric ``eps``, ``eps_px``, ``steps``, ``map`` (``None`` for NaN), dict ``spec``."""
    return isinstance(rows, list) and all(
        isinstance(r, dict) and all(_number(r.get(k)) for k in ("eps", "eps_px", "steps"))
        and (r.get("map") is None or _number(r["map"])) and isinstance(r.get("spec"), dict) for r in rows)


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
    crafted: dict[str, tuple[Tensor, bool]] = {}

    def transfer_set(col: str, atk: Transfer) -> tuple[Tensor, bool]:
        if col not in crafted and isinstance(images, ImageSet):  # streamed: written and re-read batch by batch
            src = pool[atk.source]
            path, on_disk = cache.get_or_create_stream(
                cache.key(src, atk.spec, data_id, data_fp),
                lambda: crafted_batches(src, images, targets, atk.spec, batch_size, progress), batch_size,
                images.shape[-2:], targets, classes, atk.spec, {"source": atk.source, "data": data_id})
            crafted[col] = (ImageSet(build_dataset(path, "voc", "test", size=images.shape[-2:]),
                                     num_workers=images.num_workers), on_disk)
        if col not in crafted:  # crafted once per table, and once ever thanks to the disk cache
            src = pool[atk.source]
            crafted[col] = cache.get_or_create(
                cache.key(src, atk.spec, data_id, data_fp),
                lambda: adversarial_images(src, images, targets, atk.spec, batch_size, progress=progress),
                targets, classes, atk.spec, {"source": atk.source, "data": data_id})
        return crafted[col]

    for row, model in models.items():
        for col, atk in attacks.items():
            t0 = time.perf_counter()
            transfer = isinstance(atk, Transfer)
            spec = atk.spec if transfer else atk
            source = atk.source if transfer else row
            key = results.key(kind="robustness_cell", model=fingerprints[row],
                              source=fingerprints[source] if transfer else None,
                              spec=None if spec is None else spec.to_dict(), data=data_fp, use_07=use_07_metric,
                              **({"coco": True} if coco else {}))
            value = results.get(key, _valid_cell)
            if value is not None and coco and not _number(value.get("coco_ap")):
                value = None
            hit_result, set_cached = value is not None, False
            if value is None:
                if atk is None:
                    dets = detect_all(model, images)
                elif transfer:
                    adv, set_cached = transfer_set(col, atk)
                    dets = detect_all(model, adv)
                else:  # attack, round and detect batch by batch: no adversarial set is held
                    dets = attacked_detections(model, images, targets, atk, batch_size, progress)
                r = evaluate_voc(dets, targets, len(classes), use_07_metric=use_07_metric, class_names=classes)
                r_all = evaluate_voc(dets, targets, len(classes), use_07_metric=False, class_names=classes)
                value = {"map": float(r.map), "map_allpoint": float(r_all.map), "ap": [float(a) for a in r.ap]}
                if coco:
                    value["coco_ap"] = float(evaluate_coco(dets, targets, len(classes))["AP"])
                results.put(key, value, {"model": row, "attack": col})
            table.cells.append(Cell(row, col, source, value["map"], value["map_allpoint"],
                                    None if spec is None else spec.to_dict(), time.perf_counter() - t0,
                                    set_cached, hit_result, value["ap"], value.get("coco_ap")))
    return table


def sweep(model, spec: AttackSpec, images: Tensor, targets: list[dict], num_classes: int,
          eps: list[float] | None = None, steps: list[int] | None = None, batch_size: int = 32,
          progress: bool = True, result_cache: ResultCache | bool | None = None) -> pd.DataFrame:
    """mAP as the budget or the number of steps varies (MTD Fig. 5/6, CWAT Fig. 3/6).

    A steps sweep runs one attack with ``max(steps)`` steps and keeps snapshots (a k-step PGD is
    the prefix of a longer one); an ε sweep runs one attack per value (step size unchanged).

    The rows are kept in the result cache (``result_cache``, as in :func:`robustness_table`).

    Returns:
        DataFrame with columns ``eps`` (0-1 units), ``eps_px``, ``steps``, ``map``, ``spec``.
    """
    if (eps is None) == (steps is None):
        raise ValueError("give exactly one of eps=[...] or steps=[...]")
    if steps is not None and any(s < 0 for s in steps):
        raise ValueError(f"steps must be >= 0, got {steps}")
    rows = ResultCache.resolve(result_cache).cached(
        lambda: _sweep_rows(model, spec, images, targets, num_classes, eps, steps, batch_size, progress),
        validate=_valid_sweep_rows, kind="sweep", model=model_fingerprint(model), spec=spec.to_dict(),
        data=data_fingerprint(images, targets), eps=eps, steps=steps)
    return pd.DataFrame(rows)


def _sweep_rows(model, spec, images, targets, num_classes, eps, steps, batch_size, progress) -> list[dict]:
    rows = []
    if steps is not None:
        positive = sorted({s for s in steps if s > 0})
        long = spec.replace(steps=max(positive)) if positive else spec
        dets = {0: detect_all(model, images)} if 0 in steps else {}
        if positive:  # one attack run, its snapshots detected batch by batch (nothing of the set's size held)
            mine: dict[int, list] = {s: [] for s in positive}
            for _, snaps in crafted_batches(model, images, targets, long, batch_size, progress, snapshots=positive):
                for s in positive:
                    mine[s].append(_detect_cpu(model, round_8bit(snaps[s])))
            for s in positive:
                dets[s] = [d for batch in interleave(gather(mine[s])) for d in batch]
        for s in steps:
            m = evaluate_voc(dets[s], targets, num_classes).map
            rows.append({"eps": spec.eps, "eps_px": spec.eps * 255, "steps": s, "map": m,
                         "spec": spec.replace(steps=max(s, 1)).to_dict()})
    else:
        for e in eps:
            sp = spec.replace(eps=float(e))
            dets = attacked_detections(model, images, targets, None if e == 0 else sp, batch_size, progress)
            rows.append({"eps": e, "eps_px": e * 255, "steps": spec.steps,
                         "map": evaluate_voc(dets, targets, num_classes).map, "spec": sp.to_dict()})
    return rows


def sweep_curves(models: Mapping[str, torch.nn.Module], specs: Mapping[str, AttackSpec], images: Tensor,
                 targets: list[dict], num_classes: int, steps: list[int], eps: list[float], batch_size: int = 32,
                 progress: bool = True, result_cache: ResultCache | bool | None = None) -> pd.DataFrame:
    """Steps and ε curves for every model × attack (MTD Figs. 5-6, CWAT Figs. 3/6).

    Each ``specs`` entry is the full-length attack (``spec.steps`` = the steps curve's end and the
    ε curve's number of steps). The ε curve's point at ``spec.eps`` is the steps curve's last
    point (the same attack), so it is not run twice.

    Returns:
        Rows with ``model``, ``attack``, ``kind`` (``steps`` | ``eps``), ``eps``, ``eps_px``,
        ``steps``, ``map``, ``spec``.
    """
    if max(steps) != max(s.steps for s in specs.values()) or len({s.steps for s in specs.values()}) != 1:
        raise ValueError(f"every spec must have steps = max(steps) = {max(steps)}")
    rows = []
    bar = tqdm(total=len(models) * len(specs), desc="sweeps", disable=not progress, leave=False)
    for mname, model in models.items():
        for aname, spec in specs.items():
            kw = dict(batch_size=batch_size, progress=False, result_cache=result_cache)
            s = sweep(model, spec, images, targets, num_classes, steps=steps, **kw)
            others = [e for e in eps if not math.isclose(e, spec.eps)]
            e = sweep(model, spec, images, targets, num_classes, eps=others, **kw) if others else pd.DataFrame()
            if len(others) < len(eps):
                e = pd.concat([e, s[s["steps"] == spec.steps]]).sort_values("eps")
            rows += [dict(r, model=mname, attack=aname, kind="steps") for r in s.to_dict("records")]
            rows += [dict(r, model=mname, attack=aname, kind="eps") for r in e.to_dict("records")]
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


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
