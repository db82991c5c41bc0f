"""Detection metrics: Pascal VOC AP (VOC07 11-point and VOC2010+ all-point) and COCO AP.

VOC follows the official devkit / py-faster-rcnn ``voc_eval.py`` rules, with IoU on the
continuous ``(x2 - x1) * (y2 - y1)`` area (no ``+1`` pixel convention). COCO AP is computed by
pycocotools' ``COCOeval`` on an in-memory ground truth.

Data contract (see ``DESIGN.md``): per image, detections are dicts with ``boxes`` ``[K, 4]`` xyxy
absolute pixels, ``scores`` ``[K]``, ``labels`` int64 ``[K]`` in ``1..C``; targets are dicts with
``boxes`` ``[N, 4]``, ``labels`` ``[N]`` in ``1..C`` and optional ``difficult`` bool ``[N]``.
Torch tensors and numpy arrays are both accepted.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VOCResult", "box_iou_numpy", "evaluate_coco", "evaluate_voc", "voc_ap"]

_EPS = float(np.finfo(np.float64).eps)


def box_iou_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of xyxy boxes (continuous area, no ``+1`` convention).

    Args:
        a: boxes ``[N, 4]`` xyxy.
        b: boxes ``[M, 4]`` xyxy.

    Returns:
        IoU matrix ``[N, M]`` (float64); pairs whose union is empty get IoU 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != 4 or b.shape[1] != 4:
        raise ValueError(f"box_iou_numpy: boxes must have shape [K, 4], got {list(a.shape)} and {list(b.shape)}")
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)  # [N]
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # [M]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = np.clip(rb - lt, 0, None)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area_a[:, None] + area_b[None, :] - inter  # [N, M]
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision of one PR curve under the VOC rules.

    VOC07 (11-point): ``AP = 1/11 * sum_{t in 0, 0.1, ..., 1} max{p(r) : r >= t}`` (0 if no
    point reaches recall ``t``). The thresholds are ``k / 10``, i.e. the nearest doubles to the
    decimal values; py-faster-rcnn's ``np.arange(0, 1.1, 0.1)`` yields ``0.30000000000000004``
    etc., which differs only when a recall equals such a threshold exactly.
    All-point (VOC2010+): area under the monotone precision envelope
    ``p_interp(r) = max_{r' >= r} p(r')``, summed over the steps where recall changes.

    Args:
        recall: recall values ``[K]`` in detection order (non-decreasing).
        precision: precision values ``[K]``.
        use_07_metric: True for the 11-point rule, False for the all-point rule.

    Returns:
        The AP as a float in ``[0, 1]`` (0 for an empty curve).
    """
    rec, prec = np.ravel(recall).astype(np.float64), np.ravel(precision).astype(np.float64)
    if rec.shape != prec.shape:
        raise ValueError(f"voc_ap: recall and precision must have the same length, got {rec.size} and {prec.size}")
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10.0:
            above = rec >= t
            ap += (float(prec[above].max()) if above.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))  # [K + 2]
    mpre = np.concatenate(([0.0], prec, [0.0]))  # [K + 2]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class VOCResult:
    """Result of :func:`evaluate_voc`; index ``k`` of every per-class field is label ``k + 1``.

    Attributes:
        map: mean AP over classes with non-difficult ground truth (NaN if there is none).
        ap: per-class AP ``[C]``; NaN for classes without non-difficult ground truth.
        precision, recall: per-class curves in descending-score order (detections ignored on
            difficult boxes removed); empty for classes without detections or ground truth.
        npos: per-class number of non-difficult ground-truth boxes ``[C]``.
        class_names: ``C`` names.
        iou_threshold, use_07_metric: the settings that produced the result.
    """

    map: float
    ap: np.ndarray
    precision: list[np.ndarray]
    recall: list[np.ndarray]
    npos: np.ndarray
    class_names: list[str]
    iou_threshold: float = 0.5
    use_07_metric: bool = True

    def to_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """JSON-friendly dict (NaN becomes None); per-class lists align with ``class_names``.

        Args:
            include_curves: also include the per-class ``precision``/``recall`` lists.

        Returns:
            Dict with ``map``, ``ap``, ``npos``, ``class_names``, ``iou_threshold``, ``use_07_metric``.
        """
        out: dict[str, Any] = {
            "map": _none_if_nan(self.map),
            "ap": [_none_if_nan(v) for v in self.ap.tolist()],
            "npos": [int(v) for v in self.npos.tolist()],
            "class_names": list(self.class_names),
            "iou_threshold": float(self.iou_threshold),
            "use_07_metric": bool(self.use_07_metric),
        }
        if include_curves:
            out["precision"] = [p.tolist() for p in self.precision]
            out["recall"] = [r.tolist() for r in self.recall]
        return out

    def per_class_table(self) -> Any:
        """Returns: a pandas DataFrame with columns ``class``, ``AP``, ``npos``, one row per class."""
        import pandas as pd

        return pd.DataFrame({"class": list(self.class_names), "AP": self.ap, "npos": self.npos})


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _flatten(items: Sequence[Mapping[str, Any]], kind: str, num_classes: int) -> dict[str, np.ndarray]:
    """Validate per-image dicts; concatenate into flat arrays plus an ``image`` index ``[total]``."""
    extra = "scores" if kind == "detections" else "difficult"
    keys = ("boxes", "labels", "scores") if extra == "scores" else ("boxes", "labels")
    parts: dict[str, list[np.ndarray]] = {"boxes": [np.zeros((0, 4))], "labels": [np.zeros(0, np.int64)],
                                          extra: [np.zeros(0, np.float64 if extra == "scores" else bool)],
                                          "image": [np.zeros(0, np.int64)]}
    for i, d in enumerate(items):
        missing = [k for k in keys if k not in d] if isinstance(d, Mapping) else None
        if missing is None:
            raise ValueError(f"{kind}[{i}] must be a dict, got {type(d).__name__}")
        if missing:
            raise ValueError(f"{kind}[{i}] is missing key(s) {missing}; expected {list(keys)}")
        b = _to_numpy(d["boxes"]).astype(np.float64)
        b = b.reshape(0, 4) if b.size == 0 else b
        if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
            raise ValueError(f"{kind}[{i}]['boxes'] must be finite with shape [K, 4], got shape {list(b.shape)}")
        n = b.shape[0]
        lab = _to_numpy(d["labels"])
        e = _to_numpy(d[extra]) if extra in d else np.zeros(n, dtype=bool)
        for name, x in (("labels", lab), (extra, e)):
            if x.shape != (n,) and not (n == 0 and x.size == 0):
                raise ValueError(f"{kind}[{i}]['{name}'] must have shape [{n}], got {list(x.shape)}")
        if n and not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{kind}[{i}]['labels'] must be integers, got dtype {lab.dtype}")
        if n and (lab.min() < 1 or lab.max() > num_classes):
            raise ValueError(f"{kind}[{i}]['labels'] must be in 1..{num_classes}, got {lab.min()}..{lab.max()}")
        for key, x in (("boxes", b), ("labels", lab), (extra, e), ("image", np.full(n, i))):
            parts[key].append(x.reshape(n, 4) if key == "boxes" else x.reshape(n).astype(parts[key][0].dtype))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _prepare(detections: Sequence, targets: Sequence, num_classes: int) -> tuple[dict, dict]:
    """Validate both lists and flatten them (see :func:`_flatten`)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if len(detections) != len(targets):
        raise ValueError(
            f"detections and targets must have one entry per image, got lengths {len(detections)} and {len(targets)}"
        )
    return _flatten(detections, "detections", num_classes), _flatten(targets, "targets", num_classes)


def _match_voc(det: dict[str, np.ndarray], gt: dict[str, np.ndarray], n_images: int, thr: float):
    """Greedy VOC matching. Returns bool arrays ``tp``, ``fp`` ``[D]``; ignored detections have neither."""
    num = det["scores"].size
    tp, fp = np.zeros(num, dtype=bool), np.ones(num, dtype=bool)
    if num == 0:
        return tp, fp
    dkey = det["labels"] * n_images + det["image"]  # one key per (class, image) group
    order = np.lexsort((-det["scores"], dkey))  # by group, then descending score (stable)
    skey = dkey[order]
    starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    ends = np.r_[starts[1:], num]
    gkey = gt["labels"] * n_images + gt["image"]
    gorder = np.argsort(gkey, kind="stable")  # ground truth grouped the same way
    g_lo = np.searchsorted(gkey[gorder], skey[starts], side="left")
    g_hi = np.searchsorted(gkey[gorder], skey[starts], side="right")
    for s, e, lo, hi in zip(starts.tolist(), ends.tolist(), g_lo.tolist(), g_hi.tolist()):
        if lo == hi:
            continue  # no ground truth of this class in this image: all false positives
        di, gi = order[s:e], gorder[lo:hi]
        ious = box_iou_numpy(det["boxes"][di], gt["boxes"][gi])  # [nd, ng]
        jmax = ious.argmax(axis=1)  # [nd]
        hit = ious[np.arange(di.size), jmax] > thr  # [nd]
        on_difficult = hit & gt["difficult"][gi][jmax]
        fp[di[on_difficult]] = False  # ignored: neither TP nor FP
        cand = np.flatnonzero(hit & ~on_difficult)
        matched: set[int] = set()
        first: list[int] = []
        for k, j in zip(cand.tolist(), jmax[cand].tolist()):  # the sequential greedy rule, by score
            if j not in matched:
                matched.add(j)
                first.append(k)
        tp[di[first]] = True
        fp[di[first]] = False
    return tp, fp


def evaluate_voc(
    detections: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    class_names: Sequence[str] | None = None,
) -> VOCResult:
    """Pascal VOC mean average precision (devkit / ``voc_eval.py`` rules).

    Per class, detections over all images are sorted by descending score (stable). Each takes
    the ground-truth box of its class and image with the largest IoU: above ``iou_threshold``
    it is ignored if that box is difficult, a TP if the box is not yet matched (which marks it),
    else a FP (duplicate); otherwise a FP. ``recall = cumsum(tp) / npos``,
    ``precision = cumsum(tp) / max(cumsum(tp) + cumsum(fp), eps)``, AP by :func:`voc_ap`.
    A class with no non-difficult ground truth (``npos == 0``) gets AP NaN and is excluded
    from the mAP.

    Args:
        detections: per image, dict ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` in ``1..C``.
        targets: per image, dict ``boxes [N, 4]``, ``labels [N]``, optional ``difficult [N]``.
        num_classes: ``C``, the number of foreground classes.
        iou_threshold: a match needs IoU strictly greater than this.
        use_07_metric: VOC07 11-point AP if True, else all-point (VOC2010+) AP.
        class_names: optional ``C`` names (default ``"1" .. "C"``).

    Returns:
        A :class:`VOCResult`.
    """
    det, gt = _prepare(detections, targets, num_classes)
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    names = [str(n) for n in (range(1, num_classes + 1) if class_names is None else class_names)]
    if len(names) != num_classes:
        raise ValueError(f"class_names must have num_classes={num_classes} entries, got {len(names)}")
    tp, fp = _match_voc(det, gt, len(targets), float(iou_threshold))
    npos = np.bincount(gt["labels"][~gt["difficult"]], minlength=num_classes + 1)[1:]  # [C]
    corder = np.lexsort((-det["scores"], det["labels"]))  # by class, then descending score (stable)
    bounds = np.searchsorted(det["labels"][corder], np.arange(1, num_classes + 2))  # [C + 1]
    ap = np.full(num_classes, np.nan)
    precisions, recalls = [], []
    for c in range(num_classes):
        idx = corder[bounds[c] : bounds[c + 1]]
        idx = idx[tp[idx] | fp[idx]]  # drop ignored detections (AP is unchanged by them)
        ctp = np.cumsum(tp[idx]).astype(np.float64)
        cfp = np.cumsum(fp[idx]).astype(np.float64)
        rec = ctp / npos[c] if npos[c] else np.zeros(0)
        prec = ctp / np.maximum(ctp + cfp, _EPS) if npos[c] else np.zeros(0)
        ap[c] = voc_ap(rec, prec, use_07_metric) if npos[c] else np.nan
        precisions.append(prec)
        recalls.append(rec)
    valid = ~np.isnan(ap)
    mean_ap = float(ap[valid].mean()) if valid.any() else float("nan")
    return VOCResult(mean_ap, ap, precisions, recalls, npos.astype(np.int64), names, float(iou_threshold), use_07_metric)


def evaluate_coco(
    detections: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, float]:
    """COCO box AP (AP@[.5:.95], AP50, AP75) with pycocotools' ``COCOeval``.

    Ground truth is built in memory (xywh boxes, ``area = w * h``); difficult boxes become
    crowd regions (``iscrowd = 1``, ``ignore = 1``), which COCOeval ignores. COCOeval keeps at
    most 100 detections per image and uses area range ``all`` for these three numbers.

    Args:
        detections: per image, dict ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` in ``1..C``.
        targets: per image, dict ``boxes [N, 4]``, ``labels [N]``, optional ``difficult [N]``.
        num_classes: ``C``, the number of foreground classes.
        image_sizes: optional ``(h, w)`` per image (default: the extent of its boxes).

    Returns:
        ``{"AP": ..., "AP50": ..., "AP75": ...}``; 0.0 when there are no detections, NaN when
        there is no non-difficult ground truth.
    """
    det, gt = _prepare(detections, targets, num_classes)
    if image_sizes is None:
        ext = np.ones((len(targets), 2))  # [n_images, (h, w)]: extent of the image's boxes
        for d in (det, gt):
            np.maximum.at(ext, d["image"], np.ceil(d["boxes"][:, [3, 2]]))
        image_sizes = ext.astype(int).tolist()
    sizes = np.asarray(image_sizes)
    if sizes.shape != (len(targets), 2) or not (sizes > 0).all():
        raise ValueError(f"image_sizes must be {len(targets)} positive (h, w) pairs, got shape {list(sizes.shape)}")
    if not (~gt["difficult"]).any():
        return dict.fromkeys(("AP", "AP50", "AP75"), float("nan"))
    if det["scores"].size == 0:
        return dict.fromkeys(("AP", "AP50", "AP75"), 0.0)

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: np.ndarray) -> list[list[float]]:
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()  # [K, 4] xyxy -> xywh

    # ids start at 1: COCOeval treats a matched ground-truth id of 0 as "unmatched"
    gt_rows = zip(xywh(gt["boxes"]), gt["image"].tolist(), gt["labels"].tolist(), gt["difficult"].tolist())
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": c, "bbox": bb, "area": bb[2] * bb[3],
             "iscrowd": int(dif), "ignore": int(dif)} for k, (bb, i, c, dif) in enumerate(gt_rows)]
    det_rows = zip(xywh(det["boxes"]), det["image"].tolist(), det["labels"].tolist(), det["scores"].tolist())
    results = [{"image_id": i + 1, "category_id": c, "bbox": bb, "score": s} for bb, i, c, s in det_rows]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(sizes)],
            "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)],
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float("nan") if v < 0 else float(v) for v in ev.stats[:3]]
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}
