"""Streaming evaluation: an ImageSet read batch by batch gives the same fingerprint, detections,
attacks and table cells as the same images stacked in memory."""

from __future__ import annotations

import pytest
import torch

from advlib.attacks import AttackSpec
from advlib.cache import data_fingerprint
from advlib.data import collate
from advlib.imageset import ImageSet, iter_batches
from conftest import make_model

SPEC = AttackSpec("cls", 8 / 255, 2 / 255, 2, random_start=True, seed=1)


def _pair(tiny_test, idx=(0, 2, 3, 5, 6, 7)):
    data = ImageSet(tiny_test, idx)
    x, t = collate([tiny_test[i] for i in idx])
    return data, x, t


def test_imageset_batches_fingerprint_and_targets_equal_the_stacked_set(tiny_test):
    data, x, t = _pair(tiny_test)
    assert len(data) == 6 and data.shape == tuple(x.shape)
    assert data.fingerprint() == data_fingerprint(x, t) == data_fingerprint(data, None)
    assert data.fingerprint() != data_fingerprint(x[:5], t[:5])
    got = list(iter_batches(data, None, 4))
    assert [c for c, _, _ in got] == [0, 1] and [b.shape[0] for _, b, _ in got] == [4, 2]
    assert torch.equal(torch.cat([b for _, b, _ in got]), x)
    assert [tt["image_id"] for _, _, ts in got for tt in ts] == [tt["image_id"] for tt in t] == \
        [tt["image_id"] for tt in data.targets]
    assert [c for c, _, _ in iter_batches(x, t, 4, chunks=[1])] == [1]
    lx, lt = data.head(3).load()
    assert torch.equal(lx, x[:3]) and len(lt) == 3


def test_streamed_attack_table_and_sweep_equal_the_in_memory_ones(tiny_test):
    from advlib.robustness import adversarial_images, attacked_detections, robustness_table
    from advlib.sweeps import sweep

    data, x, t = _pair(tiny_test)
    model = make_model(seed=2).eval()
    torch.testing.assert_close(adversarial_images(model, data, t, SPEC, 4, progress=False),
                               adversarial_images(model, x, t, SPEC, 4, progress=False), rtol=0, atol=0)
    dets, kept = attacked_detections(model, data, t, SPEC, 4, progress=False, keep=5)
    from advlib.cache import round_8bit

    adv = round_8bit(adversarial_images(model, x, t, SPEC, 4, progress=False))
    assert torch.equal(kept, adv[:5])
    from advlib.robustness import detect_all

    ref = detect_all(model, adv, batch_size=4)  # the in-memory route: the whole adversarial set, then detection
    assert len(dets) == len(ref) == 6 and sum(len(d["scores"]) for d in ref) > 0
    for d, r in zip(dets, ref):
        assert torch.equal(d["boxes"], r["boxes"]) and torch.equal(d["scores"], r["scores"])
    attacks = {"clean": None, "A_cls": SPEC}
    a = robustness_table({"m": model}, attacks, data, None, [str(i) for i in range(12)], batch_size=4, progress=False,
                         result_cache=False)
    b = robustness_table({"m": model}, attacks, x, t, [str(i) for i in range(12)], batch_size=4, progress=False,
                         result_cache=False)
    for col in attacks:
        assert a.get("m", col) == pytest.approx(b.get("m", col), abs=1e-9)
    sa = sweep(model, SPEC, data, t, 12, eps=[0.0, 4 / 255], batch_size=4, progress=False, result_cache=False)
    sb = sweep(model, SPEC, x, t, 12, eps=[0.0, 4 / 255], batch_size=4, progress=False, result_cache=False)
    assert sa["map"].tolist() == pytest.approx(sb["map"].tolist(), abs=1e-9)
    # a steps sweep: one attack run's snapshots, detected batch by batch, equal to detecting the whole
    # snapshot sets (the in-memory route)
    from advlib.evaluate import evaluate_voc

    st = sweep(model, SPEC, data, t, 12, steps=[0, 1, 2], batch_size=4, progress=False, result_cache=False)
    snaps = adversarial_images(model, x, t, SPEC, 4, progress=False, snapshots=[1, 2])
    want = [evaluate_voc(detect_all(model, x), t, 12).map] + \
        [evaluate_voc(detect_all(model, round_8bit(snaps[k]), 4), t, 12).map for k in (1, 2)]
    assert st["map"].tolist() == pytest.approx(want, abs=1e-12)


