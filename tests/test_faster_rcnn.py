"""torchvision's Faster R-CNN behind our Detector interface, checked against torchvision itself: the
RPN part of our terms against ``RegionProposalNetwork.compute_loss`` on the same sampled anchors
(targets from torchvision's own ``assign_targets_to_anchors``), the ROI part against
``fastrcnn_loss`` on the same proposals (targets from torchvision's own
``assign_targets_to_proposals``), detections against its eval-mode forward, and training through
the shared loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.roi_heads import fastrcnn_loss

from advlib.attacks import attack, preset
from advlib.data import collate
from advlib.losses import cls_loss, loc_loss, match_targets, multibox_terms, ssd_loss
from advlib.losses_rcnn import RCNNMatched
from advlib.models import ARCHITECTURES, build_detector
from advlib.models.faster_rcnn import FasterRCNNDetector, RCNNOutput, build_faster_rcnn

C, SIZE = 12, 64


def _model(seed: int = 0, **kwargs) -> FasterRCNNDetector:
    torch.manual_seed(seed)
    return build_faster_rcnn("tiny_vgg", C, SIZE, **kwargs).eval()


def _batch(ds, idx=(0, 1, 2, 3)):
    return collate([ds[i] for i in idx])


def _trained(tiny_train, steps: int = 30) -> tuple[FasterRCNNDetector, list]:
    from advlib.train import StandardRecipe, TrainConfig, train

    model = _model()
    cfg = TrainConfig(epochs=steps, batch_size=4, lr=1e-3, augment=False, warmup_frac=0.0, seed=0)
    hist = train(model, torch.utils.data.Subset(tiny_train, range(4)), StandardRecipe(), cfg, "cpu", None, False)
    return model, hist


@pytest.fixture(scope="module")
def trained(tiny_train):
    """A model after 30 steps on 4 images (its RPN proposes the objects: ROI positives exist)."""
    return _trained(tiny_train)


def test_outputs_anchors_and_registry():
    model = _model()
    x = torch.rand(2, 3, SIZE, SIZE)
    out = model(x)
    assert isinstance(out, RCNNOutput) and out.family == "rcnn"
    a, p = model.num_anchors, out.proposals.shape[1]
    assert out.objectness.shape == (2, a) and out.rpn_deltas.shape == (2, a, 4) and 0 < p <= 100
    assert out.cls_logits.shape == (2, p, C + 1) and out.box_deltas.shape == (2, p, C + 1, 4)
    assert out.proposal_mask.shape == (2, p) and not out.proposals.requires_grad
    assert sum(model.level_sizes) == a and a == (8 * 8 + 4 * 4 + 2 * 2 + 1) * 6
    from torchvision.models.detection.image_list import ImageList
    feats = list(model.net.backbone(torch.zeros(1, 3, SIZE, SIZE)).values())
    torch.testing.assert_close(model.anchors, model.net.rpn.anchor_generator(
        ImageList(torch.zeros(1, 3, SIZE, SIZE), [(SIZE, SIZE)]), feats)[0])
    assert "faster_rcnn" in ARCHITECTURES
    assert isinstance(build_detector("faster_rcnn", "tiny_resnet", C, SIZE), FasterRCNNDetector)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    with pytest.raises(ValueError, match="built for"):
        model(torch.rand(1, 3, 32, 32))
    # decode: RPN deltas against the anchors, ROI deltas against the proposals (torchvision's coders)
    torch.testing.assert_close(model.decode(out.rpn_deltas)[1],
                               model.box_coder.decode_single(out.rpn_deltas[1], model.anchors))
    roi = model.decode(out.box_deltas, out.proposals)
    assert roi.shape == out.box_deltas.shape
    n = int(out.proposal_mask[0].sum())
    torch.testing.assert_close(roi[0, :n, 3], model.net.roi_heads.box_coder.decode_single(
        out.box_deltas[0, :n, 3], out.proposals[0, :n]))


def test_pooling_only_the_reachable_maps_changes_nothing():
    from torchvision.ops import MultiScaleRoIAlign

    from advlib.models.faster_rcnn import pooled_maps

    assert pooled_maps([16, 8, 4, 2], 128) == ["0"] and pooled_maps([38, 19, 10, 5, 3, 1], 300) == ["0", "1"]
    torch.manual_seed(0)
    for side, grid in ((128, [16, 8, 4, 2]), (320, [40, 20, 10, 5])):
        feats = {str(i): torch.randn(2, 8, g, g) for i, g in enumerate(grid)}
        xy = torch.rand(2, 40, 2) * side * 0.9
        wh = torch.rand(2, 40, 2) * side
        boxes = [torch.cat([p, (p + s).clamp(max=side)], 1) for p, s in zip(xy, wh)]  # up to the whole image
        every = MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, [(side, side)] * 2)
        ours = MultiScaleRoIAlign(pooled_maps(grid, side), 7, 2)(feats, boxes, [(side, side)] * 2)
        torch.testing.assert_close(ours, every, rtol=0, atol=0)


def _parts(terms, a: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i``'s RPN and ROI losses out of the terms (anchors are the first ``a`` columns)."""
    norm = terms.num_positive[i].clamp(min=1.0)
    rpn = (terms.cls[i, :a].sum() + terms.loc[i, :a].sum()) / norm
    roi = (terms.cls[i, a:].sum() + terms.loc[i, a:].sum()) / norm
    return rpn, roi


