"""Steps and ε sweeps (MTD Figs. 5-6, CWAT Figs. 3/6): mAP as an attack's number of steps or its
budget varies, one attack run per ε and one per steps curve (a k-step PGD is the prefix of a longer
one, kept as snapshots), every row in the result cache."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from advlib.attacks import AttackSpec
from advlib.cache import ResultCache, data_fingerprint, model_fingerprint, round_8bit
from advlib.evaluate import evaluate_voc
from advlib.robustness import _detect_cpu, _number, all_ranks, attacked_detections, crafted_batches, detect_all

def _valid_sweep_rows(rows) -> bool:
    """Cached sweep rows: numeric ``eps``, ``eps_px``, ``steps``, ``map`` (``None`` for NaN), dict ``spec``."""
    return isinstance(rows, list) and all(
        isinstance(r, dict) and all(_number(r.get(k)) for k in ("eps", "eps_px", "steps"))
        and (r.get("map") is None or _number(r["map"])) and isinstance(r.get("spec"), dict) for r in rows)




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
                dets[s] = all_ranks(mine[s])
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


__all__ = ["sweep", "sweep_curves"]
