"""Tests for advlib.evaluate: hand-worked VOC cases, pycocotools cross-checks, input validation.

Every expected number is derived by hand in the comments or computed by an independent
implementation (torchvision's box_iou, pycocotools' COCOeval driven directly by the test).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from advlib.evaluate import (  # noqa: E402
    VOCResult,
    box_iou_numpy,
    evaluate_coco,
    evaluate_voc,
    voc_ap,
)
from advlib.plots import plot_pr_curves  # noqa: E402


def det(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def tgt(boxes, labels, difficult=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return t


# ---------------------------------------------------------------- voc_ap on hand-made curves


def test_voc_ap_two_rules_on_hand_curve():
    # precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    # 11-point: t = 0.0..0.5 (6 thresholds): points with r >= t include r=0.5 (p=1) -> 1.
    #           t = 0.6..1.0 (5 thresholds): only r=1 (p=2/3) -> 2/3.
    #           AP = (6 * 1 + 5 * 2/3) / 11 = (28/3) / 11 = 28/33.
    # all-point: envelope at r=0.5 is 1, at r=1 is 2/3: AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(28 / 33)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(5 / 6)


def test_voc_ap_11_point_threshold_equal_to_recall():
    # recall reaches exactly 0.3 (= 3/10) with precision 1, then 0.4 with precision 0.5.
    # t = 0, 0.1, 0.2, 0.3 -> 1 (r = 0.3 counts as r >= 0.3); t = 0.4 -> 0.5; t >= 0.5 -> 0.
    # AP = (4 * 1 + 0.5) / 11 = 4.5 / 11.
    rec = np.array([1, 2, 3, 4]) / 10
    prec = np.array([1.0, 1.0, 1.0, 0.5])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(4.5 / 11)
    # all-point: 0.3 * 1 + 0.1 * 0.5 = 0.35
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.35)


def test_voc_ap_empty_curve_is_zero():
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


# ---------------------------------------------------------------- evaluate_voc, hand-worked


def hand_case():
    # Class 1: image A has g1=[0,0,10,10] and a difficult g2=[20,20,30,30];
    #          image B has g3=[0,0,10,10] and g4=[50,50,60,60]; image C has no objects.
    # npos(class 1) = 3 (g2 is difficult). Class 2 never appears in the ground truth.
    targets = [
        tgt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [False, True]),
        tgt([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1]),  # no 'difficult' key: all False
        tgt(np.zeros((0, 4)), []),
    ]
    detections = [
        # d1 (0.9): IoU(g1) = 1 -> TP.  d2 (0.8): IoU(g1) = 90/100 = 0.9, g1 taken -> FP (duplicate).
        # d3 (0.7): on difficult g2 (IoU 1) -> ignored.  c2 (0.95): class 2 -> FP for class 2.
        det([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.7, 0.95], [1, 1, 1, 2]),
        # d4 (0.6): IoU(g3) = 40/100 = 0.4 <= 0.5 -> FP.  d6 (0.4): IoU(g4) = 100/110 -> TP.
        # d7 (0.3): IoU(g3) = 1, g3 still free -> TP.
        det([[0, 0, 10, 4], [50, 50, 60, 61], [0, 0, 10, 10]], [0.6, 0.4, 0.3], [1, 1, 1]),
        # d5 (0.5): image without ground truth -> FP.
        det([[0, 0, 5, 5]], [0.5], [1]),
    ]
    return detections, targets


def test_hand_case_voc07_and_all_point():
    detections, targets = hand_case()
    # Order by score (d3 ignored): d1 TP, d2 FP, d4 FP, d5 FP, d6 TP, d7 TP
    # cum TP 1 1 1 1 2 3, cum FP 0 1 2 3 3 3
    # recall    1/3 1/3 1/3 1/3 2/3 1
    # precision 1   1/2 1/3 1/4 2/5 1/2
    exp_rec = np.array([1, 1, 1, 1, 2, 3]) / 3
    exp_prec = np.array([1, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 1 / 2])
    # 11-point: t in {0, .1, .2, .3} -> max p over all points = 1 (4 thresholds)
    #           t in {.4, .5, .6} -> points r=2/3, r=1 -> max(0.4, 0.5) = 0.5 (3 thresholds)
    #           t in {.7, .8, .9, 1} -> point r=1 -> 0.5 (4 thresholds)
    #           AP = (4 + 3 * 0.5 + 4 * 0.5) / 11 = 7.5 / 11
    r07 = evaluate_voc(detections, targets, num_classes=2, use_07_metric=True, class_names=["a", "b"])
    assert r07.ap[0] == pytest.approx(7.5 / 11)
    assert math.isnan(r07.ap[1])  # class 2 absent from ground truth
    assert r07.map == pytest.approx(7.5 / 11)  # NaN class excluded from the mean
    assert r07.npos.tolist() == [3, 0]
    np.testing.assert_allclose(r07.recall[0], exp_rec)
    np.testing.assert_allclose(r07.precision[0], exp_prec)
    # all-point: envelope 1 on (0, 1/3], 0.5 on (1/3, 2/3] and (2/3, 1]:
    #            AP = 1/3 * 1 + 1/3 * 0.5 + 1/3 * 0.5 = 2/3
    r12 = evaluate_voc(detections, targets, num_classes=2, use_07_metric=False)
    assert r12.ap[0] == pytest.approx(2 / 3)
    assert r12.map == pytest.approx(2 / 3)


def test_hand_case_numpy_input_same_as_torch():
    detections, targets = hand_case()
    to_np = lambda d: {k: v.numpy() for k, v in d.items()}  # noqa: E731
    a = evaluate_voc(detections, targets, 2, use_07_metric=False)
    b = evaluate_voc([to_np(d) for d in detections], [to_np(t) for t in targets], 2, use_07_metric=False)
    np.testing.assert_array_equal(a.ap, b.ap)


def test_iou_threshold_strictly_greater():
    # IoU of [0,0,10,5] with [0,0,10,10] is exactly 50/100 = 0.5: VOC needs > 0.5 -> FP, AP 0.
    targets = [tgt([[0, 0, 10, 10]], [1])]
    detections = [det([[0, 0, 10, 5]], [0.9], [1])]
    assert evaluate_voc(detections, targets, 1).ap[0] == 0.0
    # at threshold 0.4 it is a TP with precision 1, recall 1 -> AP 1
    assert evaluate_voc(detections, targets, 1, iou_threshold=0.4).ap[0] == pytest.approx(1.0)


def test_no_plus_one_pixel_convention():
    # det [0,0,10,6] vs gt [0,0,10,10]: continuous IoU = 60/100 = 0.6 -> TP at threshold 0.59.
    # With the +1 convention it would be 77/121 = 0.636; at threshold 0.62 continuous says FP.
    targets = [tgt([[0, 0, 10, 10]], [1])]
    detections = [det([[0, 0, 10, 6]], [0.9], [1])]
    assert evaluate_voc(detections, targets, 1, iou_threshold=0.59).ap[0] == pytest.approx(1.0)
    assert evaluate_voc(detections, targets, 1, iou_threshold=0.62).ap[0] == 0.0


def test_perfect_detections_ap_one_both_rules():
    targets = [tgt([[0, 0, 10, 10], [20, 0, 40, 30]], [1, 2]), tgt([[5, 5, 50, 50]], [1]), tgt(np.zeros((0, 4)), [])]
    detections = [
        det([[0, 0, 10, 10], [20, 0, 40, 30]], [0.3, 0.9], [1, 2]),
        det([[5, 5, 50, 50]], [0.8], [1]),
        det(np.zeros((0, 4)), [], []),
    ]
    for use07 in (True, False):
        r = evaluate_voc(detections, targets, 2, use_07_metric=use07)
        np.testing.assert_allclose(r.ap, [1.0, 1.0])
        assert r.map == pytest.approx(1.0)


def test_no_detections_ap_zero():
    targets = [tgt([[0, 0, 10, 10]], [1]), tgt([[0, 0, 10, 10]], [2])]
    detections = [det(np.zeros((0, 4)), [], []), det(np.zeros((0, 4)), [], [])]
    for use07 in (True, False):
        r = evaluate_voc(detections, targets, 2, use_07_metric=use07)
        np.testing.assert_array_equal(r.ap, [0.0, 0.0])
        assert r.map == 0.0


def test_only_difficult_ground_truth_is_nan():
    # the only object is difficult: npos = 0 -> AP NaN; the detection on it is ignored
    targets = [tgt([[0, 0, 10, 10]], [1], [True])]
    detections = [det([[0, 0, 10, 10]], [0.9], [1])]
    r = evaluate_voc(detections, targets, 1)
    assert math.isnan(r.ap[0]) and math.isnan(r.map)
    assert r.to_dict()["map"] is None


def test_to_dict_is_json_and_table():
    detections, targets = hand_case()
    r = evaluate_voc(detections, targets, 2, class_names=["cat", "dog"])
    d = json.loads(json.dumps(r.to_dict(include_curves=True), allow_nan=False))
    assert d["ap"][1] is None and d["ap"][0] == pytest.approx(7.5 / 11)
    assert d["npos"] == [3, 0] and d["class_names"] == ["cat", "dog"]
    assert len(d["precision"][0]) == 6
    table = r.per_class_table()
    assert list(table.columns) == ["class", "AP", "npos"]
    assert table["class"].tolist() == ["cat", "dog"]
    assert table["npos"].tolist() == [3, 0]


def test_plot_pr_curves_returns_axes():
    import matplotlib.pyplot as plt

    detections, targets = hand_case()
    r = evaluate_voc(detections, targets, 2)
    ax = plot_pr_curves(r)
    assert len(ax.get_lines()) == 1  # class 2 has no ground truth and is skipped by default
    fig, ax2 = plt.subplots()
    assert plot_pr_curves(r, ax=ax2, classes=[1, "2"]) is ax2
    assert len(ax2.get_lines()) == 2
    plt.close("all")


# ---------------------------------------------------------------- box IoU against torchvision


def test_box_iou_numpy_matches_torchvision():
    from torchvision.ops import box_iou

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (2, 7, 2))
    wh = rng.uniform(1, 30, (2, 7, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2)  # [2, 7, 4]
    expected = box_iou(torch.from_numpy(boxes[0]), torch.from_numpy(boxes[1])).numpy()
    np.testing.assert_allclose(box_iou_numpy(boxes[0], boxes[1]), expected, rtol=1e-12)


# ---------------------------------------------------------------- cross-check with pycocotools


def synthetic_scenes(seed, n_images=40, num_classes=3):
    """Non-overlapping GT on a 4x4 grid of 100 px cells; detections = jittered GT + random FPs."""
    rng = np.random.default_rng(seed)
    dets, tgts = [], []
    for _ in range(n_images):
        cells = rng.choice(16, size=rng.integers(1, 9), replace=False)
        x0, y0 = (cells % 4) * 100.0 + 10, (cells // 4) * 100.0 + 10
        w, h = rng.uniform(30, 80, cells.size), rng.uniform(30, 80, cells.size)
        gt = np.stack([x0, y0, x0 + w, y0 + h], axis=1)  # inside its own cell: GT boxes disjoint
        glab = rng.integers(1, num_classes + 1, cells.size)
        boxes, scores, labels = [], [], []
        for b, lab in zip(gt, glab):
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missed, found, or found twice
                size = np.array([b[2] - b[0], b[3] - b[1]] * 2)
                boxes.append(b + rng.uniform(-0.25, 0.25, 4) * size)  # IoU spreads around 0.5
                scores.append(rng.uniform(0.2, 1.0))
                labels.append(lab)
        for _ in range(rng.integers(0, 6)):  # background false positives
            xy = rng.uniform(0, 350, 2)
            boxes.append(np.r_[xy, xy + rng.uniform(10, 60, 2)])
            scores.append(rng.uniform(0.0, 0.8))
            labels.append(rng.integers(1, num_classes + 1))
        dets.append({"boxes": np.array(boxes).reshape(-1, 4), "scores": np.array(scores),
                     "labels": np.array(labels, dtype=np.int64)})
        tgts.append({"boxes": gt, "labels": glab.astype(np.int64)})
    return dets, tgts


def cocoeval_direct(dets, tgts, num_classes):
    """Independent pycocotools run (built here, not through advlib)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, res = [], [], []
    for i, (d, t) in enumerate(zip(dets, tgts)):
        images.append({"id": i + 1, "height": 400, "width": 400})
        for b, lab in zip(t["boxes"], t["labels"]):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab),
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        for b, s, lab in zip(d["boxes"], d["scores"], d["labels"]):
            res.append({"image_id": i + 1, "category_id": int(lab), "score": float(s),
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in range(1, num_classes + 1)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_voc_all_point_matches_cocoeval_ap50(seed):
    from torchvision.ops import box_iou

    num_classes = 3
    dets, tgts = synthetic_scenes(seed, num_classes=num_classes)
    # VOC counts IoU > 0.5, COCO IoU >= 0.5: make sure no pair sits at exactly 0.5
    for d, t in zip(dets, tgts):
        iou = box_iou(torch.from_numpy(d["boxes"]), torch.from_numpy(t["boxes"])).numpy()
        assert not np.any(np.abs(iou - 0.5) < 1e-9)
        assert len(d["scores"]) < 100  # COCOeval keeps at most 100 detections per image
    ev = cocoeval_direct(dets, tgts, num_classes)
    r = evaluate_voc(dets, tgts, num_classes, iou_threshold=0.5, use_07_metric=False)
    for k in range(num_classes):
        p = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all recalls, class k, area 'all', 100 dets
        coco_ap50 = float(np.mean(p))
        assert 0.3 < coco_ap50 < 0.95  # a non-trivial curve
        assert r.ap[k] == pytest.approx(coco_ap50, abs=0.02)
    assert r.map == pytest.approx(ev.stats[1], abs=0.02)
    # and evaluate_coco reproduces the direct pycocotools numbers
    ours = evaluate_coco(dets, tgts, num_classes, image_sizes=[(400, 400)] * len(tgts))
    assert ours["AP"] == pytest.approx(ev.stats[0], abs=1e-9)
    assert ours["AP50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert ours["AP75"] == pytest.approx(ev.stats[2], abs=1e-9)


def test_evaluate_coco_perfect_and_empty():
    targets = [tgt([[0, 0, 10, 10], [20, 0, 40, 30]], [1, 2]), tgt([[5, 5, 50, 50]], [1]), tgt(np.zeros((0, 4)), [])]
    perfect = [
        det([[0, 0, 10, 10], [20, 0, 40, 30]], [0.3, 0.9], [1, 2]),
        det([[5, 5, 50, 50]], [0.8], [1]),
        det(np.zeros((0, 4)), [], []),
    ]
    out = evaluate_coco(perfect, targets, 2)
    assert set(out) == {"AP", "AP50", "AP75"}
    assert out["AP50"] == pytest.approx(1.0)
    assert out["AP"] == pytest.approx(1.0, abs=0.01)
    empty = [det(np.zeros((0, 4)), [], []) for _ in targets]
    assert evaluate_coco(empty, targets, 2) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_evaluate_coco_difficult_is_ignored():
    # one normal and one difficult object, both detected perfectly: the difficult one is a
    # crowd region, so its detection is neither TP nor FP and AP stays 1
    targets = [tgt([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 1], [False, True])]
    detections = [det([[0, 0, 10, 10], [20, 20, 40, 40]], [0.5, 0.9], [1, 1])]
    assert evaluate_coco(detections, targets, 1)["AP50"] == pytest.approx(1.0)


# ---------------------------------------------------------------- speed


def test_evaluate_voc_speed():
    rng = np.random.default_rng(0)
    n_images, n_det, n_gt, num_classes = 500, 200, 10, 12
    xy = rng.uniform(0, 400, (n_images, n_gt, 2))
    gt = np.concatenate([xy, xy + rng.uniform(20, 100, (n_images, n_gt, 2))], axis=2)  # [I, G, 4]
    glab = rng.integers(1, num_classes + 1, (n_images, n_gt))
    src = rng.integers(0, n_gt, (n_images, n_det))  # each detection jitters a random GT box
    boxes = np.take_along_axis(gt, src[..., None], axis=1) + rng.normal(0, 8, (n_images, n_det, 4))
    labels = np.where(rng.random((n_images, n_det)) < 0.7, np.take_along_axis(glab, src, axis=1),
                      rng.integers(1, num_classes + 1, (n_images, n_det)))
    scores = rng.random((n_images, n_det))
    dets = [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(n_images)]
    tgts = [{"boxes": gt[i], "labels": glab[i], "difficult": rng.random(n_gt) < 0.1} for i in range(n_images)]
    t0 = time.perf_counter()
    r = evaluate_voc(dets, tgts, num_classes)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"evaluate_voc took {elapsed:.2f} s"
    assert isinstance(r, VOCResult) and np.all((r.ap >= 0) & (r.ap <= 1))


# ---------------------------------------------------------------- bad input


def test_bad_input_raises():
    good_t = [tgt([[0, 0, 10, 10]], [1])]
    good_d = [det([[0, 0, 10, 10]], [0.9], [1])]
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_voc(good_d * 2, good_t, 1)
    with pytest.raises(ValueError, match=r"labels.*1\.\.1"):
        evaluate_voc([det([[0, 0, 10, 10]], [0.9], [2])], good_t, 1)
    with pytest.raises(ValueError, match=r"labels.*1\.\.2"):
        evaluate_voc(good_d, [tgt([[0, 0, 10, 10]], [0])], 2)
    with pytest.raises(ValueError, match=r"boxes.*\[K, 4\]"):
        evaluate_voc([{"boxes": np.zeros((1, 3)), "scores": np.ones(1), "labels": np.ones(1, np.int64)}], good_t, 1)
    with pytest.raises(ValueError, match=r"scores.*shape"):
        evaluate_voc([det([[0, 0, 10, 10]], [0.9, 0.8], [1])], good_t, 1)
    with pytest.raises(ValueError, match="missing key"):
        evaluate_voc([{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}], good_t, 1)
    with pytest.raises(ValueError, match=r"difficult.*shape"):
        evaluate_voc(good_d, [tgt([[0, 0, 10, 10]], [1], [True, False])], 1)
    with pytest.raises(ValueError, match="class_names"):
        evaluate_voc(good_d, good_t, 1, class_names=["a", "b"])
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_voc(good_d, good_t, 0)
    with pytest.raises(ValueError, match="integers"):
        evaluate_voc(good_d, [{"boxes": np.zeros((1, 4)), "labels": np.ones(1)}], 1)
    with pytest.raises(ValueError, match="image_sizes"):
        evaluate_coco(good_d, good_t, 1, image_sizes=[(10, 10), (10, 10)])
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_coco(good_d, good_t * 2, 1)
    with pytest.raises(ValueError, match="same length"):
        voc_ap(np.ones(2), np.ones(3), True)
