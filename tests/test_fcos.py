"""torchvision's FCOS behind our Detector interface, checked against torchvision itself: its own
matching and ``FCOSHead.compute_loss`` (per image and over a batch), its full train-mode forward,
its eval-mode forward's detections, and training through the shared loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlib.attacks import attack, preset
from advlib.data import collate
from advlib.losses import match_targets, multibox_terms, ssd_loss
from advlib.models import ARCHITECTURES, build_detector
from advlib.models.fcos import FCOSDetector, FCOSOutput, build_fcos, fcos_terms

C, SIZE = 12, 64


def _model(seed: int = 0, **kwargs) -> FCOSDetector:
    torch.manual_seed(seed)
    return build_fcos("tiny_vgg", C, SIZE, **kwargs).eval()


def _batch(ds, idx=(0, 1, 2, 3)):
    return collate([ds[i] for i in idx])


def _torchvision_loss(model: FCOSDetector, out: FCOSOutput, targets) -> torch.Tensor:
    """torchvision's own matching (``FCOS.compute_loss``) and ``FCOSHead.compute_loss``, summed."""
    heads = {"cls_logits": out.cls_logits, "bbox_regression": out.box_deltas, "bbox_ctrness": out.centerness}
    tv = model.net.compute_loss(targets, heads, [model.anchors] * len(targets), model.level_sizes)
    assert set(tv) == {"classification", "bbox_regression", "bbox_ctrness"}
    return sum(tv.values())


def test_outputs_anchors_and_registry():
    model = _model()
    x = torch.rand(2, 3, SIZE, SIZE)
    out = model(x)
    assert isinstance(out, FCOSOutput) and out.family == "fcos"
    a = model.num_anchors
    assert out.cls_logits.shape == (2, a, C + 1) and out.box_deltas.shape == (2, a, 4)
    assert out.centerness.shape == (2, a, 1) and (out.box_deltas >= 0).all()
    assert sum(model.level_sizes) == a
    # anchors are the net's own generator's; sizes are half the strides (8, 16, 32, 64 at 64 px)
    from torchvision.models.detection.image_list import ImageList
    feats = list(model.net.backbone(torch.zeros(1, 3, SIZE, SIZE)).values())
    torch.testing.assert_close(model.anchors, model.net.anchor_generator(ImageList(torch.zeros(1, 3, SIZE, SIZE),
                                                                                   [(SIZE, SIZE)]), feats)[0])
    widths = [float(lvl[0, 2] - lvl[0, 0]) for lvl in model.anchors.split(model.level_sizes)]
    assert widths == [4.0, 8.0, 16.0, 32.0]
    assert "fcos" in ARCHITECTURES and isinstance(build_detector("fcos", "tiny_resnet", C, SIZE), FCOSDetector)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    with pytest.raises(ValueError, match="built for"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="head_convs"):
        _model(head_convs=0)
    # decode is torchvision's BoxLinearCoder against the anchors
    boxes = model.decode(out.box_deltas)
    torch.testing.assert_close(boxes[1], model.box_coder.decode(out.box_deltas[1], model.anchors))