def test_rpn_part_equals_torchvisions_loss_on_the_same_sample(trained, tiny_train, monkeypatch):
    model = trained[0].eval()
    x, targets = _batch(tiny_train)
    out = model(x)
    matched = match_targets(model, targets)
    terms = multibox_terms(out, matched)
    a = model.num_anchors
    pos, neg = terms.positive[:, :a], terms.hard_negative[:, :a]
    # torchvision's sample sizes: 256 anchors per image, at most half positive; the hardest ones
    assert ((pos | neg).sum(1) == 256).all() and (pos.sum(1) <= 128).all() and (pos.sum(1) > 0).all()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.objectness, (matched.labels > 0).float(),
                                                               reduction="none")
    for i in range(len(targets)):
        rest = (matched.labels[i] == 0) & ~neg[i]
        assert bce[i][neg[i]].min() >= bce[i][rest].max()
    # torchvision's own anchor targets, and its compute_loss on our sample
    rpn = model.net.rpn
    labels, gt = rpn.assign_targets_to_anchors([model.anchors] * len(targets), targets)
    assert torch.equal(torch.stack(labels) > 0, matched.labels > 0)
    assert torch.equal(torch.stack(labels) < 0, matched.labels < 0)
    reg = rpn.box_coder.encode(gt, [model.anchors] * len(targets))
    monkeypatch.setattr(rpn, "fg_bg_sampler", lambda lab: (list(pos), list(neg)))
    obj_loss, box_loss = rpn.compute_loss(out.objectness.reshape(-1, 1), out.rpn_deltas.reshape(-1, 4), labels, reg)
    # every image samples 256 anchors, so the batch mean of ours is torchvision's batch loss
    ours = torch.stack([_parts(terms, a, i)[0] for i in range(len(targets))]).mean()
    torch.testing.assert_close(ours, obj_loss + box_loss, rtol=1e-5, atol=1e-6)


def test_roi_part_equals_fastrcnn_loss_on_the_same_proposals(trained, tiny_train):
    model = trained[0].eval()
    x, targets = _batch(tiny_train)
    out = model(x)
    terms = multibox_terms(out, match_targets(model, targets))
    a, roi = model.num_anchors, model.net.roi_heads
    assert terms.positive[:, a:].any()  # the trained RPN proposes objects
    for i, t in enumerate(targets):
        keep = out.proposal_mask[i]
        props = out.proposals[i][keep]
        # torchvision's own proposal targets (no sampling: every proposal counts)
        idx, labels = roi.assign_targets_to_proposals([props], [t["boxes"]], [t["labels"]])
        reg = roi.box_coder.encode([t["boxes"][idx[0]]], [props])
        k = out.cls_logits.shape[-1]
        cls, box = fastrcnn_loss(out.cls_logits[i][keep], out.box_deltas[i][keep].reshape(-1, k * 4), labels, reg)
        torch.testing.assert_close(_parts(terms, a, i)[1], cls + box, rtol=1e-5, atol=1e-6)
        assert torch.equal(terms.labels[i, a:][keep], labels[0]) and not terms.positive[i, a:][~keep].any()
    # the per-image loss is the four parts, and the reducers split it into its halves
    total = ssd_loss(terms)
    torch.testing.assert_close(total, cls_loss(terms) + loc_loss(terms))
    for i in range(len(targets)):
        torch.testing.assert_close(total[i], sum(_parts(terms, a, i)))


