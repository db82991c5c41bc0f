"""torchvision's RetinaNet behind our Detector interface, checked against torchvision itself: its
training loss (its own matcher and ``compute_loss``, and its full train-mode forward), its own
eval-mode forward's detections through evaluate_voc, and a hand-made ignore zone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advlib.attacks import attack, preset
from advlib.data import collate
from advlib.evaluate import evaluate_voc
from advlib.losses import batched_box_iou, match_targets, multibox_terms, ssd_loss
from advlib.models import ARCHITECTURES, RetinaNetDetector, build_detector, build_retinanet
from advlib.models.retinanet import FocalOutput

C, SIZE = 12, 64


def _model(seed: int = 0) -> RetinaNetDetector:
    torch.manual_seed(seed)
    return build_retinanet("tiny_vgg", C, SIZE).eval()


def _batch(ds, n: int = 4):
    return collate([ds[i] for i in range(n)])


def test_outputs_anchors_and_registry():
    model = _model()
    x = torch.rand(2, 3, SIZE, SIZE)
    out = model(x)
    assert isinstance(out, FocalOutput) and out.family == "focal"
    assert out.cls_logits.shape == (2, model.num_anchors, C + 1) and out.box_deltas.shape == (2, model.num_anchors, 4)
    assert sum(model.level_sizes) == model.num_anchors
    # anchors: the net's own generator on a [1, 3, H, W] image list gives the same boxes
    from torchvision.models.detection.image_list import ImageList
    feats = list(model.net.backbone(torch.zeros(1, 3, SIZE, SIZE)).values())
    torch.testing.assert_close(model.anchors, model.net.anchor_generator(ImageList(torch.zeros(1, 3, SIZE, SIZE),
                                                                                   [(SIZE, SIZE)]), feats)[0])
    assert "retinanet" in ARCHITECTURES and isinstance(build_detector("retinanet", "tiny_resnet", C, SIZE),
                                                       RetinaNetDetector)
    # batch norms of our backbone train (torchvision's detection backbones freeze them)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in model.modules())
    with pytest.raises(ValueError, match="built for"):
        model(torch.rand(1, 3, 32, 32))


def test_attack_loss_in_eval_mode_equals_torchvisions_training_loss(tiny_train):
    model = _model()
    x, targets = _batch(tiny_train)
    out = model(x)  # eval mode
    assert not model.training
    ours = ssd_loss(multibox_terms(out, match_targets(model, targets))).mean()
    # torchvision's own matcher and compute_loss on the same head outputs
    tv = model.net.compute_loss(targets, {"cls_logits": out.cls_logits, "bbox_regression": out.box_deltas},
                                [model.anchors] * len(targets))
    torch.testing.assert_close(ours, tv["classification"] + tv["bbox_regression"], rtol=1e-5, atol=1e-6)
    # torchvision's full training forward (its transform, anchors, matcher, loss), batch norms held
    # in eval so that the features are the same: the transform must neither resize nor pad
    model.net.train()
    for m in model.net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    losses = model.net(list(x), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    model.eval()
    torch.testing.assert_close(ours, losses["classification"] + losses["bbox_regression"], rtol=1e-5, atol=1e-6)


def test_match_ignores_the_zone_between_04_and_05_by_hand():
    model = _model()
    a = model.anchors
    # a box that is one anchor grown so that its IoU with that anchor is 0.45 (area ratio)
    k = int(torch.nonzero((a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= SIZE) & (a[:, 3] <= SIZE))[0])  # inside
    x1, y1, x2, y2 = a[k].tolist()
    w, h = x2 - x1, y2 - y1
    box = torch.tensor([[x1, y1, x1 + w, y1 + h / 0.45]])  # same width, taller: IoU = 0.45 with anchor k
    t = [{"boxes": box, "labels": torch.tensor([3])}]
    m = model.match(t)
    iou = batched_box_iou(box[None], a)[0, 0]  # [A], by our own IoU
    assert abs(float(iou[k]) - 0.45) < 1e-4
    best = float(iou.max())
    pos = (iou >= 0.5) | (iou == best)
    ignored = (iou >= 0.4) & (iou < 0.5) & ~pos
    assert torch.equal(m.labels[0] == 3, pos) and torch.equal(m.labels[0] == -1, ignored)
    assert torch.equal(m.labels[0] == 0, ~pos & ~ignored)
    # an ignored anchor contributes nothing to the terms, a background one does
    terms = multibox_terms(model(torch.rand(1, 3, SIZE, SIZE)), m)
    assert (terms.cls[0][ignored] == 0).all() and (terms.cls[0][~pos & ~ignored] > 0).all()
    assert torch.equal(terms.hard_negative[0], ~pos & ~ignored)


def test_detections_are_torchvisions_and_give_the_same_voc_map(tiny_test):
    model = _model()
    with torch.no_grad():  # column 0 is not a class of ours: keep torchvision's forward from emitting it
        model.net.head.classification_head.cls_logits.bias.view(-1, C + 1)[:, 0] = -30.0
    model.score_thresh = 0.009  # an untrained head scores about 0.01 (prior probability)
    x, targets = _batch(tiny_test, 4)
    ours = model.detect(x)
    with torch.no_grad():
        tv = model.net(list(x))
    assert sum(len(d["scores"]) for d in ours) > 0
    for a, b in zip(ours, tv):
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[k], b[k])
    assert all((d["labels"] >= 1).all() for d in ours)
    assert evaluate_voc(ours, targets, C).map == evaluate_voc(tv, targets, C).map


def test_training_and_attacks_run_through_the_shared_loop_and_engine(tiny_train):
    from advlib.train import StandardRecipe, TrainConfig, train

    model = _model()
    x, targets = _batch(tiny_train)
    m = match_targets(model, targets)

    def loss(images) -> float:
        with torch.no_grad():
            return float(ssd_loss(multibox_terms(model.eval()(images), m)).mean())

    before = loss(x)
    cfg = TrainConfig(epochs=20, batch_size=4, lr=1e-3, augment=False, warmup_frac=0.0, seed=0)
    train(model, torch.utils.data.Subset(tiny_train, range(4)), StandardRecipe(), cfg, "cpu", None, False)
    trained = loss(x)
    assert trained < 0.9 * before
    adv = attack(model, x, targets, preset("A_cls", steps=3, seed=0))
    assert not model.training and (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert loss(adv) > trained + 0.01


def test_experiment_trains_and_caches_either_family_by_name(tiny_voc, tmp_path):
    """``arch`` enters the model key only when it is not the SSD (every SSD key is unchanged), and
    the zoo trains, caches and reloads a RetinaNet like an SSD."""
    from advlib.cache import spec_key
    from advlib.experiment import Experiment
    from advlib.models import SSDDetector
    from advlib.train import StandardRecipe, TrainConfig

    exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", zoo_root=tmp_path, progress=False)
    args = (StandardRecipe(), TrainConfig(epochs=1), "tiny_vgg", 0, None)
    ssd_spec = exp.model_spec(*args)
    assert "arch" not in ssd_spec and exp.model_spec(*args, arch="ssd") == ssd_spec
    assert exp.model_spec(*args, arch="retinanet")["arch"] == "retinanet"
    assert spec_key(exp.model_spec(*args, arch="retinanet")) != spec_key(ssd_spec)
    assert isinstance(exp.build(arch="ssd"), SSDDetector) and isinstance(exp.build(arch="retinanet"), RetinaNetDetector)
    with pytest.raises(ValueError, match="unknown detector architecture 'yolo'"):
        exp.build(arch="yolo")
    cfg = TrainConfig(epochs=1, batch_size=4, augment=False)
    tm = exp.trained("std", cfg=cfg, arch="retinanet", train_images=8)
    again = exp.trained("std", cfg=cfg, arch="retinanet", train_images=8)
    assert isinstance(again.model, RetinaNetDetector) and again.key == tm.key
    for k, v in tm.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v)
    side = exp.profile.image_size
    assert len(again.model.detect(torch.rand(2, 3, side, side))) == 2


def test_dag_and_cwa_run_on_retinanet_with_ignored_anchors(tiny_train):
    """DAG scores RetinaNet's targets by their own sigmoid and skips ignored anchors (label -1)."""
    from advlib.attacks.objectives import DAGObjective

    model = _model()
    x, targets = _batch(tiny_train)
    assert (match_targets(model, targets).labels < 0).any()  # the batch has ignored anchors
    for name in ("DAG", "CWA"):
        adv = attack(model, x, targets, preset(name, steps=2, seed=0))
        assert adv.shape == x.shape and (adv - x).abs().max() <= 8 / 255 + 1e-6
    dag = DAGObjective(stop_prob=0.5)
    state = dag.prepare(model, x, targets)
    out = model(x)
    want = state.targets & (torch.sigmoid(out.cls_logits.gather(-1, state.true[..., None]).squeeze(-1)) >= 0.5)
    assert torch.equal(dag._active(out, state), want)


def test_head_depth_is_a_parameter():
    from advlib.models.backbones import build_backbone

    m = RetinaNetDetector(build_backbone("tiny_vgg"), C, (SIZE, SIZE), head_convs=1)
    assert len(m.net.head.classification_head.conv) == 1 and len(m.net.head.regression_head.conv) == 1
    assert len(_model().net.head.classification_head.conv) == 4  # torchvision's default
    assert m.eval()(torch.rand(1, 3, SIZE, SIZE)).cls_logits.shape[-1] == C + 1
    with pytest.raises(ValueError, match="head_convs"):
        RetinaNetDetector(build_backbone("tiny_vgg"), C, (SIZE, SIZE), head_convs=0)
