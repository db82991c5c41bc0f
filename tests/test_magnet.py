"""MagNet for detectors: the threshold's false-positive rate by hand, rejected images get no
detections (and lose their objects in mAP), white-box gradients pass through the reformer."""

from __future__ import annotations

import pytest
import torch

from advlib.attacks import attack, preset
from advlib.data import collate
from advlib.evaluate import evaluate_voc
from advlib.models.magnet import AutoEncoder, MagNetDetector, reconstruction_error, rejection_threshold
from advlib.cache import model_fingerprint
from conftest import make_model


def test_threshold_rejects_the_stated_fraction_of_clean_images():
    torch.manual_seed(0)
    ae = AutoEncoder(8)
    x = torch.rand(40, 3, 16, 16)
    err = reconstruction_error(ae, x)
    by_hand = ((ae(x) - x) ** 2).mean(dim=(1, 2, 3)).detach()
    torch.testing.assert_close(err, by_hand)
    thr = rejection_threshold(ae, x, 0.1)
    assert int((err > thr).sum()) == 4  # 10 % of 40 distinct errors lie above the 0.9 quantile
    assert rejection_threshold(ae, x, 0.0) == pytest.approx(float(err.max()))
    with pytest.raises(ValueError):
        rejection_threshold(ae, x, 1.0)


def test_rejected_images_have_no_detections_and_attacks_go_through_the_reformer(tiny_test):
    det = make_model().eval()
    torch.manual_seed(0)
    ae = AutoEncoder(8)
    x, t = collate([tiny_test[i] for i in range(4)])
    err = reconstruction_error(ae, x)
    thr = float(err.sort().values[1])  # rejects the two images with the largest errors
    mag = MagNetDetector(det, ae, thr).eval()
    dets = mag.detect(x)
    rejected = err > thr
    assert torch.equal(mag.last_rejected, rejected) and int(rejected.sum()) == 2
    plain = det.detect(ae(x).detach())
    for d, p, r in zip(dets, plain, rejected.tolist()):
        assert (len(d["scores"]) == 0) if r else torch.equal(d["scores"], p["scores"])
    # in mAP a rejected image misses its objects: evaluating with empty detections there, by hand
    by_hand = [{k: v[:0] for k, v in p.items()} if r else p for p, r in zip(plain, rejected.tolist())]
    assert evaluate_voc(dets, t, 12).map == evaluate_voc(by_hand, t, 12).map
    # white-box: the input gradient passes through the reformer
    adv = attack(mag, x, t, preset("A_cls", steps=2, seed=0))
    assert (adv - x).abs().max() > 0
    assert model_fingerprint(MagNetDetector(det, ae, thr)) != model_fingerprint(MagNetDetector(det, ae, thr * 2))
