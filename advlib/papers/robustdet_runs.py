"""Notebook 03's analyses run on its models (RobustDet, Dong et al., ECCV 2022): the loss-change
setting fixed by its criterion, every analysis of :mod:`advlib.papers.robustdet_analysis` for each
model kept in the result cache, and their summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import Tensor, nn

from advlib.attacks import AttackSpec
from advlib.cache import round_8bit
from advlib.papers.robustdet_analysis import (SETTINGS, aid_discrimination, calibrate_loss_change, confidence_scores,
                                              gradient_entanglement, loss_change_histograms, pooled_pr_curve,
                                              task_loss_changes)


def analysis_batch_a(exp, n: int) -> tuple[Tensor, list[dict]]:
    """Batch a of the analyses: the first ``n`` training images (at most the split) and their truth."""
    from advlib.data import collate

    return collate([exp.train_set[i] for i in range(min(n, len(exp.train_set)))])


def loss_change_settings(exp, reference: nn.Module, rb) -> tuple[dict[str, tuple[int, float]], pd.DataFrame]:
    """The loss-change settings of notebook 03: the calibrated one first, then the first run's.

    The calibrated learning rate is :func:`calibrate_loss_change` on ``reference`` (STD) and batch a
    with ``rb.loss_change_steps`` steps over ``rb.loss_change_lrs`` and ``rb.loss_change_fall``
    (kept in the result cache); when no candidate reaches the fall, the largest is used and the
    label says so. The first default run's setting ``rb.first_loss_change`` follows, unless equal.

    Returns:
        ``({label: (m, lr)}, calibration table)``.
    """
    from advlib.cache import ResultCache

    xa, ta = analysis_batch_a(exp, rb.analysis_images)
    m, lrs, fall = rb.loss_change_steps, tuple(rb.loss_change_lrs), rb.loss_change_fall

    def compute() -> dict:
        lr, table = calibrate_loss_change(reference, xa, ta, m, lrs, fall)
        return {"lr": lr, "table": table.to_dict(orient="list")}

    v = ResultCache.resolve(None).cached(compute, kind="robustdet-loss-change-calibration", version=1,
                                         model=reference.zoo_key, data=exp.data_id, n=len(ta), steps=m,
                                         lrs=list(lrs), fall=fall)
    lr = v["lr"]
    label = f"calibrated (m={m}, lr={lr:g})" if lr is not None else \
        f"largest tried (m={m}, lr={max(lrs):g}; the {fall:.0%} criterion not met)"
    settings = {label: (m, float(lr if lr is not None else max(lrs)))}
    m0, lr0 = rb.first_loss_change
    if (m0, float(lr0)) not in settings.values():
        settings[f"first run (m={m0}, lr={lr0:g})"] = (int(m0), float(lr0))
    return settings, pd.DataFrame(v["table"])


def cached_analyses(exp, models: Mapping[str, nn.Module], rb, images: Tensor, targets: Sequence[dict],
                    spec_cls: AttackSpec, spec_loc: AttackSpec, table_images: int,
                    loss_change_settings: Mapping[str, tuple[int, float]] | None = None) -> dict[str, dict]:
    """Every analysis of notebook 03 for each model, kept in the result cache.

    Batch a is the first ``rb.analysis_images`` training images, batch b as many test images, each
    with its MDA examples (MTD's PGD-10, crafted on the model analysed): loss changes (Fig. 3),
    gradient entanglement of the detector's layers (Fig. 4, the discriminator's excluded), task
    loss changes (Fig. 5 right, on batch b); confidences above 0.3 (Fig. 7c) on the first
    ``table_images`` test images clean and under ``spec_cls`` / ``spec_loc``; pooled PR curves
    (Fig. 1) on those images clean and under ``spec_cls``.

    Args:
        loss_change_settings: label -> ``(m, lr)`` of the loss-change analysis; the first is the
            main one (``"loss_changes"``), all are under ``"loss_changes_by_setting"``. Default:
            ``rb.loss_change_steps`` and ``rb.loss_change_lr``.

    Returns:
        ``{model: {"loss_changes": {panel: array}, "loss_changes_by_setting": {label: {panel:
        array}}, "entanglement": DataFrame, "task_changes": DataFrame, "confidences":
        {"clean"|"A_cls"|"A_loc": array}, "pr": {"clean"|"A_cls": {"precision", "recall"}},
        "aid": :func:`aid_discrimination` or None}}`` (``aid`` for models with a discriminator).
    """
    from advlib.attacks import preset
    from advlib.cache import ResultCache
    from advlib.imageset import in_memory
    from advlib.robustness import adversarial_images

    n = rb.analysis_images
    xa, ta = analysis_batch_a(exp, n)
    # the analyses index and re-attack these subsets freely: a streamed split's are read into memory
    # (the voc budget's table images: three copies of the test set, clean and two attacks)
    xb, tb = in_memory(images[:n]), list(targets[:n])
    xt, tt = in_memory(images[:table_images]), list(targets[:table_images])
    mda = preset("MDA", seed=0)
    settings = dict(loss_change_settings or {f"m={rb.loss_change_steps}, lr={rb.loss_change_lr:g}":
                                             (rb.loss_change_steps, rb.loss_change_lr)})
    if not settings:
        raise ValueError("cached_analyses: loss_change_settings is empty")
    out = {}
    for name, model in models.items():
        def compute(model=model) -> dict:
            adv_a = round_8bit(adversarial_images(model, xa, ta, mda, progress=False))
            adv_b = round_8bit(adversarial_images(model, xb, tb, mda, progress=False))
            t_cls = round_8bit(adversarial_images(model, xt, tt, spec_cls, progress=False))
            t_loc = round_8bit(adversarial_images(model, xt, tt, spec_loc, progress=False))
            return {"loss_changes": {label: loss_change_histograms(model, xa, adv_a, ta, xb, adv_b, tb, m, lr)
                                     for label, (m, lr) in settings.items()},
                    "aid": aid_discrimination(model, xa, adv_a, xb, adv_b) if hasattr(model, "aid") else None,
                    "entanglement": gradient_entanglement(model, xb, adv_b, tb, exclude=("aid",)),
                    "task_changes": task_loss_changes(model, xb, tb, spec_cls, spec_loc),
                    "confidences": {k: confidence_scores(model, x) for k, x in
                                    (("clean", xt), ("A_cls", t_cls), ("A_loc", t_loc))},
                    "pr": {k: {m: v for m, v in pooled_pr_curve(model, x, tt, exp.num_classes).items()
                               if m in ("precision", "recall")} for k, x in (("clean", xt), ("A_cls", t_cls))}}

        v = ResultCache.resolve(None).cached(
            compute, kind="robustdet-analyses", version=2, model=model.zoo_key, data=exp.data_id, n=n,
            table_images=len(tt), loss_change_settings={k: list(v) for k, v in settings.items()},
            mda=mda.to_dict(), spec_cls=spec_cls.to_dict(), spec_loc=spec_loc.to_dict())
        by_setting = {label: {k: np.asarray(x, dtype=float) for k, x in panels.items()}
                      for label, panels in v["loss_changes"].items()}
        out[name] = {"loss_changes": by_setting[next(iter(settings))], "loss_changes_by_setting": by_setting,
                     "aid": v.get("aid"),
                     "entanglement": pd.DataFrame(v["entanglement"]),
                     "task_changes": pd.DataFrame(v["task_changes"]),
                     "confidences": {k: np.asarray(x, dtype=float) for k, x in v["confidences"].items()},
                     "pr": {k: {m: np.asarray(x, dtype=float) for m, x in c.items()} for k, c in v["pr"].items()}}
    return out


def analysis_summary(analyses: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per model: per Fig. 3 setting the fraction of positive loss changes and the mean
    change, the mean gradient entanglement over layers (Fig. 4), the mean task-loss changes
    (Fig. 5 right) and the mean confidence above 0.3 (Fig. 7c)."""
    rows = {}
    for name, a in analyses.items():
        row = {}
        for s in SETTINGS:
            v = np.asarray(a["loss_changes"][s], dtype=float)
            row[f"{s} >0"], row[f"{s} mean"] = float((v > 0).mean()), float(v.mean())
        row["R mean"] = float(a["entanglement"]["R_mean"].mean())
        row["dL_cls (A_cls)"] = float(a["task_changes"]["dL_cls"].mean())
        row["dL_loc (A_loc)"] = float(a["task_changes"]["dL_loc"].mean())
        for k, v in a["confidences"].items():
            row[f"confidence {k}"] = float(np.mean(v)) if len(v) else float("nan")
        if a.get("aid"):
            row["AID accuracy"] = a["aid"]["accuracy"]
            row["AID JS clean-adv"] = a["aid"]["js"]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def loss_change_summary(analyses: Mapping[str, Mapping]) -> pd.DataFrame:
    """Rows (model, setting) for every loss-change setting computed: per Fig. 3 panel the fraction
    of positive changes and the mean change, and the mean absolute change."""
    rows = {}
    for name, a in analyses.items():
        for label, panels in a["loss_changes_by_setting"].items():
            row = {}
            for s in SETTINGS:
                v = np.asarray(panels[s], dtype=float)
                row[f"{s} >0"], row[f"{s} mean"], row[f"{s} mean |Δ|"] = (
                    float((v > 0).mean()), float(v.mean()), float(np.abs(v).mean()))
            rows[(name, label)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["model", "setting"])


__all__ = ["analysis_batch_a", "analysis_summary", "cached_analyses", "loss_change_settings", "loss_change_summary"]
