"""Matching and multibox terms against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder

from advlib.losses import (Matched, batched_box_iou, cls_loss, loc_loss, match_anchors, multibox_terms,
                           ssd_loss)
from advlib.models import DenseOutput

CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def anchors4():
    # four anchors on a 100x100 image
    return torch.tensor([[0., 0, 10, 10], [0, 0, 20, 20], [50, 50, 70, 70], [80, 80, 100, 100]])


def test_batched_iou_by_hand():
    a = torch.tensor([[[0., 0, 10, 10]]])
    b = torch.tensor([[5., 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    iou = batched_box_iou(a, b)[0, 0]
    # overlap 5x5 = 25, union 100 + 100 - 25 = 175
    assert iou.tolist() == pytest.approx([25 / 175, 1.0, 0.0])


def test_match_threshold_and_best_anchor():
    anchors = anchors4()
    # object 0: exactly anchor 1 (IoU 1 with anchor 1, 100/400 = 0.25 with anchor 0)
    # object 1: box 52..72 overlapping anchor 2 with IoU (18*18)/(400+400-324) = 324/476 = 0.68
    # object 2 (other image): tiny box whose best IoU is below 0.5 -> still gets its best anchor (3)
    targets = [
        {"boxes": torch.tensor([[0., 0, 20, 20], [52, 52, 72, 72]]), "labels": torch.tensor([3, 5])},
        {"boxes": torch.tensor([[90., 90, 100, 100]]), "labels": torch.tensor([2])},
    ]
    m = match_anchors(anchors, targets, CODER)
    assert m.labels.tolist() == [[0, 3, 5, 0], [0, 0, 0, 2]]
    assert m.object_index.tolist() == [[-1, 0, 1, -1], [-1, -1, -1, 0]]
    assert m.num_objects.tolist() == [2, 1]
    # regression target of a perfect match is zero; of object 1 on anchor 2: dx = 10*(62-60)/20 = 1
    assert torch.allclose(m.box_targets[0, 1], torch.zeros(4))
    assert m.box_targets[0, 2].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert torch.isfinite(m.box_targets).all()


def test_image_without_objects():
    m = match_anchors(anchors4(), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], CODER)
    assert m.labels.sum() == 0 and torch.isfinite(m.box_targets).all()


def test_terms_and_reducers_by_hand():
    anchors = anchors4()
    targets = [{"boxes": torch.tensor([[0., 0, 20, 20]]), "labels": torch.tensor([1])}]
    m = match_anchors(anchors, targets, CODER)  # anchor 1 positive, label 1
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 1] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # smooth-L1: 0.5*0.25 + (2 - 0.5) = 1.625
    t = multibox_terms(DenseOutput(logits, deltas), m)
    lse = lambda v: math.log(sum(math.exp(x) for x in v))
    ce = [lse([2, 0, 0]) - 2, lse([0, 1, 0]) - 1, lse([0, 0, 3]) - 0, lse([1, 0, 0]) - 1]
    assert t.cls[0].tolist() == pytest.approx(ce, rel=1e-5)
    assert t.positive[0].tolist() == [False, True, False, False]
    # 3 negatives allowed for 1 positive: all three negatives are hard negatives
    assert t.hard_negative[0].tolist() == [True, False, True, True]
    assert t.loc[0].tolist() == pytest.approx([0, 1.625, 0, 0])
    assert cls_loss(t).item() == pytest.approx(sum(ce), rel=1e-5)
    assert loc_loss(t).item() == pytest.approx(1.625)
    assert ssd_loss(t).item() == pytest.approx(sum(ce) + 1.625, rel=1e-5)


def test_hard_negative_ratio_picks_largest_losses():
    a = torch.tensor([[0., 0, 10, 10]] + [[20. + i, 20, 30 + i, 30] for i in range(8)])
    m = match_anchors(a, [{"boxes": torch.tensor([[0., 0, 10, 10]]), "labels": torch.tensor([1])}], CODER)
    logits = torch.zeros(1, 9, 2)
    logits[0, 1:, 1] = torch.arange(8.0)  # negatives' loss grows with index
    t = multibox_terms(DenseOutput(logits, torch.zeros(1, 9, 4)), m, neg_pos_ratio=3)
    assert t.hard_negative[0].nonzero().flatten().tolist() == [6, 7, 8]


def test_terms_match_torch_cross_entropy_on_random_batch():
    torch.manual_seed(0)
    anchors = anchors4()
    targets = [{"boxes": torch.tensor([[0., 0, 20, 20]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[50., 50, 70, 70]]), "labels": torch.tensor([1])}]
    m = match_anchors(anchors, targets, CODER)
    logits, deltas = torch.randn(2, 4, 3), torch.randn(2, 4, 4)
    t = multibox_terms(DenseOutput(logits, deltas), m)
    for b in range(2):
        for a in range(4):
            ref = F.cross_entropy(logits[b, a:a + 1], m.labels[b, a:a + 1]).item()
            assert t.cls[b, a].item() == pytest.approx(ref, rel=1e-5)


def test_matched_indexing_selects_images():
    m = match_anchors(anchors4(), [{"boxes": torch.tensor([[0., 0, 20, 20]]), "labels": torch.tensor([1])},
                                   {"boxes": torch.tensor([[80., 80, 100, 100]]), "labels": torch.tensor([2])}], CODER)
    sub = m[1:]
    assert isinstance(sub, Matched) and sub.labels.tolist() == [[0, 0, 0, 2]]


def test_class_scores_follow_each_familys_post_processing_by_hand():
    from types import SimpleNamespace

    from advlib.losses import class_scores

    logits = torch.tensor([[[0.0, math.log(3.0), 0.0]]])  # [1, 1, C+1 = 3]
    soft = class_scores(SimpleNamespace(cls_logits=logits))  # softmax over 1 + 3 + 1
    torch.testing.assert_close(soft, torch.tensor([[[3 / 5, 1 / 5]]]))
    focal = class_scores(SimpleNamespace(cls_logits=logits, family="focal"))  # sigmoid: 3/4, 1/2
    torch.testing.assert_close(focal, torch.tensor([[[0.75, 0.5]]]))
    fcos = class_scores(SimpleNamespace(cls_logits=logits, family="fcos", centerness=torch.tensor([[[0.0]]])))
    torch.testing.assert_close(fcos, torch.tensor([[[math.sqrt(0.75 * 0.5), math.sqrt(0.25)]]]))