def test_detections_are_torchvisions(tiny_test):
    model = _model()
    x, _ = _batch(tiny_test)
    model.score_thresh = 0.0  # an untrained head scores every class about 1 / 13
    ours = model.detect(x, batch_size=3)
    with torch.no_grad():
        tv = model.net(list(x))
    assert sum(len(d["scores"]) for d in ours) > 0 and not model.training
    for a, b in zip(ours, tv):
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k])
    assert all((d["labels"] >= 1).all() for d in ours)


def test_matching_survives_batch_selection_and_repeat(tiny_train):
    model = _model()
    x, targets = _batch(tiny_train)
    m = match_targets(model, targets)
    assert isinstance(m, RCNNMatched) and isinstance(m[1:3], RCNNMatched) and isinstance(m.repeat(2), RCNNMatched)
    assert m.repeat(2).object_boxes.shape[0] == 8 and torch.equal(m[1:3].object_boxes, m.object_boxes[1:3])
    terms = multibox_terms(model(x[1:3]), m[1:3])
    torch.testing.assert_close(ssd_loss(terms), ssd_loss(multibox_terms(model(x), m))[1:3])
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    me = model.match(empty)
    assert (me.labels == 0).all() and torch.isfinite(ssd_loss(multibox_terms(model(x[:1]), me))).all()
    from advlib.losses import Matched
    with pytest.raises(ValueError, match="model.match"):
        multibox_terms(model(x[:1]), Matched(me.labels, me.object_index, me.box_targets, me.object_labels,
                                             me.num_objects))


def test_training_lowers_the_loss_and_eval_mode_gives_input_gradients(trained, tiny_train):
    x, targets = _batch(tiny_train)
    fresh = _model()
    model, hist = trained
    m = match_targets(model, targets)

    def loss(net, images) -> float:
        with torch.no_grad():
            return float(ssd_loss(multibox_terms(net.eval()(images), m)).mean())

    assert loss(model, x) < 0.5 * loss(fresh, x) and hist[-1]["loss"] < hist[0]["loss"]
    xg = x.clone().requires_grad_(True)
    ssd_loss(multibox_terms(model(xg), m)).sum().backward()
    assert not model.training and xg.grad is not None and xg.grad.abs().sum() > 0
    adv = attack(model, x, targets, preset("A_cls", steps=2, seed=0))
    assert not model.training and (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert loss(model, adv) > loss(model, x)


def test_standard_recipe_trains_faster_rcnn_with_torchvisions_own_loss():
    from advlib.train import StandardRecipe

    torch.manual_seed(0)
    model = build_faster_rcnn("tiny_vgg", 3, 64).train()
    x = torch.rand(2, 3, 64, 64)
    t = [{"boxes": torch.tensor([[4., 4., 40., 44.]]), "labels": torch.tensor([2])}] * 2
    torch.manual_seed(1)
    ours = StandardRecipe()(model, x, t)
    torch.manual_seed(1)  # the same random sampling
    theirs = sum(model.net(list(x), [{"boxes": b["boxes"], "labels": b["labels"]} for b in t]).values())
    torch.testing.assert_close(ours, theirs)
    model.eval()  # attacks and evaluation stay on the deterministic eval-mode terms
    from advlib.losses import match_targets, multibox_terms, ssd_loss

    expected = ssd_loss(multibox_terms(model(x), match_targets(model, t))).mean()
    torch.testing.assert_close(StandardRecipe()(model, x, t), expected)