def test_attack_loss_in_eval_mode_equals_torchvisions_loss(tiny_train):
    model = _model()
    x, targets = _batch(tiny_train)
    out = model(x)  # eval mode
    assert not model.training
    terms = multibox_terms(out, match_targets(model, targets))
    assert terms.hard_negative.equal(~terms.positive)  # every location counts
    per_image = ssd_loss(terms)  # [B]
    # torchvision normalises by the positives of the whole batch: weighting ours by each image's
    # positives gives its number for any batch
    n = terms.num_positive
    torch.testing.assert_close((per_image * n).sum() / n.sum(), _torchvision_loss(model, out, targets),
                               rtol=1e-5, atol=1e-6)
    # one image: the decomposition is exactly torchvision's loss
    for i in range(2):
        one = model(x[i:i + 1])
        ours = ssd_loss(multibox_terms(one, model.match(targets[i:i + 1])))
        torch.testing.assert_close(ours[0], _torchvision_loss(model, one, targets[i:i + 1]), rtol=1e-5, atol=1e-6)
    # images with equal positive counts (the same image twice): the batch mean is torchvision's
    xx, tt = torch.cat([x[:1], x[:1]]), [targets[0], targets[0]]
    two = model(xx)
    torch.testing.assert_close(ssd_loss(multibox_terms(two, model.match(tt))).mean(), _torchvision_loss(model, two, tt),
                               rtol=1e-5, atol=1e-6)
    # torchvision's full training forward (its transform, anchors, matching, loss), batch norms held
    # in eval so that the features are the same
    model.net.train()
    for m in model.net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    losses = model.net(list(x), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    model.eval()
    torch.testing.assert_close((per_image * n).sum() / n.sum(), sum(losses.values()), rtol=1e-5, atol=1e-6)


def test_match_is_torchvisions_and_spreads_objects_over_levels():
    model = build_fcos("tiny_vgg", C, 128)
    small = torch.tensor([[20.0, 20.0, 32.0, 32.0]])  # 12 px: first map only
    large = torch.tensor([[10.0, 14.0, 110.0, 120.0]])  # 100 px: not on the first map
    t = [{"boxes": torch.cat([small, large]), "labels": torch.tensor([2, 7])}]
    m = model.match(t)
    per_level = [lvl for lvl in m.labels[0].split(model.level_sizes)]
    assert (per_level[0] == 2).sum() >= 1 and all((lvl == 2).sum() == 0 for lvl in per_level[1:])
    assert (per_level[0] == 7).sum() == 0 and sum(int((lvl == 7).sum()) for lvl in per_level[1:]) >= 4
    assert set(m.labels.unique().tolist()) <= {0, 2, 7} and (m.object_index[m.labels == 0] == -1).all()
    # the targets decode back to the matched objects
    pos = m.labels[0] > 0
    boxes = model.box_coder.decode(m.box_targets[0][pos], model.anchors[pos])
    torch.testing.assert_close(boxes, t[0]["boxes"][m.object_index[0][pos]])
    # an image without objects: all background, loss finite
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    me = model.match(empty)
    assert (me.labels == 0).all()
    assert torch.isfinite(ssd_loss(fcos_terms(model.eval()(torch.rand(1, 3, 128, 128)), me))).all()


def test_detections_are_torchvisions(tiny_test):
    model = _model()
    with torch.no_grad():  # column 0 is not a class of ours: keep torchvision's forward from emitting it
        model.net.head.classification_head.cls_logits.bias[0] = -30.0
    x, _ = _batch(tiny_test)
    ours = model.detect(x, batch_size=3)
    with torch.no_grad():
        tv = model.net(list(x))
    assert sum(len(d["scores"]) for d in ours) > 0 and not model.training
    for a, b in zip(ours, tv):
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k])
    assert all((d["labels"] >= 1).all() for d in ours)
    model.score_thresh = 0.9
    assert model.net.score_thresh == 0.9 and sum(len(d["scores"]) for d in model.detect(x)) < sum(
        len(d["scores"]) for d in ours)


def test_training_lowers_the_loss_and_eval_mode_gives_input_gradients(tiny_train):
    from advlib.train import StandardRecipe, TrainConfig, train

    model = _model()
    x, targets = _batch(tiny_train)
    m = match_targets(model, targets)

    def loss(images) -> float:
        with torch.no_grad():
            return float(ssd_loss(multibox_terms(model.eval()(images), m)).mean())

    before = loss(x)
    cfg = TrainConfig(epochs=30, batch_size=4, lr=1e-3, augment=False, warmup_frac=0.0, seed=0)
    hist = train(model, torch.utils.data.Subset(tiny_train, range(4)), StandardRecipe(), cfg, "cpu", None, False)
    trained = loss(x)
    assert trained < 0.5 * before and hist[-1]["loss"] < hist[0]["loss"]
    # gradients wrt the images in eval mode (what an attack uses); the mode is kept
    xg = x.clone().requires_grad_(True)
    ssd_loss(multibox_terms(model(xg), m)).sum().backward()
    assert not model.training and xg.grad is not None and xg.grad.abs().sum() > 0
    adv = attack(model, x, targets, preset("A_cls", steps=2, seed=0))
    assert not model.training and (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert loss(adv) > trained