def test_streamed_transfer_set_is_written_batch_by_batch_and_equals_the_in_memory_one(tiny_test, tmp_path):
    from advlib.cache import AdversarialCache
    from advlib.robustness import Transfer, robustness_table

    data, x, t = _pair(tiny_test)
    src, victim = make_model(seed=2).eval(), make_model(seed=3).eval()
    classes = [str(i) for i in range(12)]
    attacks = {"transfer": Transfer("src", SPEC)}
    kw = dict(sources={"src": src}, data_id="tiny", batch_size=4, progress=False, result_cache=False)
    a = robustness_table({"v": victim}, attacks, data, None, classes, cache=AdversarialCache(tmp_path / "s"), **kw)
    b = robustness_table({"v": victim}, attacks, x, t, classes, cache=AdversarialCache(tmp_path / "m"), **kw)
    assert a.get("v", "transfer") == pytest.approx(b.get("v", "transfer"), abs=1e-9)
    (sa,), (sb,) = [[p for p in (tmp_path / r).iterdir() if p.is_dir()] for r in ("s", "m")]
    assert sa.name == sb.name  # one key for both routes
    pngs = sorted(p.name for p in (sa / "JPEGImages").iterdir())
    assert pngs == [f"{i:06d}.png" for i in range(6)] == sorted(p.name for p in (sb / "JPEGImages").iterdir())
    for name in pngs:
        assert (sa / "JPEGImages" / name).read_bytes() == (sb / "JPEGImages" / name).read_bytes()
    # a second streamed table reads the set from disk
    again = robustness_table({"v": victim}, attacks, data, None, classes, cache=AdversarialCache(tmp_path / "s"), **kw)
    assert again.cells[0].cached and again.get("v", "transfer") == a.get("v", "transfer")


def test_real_data_profiles_stream_their_evaluation_split(tiny_voc):
    from advlib.experiment import Experiment

    exp = Experiment(profile="voc", data_root=tiny_voc, image_size=64, device="cpu", progress=False)
    images, targets = exp.eval_data
    assert isinstance(images, ImageSet) and images.shape == (len(targets), 3, 64, 64)
    sub = images[:3]
    assert isinstance(sub, ImageSet) and len(sub) == 3 and torch.equal(images[1], sub.load()[0][1])
    # the smoke profile streams too (CI runs every notebook on the real-data route); the default
    # profile keeps its in-memory tensor
    assert isinstance(Experiment(profile="smoke", data_root=tiny_voc, device="cpu", progress=False).eval_data[0], ImageSet)
    default = Experiment(profile="default", data_root=tiny_voc, image_size=64, device="cpu", progress=False)
    assert isinstance(default.eval_data[0], torch.Tensor)


def test_paper_analyses_give_the_same_numbers_on_a_streamed_set(tiny_test):
    """The analyses the notebooks run on the evaluation split take a streamed set too, with the
    numbers of the stacked tensor (the voc/coco profiles stream; smoke runs them in CI)."""
    from advlib.attacks import fgsm
    from advlib.data import collate
    from advlib.papers import cwat, mtd, rad
    from conftest import make_model

    model = make_model(0).eval()
    stream = ImageSet(tiny_test, range(6))
    x, t = collate([tiny_test[i] for i in range(6)])
    assert mtd.candidate_anchor_metrics(model, stream, stream.targets, batch_size=4) == \
        mtd.candidate_anchor_metrics(model, x, t, batch_size=4)
    a = mtd.task_interaction(model, stream, stream.targets, result_cache=False)
    b = mtd.task_interaction(model, x, t, result_cache=False)
    assert a == b
    assert torch.equal(mtd.gradient_cosines(model, stream, t, batch_size=4, result_cache=False),
                       mtd.gradient_cosines(model, x, t, batch_size=4, result_cache=False))
    spec = fgsm("cls")
    assert cwat.clip_rates(model, stream, t, spec, [1.0, 6.0], batch_size=4).equals(
        cwat.clip_rates(model, x, t, spec, [1.0, 6.0], batch_size=4))
    assert rad.rmse_levels(stream, x) == 0.0
