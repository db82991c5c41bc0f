"""Detector shapes, anchors, normalisation inside the model, decode/detect."""

from __future__ import annotations

import pytest
import torch

from advlib.models import build_ssd, count_parameters
from conftest import make_model


def test_dense_output_shapes_and_anchor_count():
    m = make_model(size=64).eval()
    out = m(torch.rand(2, 3, 64, 64))
    # 64 px: maps 8², 4², 2², 1², 4 anchors per location
    a = 4 * (64 + 16 + 4 + 1)
    assert m.anchors.shape == (a, 4)
    assert out.cls_logits.shape == (2, a, 13) and out.box_deltas.shape == (2, a, 4)


def test_default_profile_model_has_1360_anchors():
    m = build_ssd("tiny_vgg", 12, 128)
    assert m.anchors.shape[0] == 16 * 16 * 4 + 8 * 8 * 4 + 4 * 4 * 4 + 2 * 2 * 4 == 1360
    # anchors are xyxy in input pixels; the first is centred on the first cell (stride 8)
    cx = (m.anchors[0, 0] + m.anchors[0, 2]) / 2
    assert cx.item() == pytest.approx(4.0)


def test_normalisation_is_inside_the_model():
    m = make_model().eval()
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = m.backbone(((x - mean) / std).contiguous(memory_format=torch.channels_last))
    ref = m.head(feats)["cls_logits"]
    assert torch.allclose(m(x).cls_logits, ref, atol=1e-5)


def test_decode_of_zero_deltas_is_the_anchor():
    m = make_model()
    boxes = m.decode(torch.zeros(1, m.num_anchors, 4))
    assert torch.allclose(boxes[0], m.anchors, atol=1e-4)


def test_detect_returns_valid_detections_and_restores_mode():
    m = make_model().train()
    dets = m.detect(torch.rand(3, 3, 64, 64))
    assert m.training
    assert len(dets) == 3
    for d in dets:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= m.detections_per_img
        assert ((d["labels"] >= 1) & (d["labels"] <= 12)).all()
        assert (d["scores"] > m.score_thresh).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 64).all()


def test_bad_inputs_raise():
    m = make_model()
    with pytest.raises(ValueError, match="built for"):
        m(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_ssd("alexnet", 3, 64)


@pytest.mark.parametrize("backbone", ["tiny_resnet"])
def test_second_small_backbone(backbone):
    m = build_ssd(backbone, 5, 64).eval()
    assert count_parameters(m) > 1e5
    assert m(torch.rand(1, 3, 64, 64)).cls_logits.shape[-1] == 6


@pytest.mark.slow
@pytest.mark.parametrize("backbone,maps", [("vgg16", 6), ("resnet50", 6)])
def test_paper_backbones_build_at_300(backbone, maps):
    m = build_ssd(backbone, 20, 300)
    assert len(m.backbone.out_channels) == maps
    # SSD300 VGG16 has 8732 default boxes
    if backbone == "vgg16":
        assert m.num_anchors == 8732


def test_missing_imagenet_weights_say_what_to_download_and_where(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torch
    from torchvision.models import vgg16

    from advlib.models.backbones import imagenet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "th" / "hub"))  # undone after the test

    def offline(*a, **k):
        raise URLError("no route to host")

    from torchvision.models import _api

    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", offline)  # never download in a test
    with pytest.raises(RuntimeError) as err:
        imagenet(vgg16, "VGG16_Weights.IMAGENET1K_FEATURES")
    msg = str(err.value)
    assert "https://download.pytorch.org/models/vgg16_features-amdegroot-88682ab5.pth" in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "vgg16_features-amdegroot-88682ab5.pth") in msg
    assert "no route to host" in msg and str(tmp_path / "th") in msg
