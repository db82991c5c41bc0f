"""The caches: keys, atomic writes, locks, corruption and malformed entries, unwritable
directories, and the 8-bit rounding rule."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import threading
import time
import warnings

import pytest
import torch
from torch import nn

from advlib.attacks import pgd
from advlib.attacks.engine import project
from advlib.cache import (AdversarialCache, CacheNotWritableWarning, CorruptCacheWarning, ModelCache, ResultCache,
                          data_fingerprint, hash_json, round_8bit, spec_key)
from conftest import make_model


def test_key_depends_on_every_field_and_not_on_order():
    a = spec_key({"recipe": "std", "seed": 0, "profile": {"epochs": 1}})
    assert a == spec_key({"seed": 0, "profile": {"epochs": 1}, "recipe": "std"})
    assert a != spec_key({"recipe": "std", "seed": 1, "profile": {"epochs": 1}})
    assert a != spec_key({"recipe": "std", "seed": 0, "profile": {"epochs": 2}})


def test_get_trains_once_then_loads(tmp_path):
    cache = ModelCache(tmp_path)
    calls = []

    def fit(model, ckpt_dir):
        calls.append(ckpt_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return {"note": "trained"}

    spec = {"recipe": "test", "seed": 0}
    m1, meta1 = cache.get(spec, lambda: make_model(0), fit)
    m2, meta2 = cache.get(spec, lambda: make_model(0), fit)
    assert len(calls) == 1 and meta1["note"] == "trained" and meta2["key"] == meta1["key"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not list((tmp_path / meta1["key"]).glob("*.tmp-*"))  # nothing half-written left


def test_corrupt_file_is_detected_and_retrained(tmp_path):
    cache = ModelCache(tmp_path)
    spec = {"recipe": "test", "seed": 1}
    calls = []
    cache.get(spec, lambda: make_model(0), lambda m, d: calls.append(1))
    path = tmp_path / spec_key(spec) / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    path.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning, match="corrupt"):
        cache.get(spec, lambda: make_model(0), lambda m, d: calls.append(1))
    assert len(calls) == 2


def test_dataset_identity_is_part_of_the_model_key(tiny_voc, tmp_path):
    from advlib.experiment import Experiment
    from advlib.train import StandardRecipe, TrainConfig

    def key(**kw):
        exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", zoo_root=tmp_path, progress=False, **kw)
        return spec_key(exp.model_spec(StandardRecipe(), TrainConfig(epochs=1), "tiny_vgg", 0, None))

    base = key()
    assert base == key()  # stable
    names = ("circle", "square", "triangle", "star", "plus", "ring", "diamond", "hexagon", "crescent",
             "arrow", "heart", "frame")
    assert key(classes=",".join(reversed(names))) != base  # same data, other class list


# ------------------------------------------------------------------ keys
def _sha(obj, n: int) -> str:
    """Today's key formula, written out by hand."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def test_keys_are_byte_identical_to_the_hand_written_formula():
    from pathlib import Path

    spec = {"recipe": {"recipe": "std", "reducer": "multibox"}, "seed": 3, "train": {"lr": 0.003, "milestones": [0.5]},
            "parent": None, "dataset": {"root": Path("/data/voc"), "classes": ["a", "b"]}}
    assert spec_key(spec) == _sha({**spec, "code_version": "1"}, 20)
    parts = {"kind": "robustness_cell", "model": "abc", "source": None, "spec": pgd("cls").to_dict(), "data": "fp",
             "use_07": True}
    assert ResultCache.key(**parts) == _sha({**parts, "results_version": "2"}, 24)
    assert hash_json({"b": 1, "a": [1.5, None]}, 7) == _sha({"a": [1.5, None], "b": 1}, 7)
    # the transfer-set key gains the clean set's fingerprint (and nothing else changes)
    src = nn.Linear(2, 2)
    src.zoo_key = "modelkey123"
    key = AdversarialCache().key(src, pgd("cls"), "voc07-test", "pixfp")
    assert key == _sha({"model": "modelkey123", "spec": pgd("cls").to_dict(), "data": "voc07-test",
                        "pixels": "pixfp"}, 20)
    with pytest.raises(ValueError, match="65"):
        hash_json({}, 65)


def test_data_fingerprint_is_unchanged():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 4, 5), generator=g).float() / 255
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([3])}] * 2
    h = hashlib.sha256()
    u8 = (images * 255).round().to(torch.uint8).numpy()
    h.update(b"(2, 3, 4, 5)")
    h.update(u8.tobytes())
    for t in targets:
        h.update(b"boxes"); h.update(t["boxes"].numpy().tobytes())
        h.update(b"labels"); h.update(t["labels"].numpy().tobytes())
    assert data_fingerprint(images, targets) == h.hexdigest()[:20]


# ------------------------------------------------------------------ locks
def _train_in_process(root: str, counter: str, out: str, barrier) -> None:
    from advlib.cache import ModelCache

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(2, 2)

    def fit(model: nn.Module, ckpt_dir) -> dict:
        with open(counter, "a") as f:
            f.write("trained\n")
        time.sleep(1.5)
        with torch.no_grad():
            model.weight.fill_(float(os.getpid()))  # two trainings would give two different models
        return {"pid": os.getpid()}

    barrier.wait()
    model, meta = ModelCache(root).get({"recipe": "lock-test"}, build, fit)
    torch.save({"weight": model.weight.detach().clone(), "pid": meta["pid"]}, out)


def test_two_processes_train_a_key_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "calls.txt"
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    procs = [ctx.Process(target=_train_in_process, args=(str(tmp_path / "cache"), str(counter), str(o), barrier))
             for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.read_text().splitlines() == ["trained"]
    a, b = (torch.load(o, weights_only=True) for o in outs)
    assert a["pid"] == b["pid"] and torch.equal(a["weight"], b["weight"])
    assert torch.equal(a["weight"], torch.full((2, 2), float(a["pid"])))


def test_two_threads_craft_an_adversarial_set_once(tmp_path):
    cache = AdversarialCache(tmp_path)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 6.0, 6.0]]), "labels": torch.tensor([1])}] * 2
    calls, results = [], []

    def craft():
        calls.append(1)
        time.sleep(0.5)
        return images

    def run():
        results.append(cache.get_or_create("k", craft, targets, ["c1"], pgd("cls"), {}))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True]
    expected = (images * 255).round() / 255
    assert all(torch.allclose(x, expected, atol=1e-7) for x, _ in results)


# ------------------------------------------------------------------ malformed entries
def test_malformed_results_are_recomputed_with_a_warning(tmp_path):
    rc = ResultCache(tmp_path, enabled=True)

    def valid(v):
        return isinstance(v, dict) and isinstance(v.get("map"), float)

    assert rc.cached(lambda: {"map": 0.25}, validate=valid, a=1) == {"map": 0.25}
    assert rc.cached(lambda: {"map": 0.75}, validate=valid, a=1) == {"map": 0.25} and rc.hits == 1
    (path,) = tmp_path.glob("*.json")
    for bad in ('{"value": "garbage"}', '{"value": {"map": "x"}}', '{"parts": {}}', "[1, 2]"):
        path.write_text(bad)
        with pytest.warns(CorruptCacheWarning, match="recomputing"):
            assert rc.cached(lambda: {"map": 0.5}, validate=valid, a=1) == {"map": 0.5}
    assert json.loads(path.read_text())["value"] == {"map": 0.5}  # the rewritten entry is good again
    path.write_text('{"parts": {}}')
    with pytest.warns(CorruptCacheWarning, match="value"):  # no validator: `value` must still exist
        assert rc.get(ResultCache.key(a=1)) is None


# ------------------------------------------------------------------ unwritable directories
def _unwritable(tmp_path):
    """A cache root below a regular file: every mkdir and write there fails (also as root)."""
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "cache"


def test_unwritable_result_cache_computes_and_warns_once(tmp_path):
    rc = ResultCache(_unwritable(tmp_path), enabled=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert rc.cached(lambda: {"x": 1.5}, a=1) == {"x": 1.5}
        assert rc.cached(lambda: {"x": 2.5}, a=2) == {"x": 2.5}
    msgs = [str(w.message) for w in caught if issubclass(w.category, CacheNotWritableWarning)]
    assert len(msgs) == 1 and "not writable" in msgs[0] and "results are not cached" in msgs[0]


def test_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    import advlib.cache as cache_mod

    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(cache_mod.os, "replace", denied)
    rc = ResultCache(tmp_path / "results", enabled=True)
    with pytest.warns(CacheNotWritableWarning):
        assert rc.cached(lambda: [1, 2], a=1) == [1, 2]
    assert list((tmp_path / "results").iterdir()) == []  # the temporary file was removed


def test_unwritable_model_and_adversarial_caches_return_their_values(tmp_path):
    root = _unwritable(tmp_path)
    spec = {"recipe": "test", "seed": 5}

    def fit(model, ckpt_dir):
        with torch.no_grad():
            model.weight.fill_(2.0)
        return {"note": "trained"}

    with pytest.warns(CacheNotWritableWarning, match="models are not cached"):
        model, meta = ModelCache(root).get(spec, lambda: nn.Linear(2, 2), fit)
    assert torch.equal(model.weight, torch.full((2, 2), 2.0)) and meta["note"] == "trained"
    assert meta["key"] == spec_key(spec) and not ModelCache(root).has(spec)
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 6.0, 6.0]]), "labels": torch.tensor([1])}] * 2
    with pytest.warns(CacheNotWritableWarning, match="adversarial sets are not cached"):
        out = AdversarialCache(root / "adv").save("k", images, targets, ["c1"], pgd("cls"), {})
    assert torch.allclose(out, (images * 255).round() / 255, atol=1e-7)


# ------------------------------------------------------------------ the 8-bit rule
def test_rounding_keeps_a_projected_image_in_the_eps_ball():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=g).float() / 255  # clean images are 8-bit
    sign = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
    for eps_levels in (2, 8, 16):
        eps = eps_levels / 255
        at_eps = project(x + sign * eps, x, eps)  # exactly ±ε (clipped to [0, 1])
        beyond = project(x + sign * (eps + 0.4 / 255) + 0.3 / 255 * torch.rand(x.shape, generator=g), x, eps)
        for x_adv in (at_eps, beyond):
            r = round_8bit(x_adv)
            levels = r * 255
            assert (levels - levels.round()).abs().max() < 1e-4  # exactly k / 255
            assert (levels.round() - (x * 255).round()).abs().max() <= eps_levels  # inside the ball, in levels
            assert (r - x).abs().max() <= eps + 1e-6 and r.min() >= 0 and r.max() <= 1
    # an ε that is not a whole number of levels: at most half a level outside
    eps = 8.6 / 255
    r = round_8bit(project(x + sign * eps, x, eps))
    assert (r - x).abs().max() <= eps + 0.5 / 255 + 1e-6


def test_training_subset_is_fixed_in_the_key_and_trained_on(tiny_voc, tmp_path):
    """A subset model has its own key (whole-split keys unchanged), the subset is the same for
    every seed and call, and training sees exactly its images (iterations per epoch by hand)."""
    from advlib.experiment import Experiment
    from advlib.train import StandardRecipe, TrainConfig

    exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", zoo_root=tmp_path, progress=False)
    n_split = len(exp.train_set)  # 24
    whole = spec_key(exp.model_spec(StandardRecipe(), TrainConfig(epochs=1), "tiny_vgg", 0, None))
    sub = spec_key(exp.model_spec(StandardRecipe(), TrainConfig(epochs=1), "tiny_vgg", 0, None, 10))
    assert sub != whole
    a, b = exp.train_subset(10), exp.train_subset(10)
    assert list(a.indices) == list(b.indices) and len(set(a.indices)) == 10
    assert all(0 <= i < n_split for i in a.indices) and list(a.indices) == sorted(a.indices)
    assert exp.train_subset(None) is exp.train_set
    with pytest.raises(ValueError, match=f"train_images=25 .* {n_split} images"):
        exp.train_subset(25)
    cfg = TrainConfig(epochs=1, batch_size=4, augment=False)
    tm = exp.trained("std", cfg=cfg, train_images=10)
    assert tm.meta["spec"]["train_subset"]["images"] == 10
    assert sum(h["iterations"] for h in tm.meta["history"]) == 10 // 4  # full batches of the 10 images (not 24 // 4)
    full = exp.trained("std", cfg=cfg, train_images=n_split)  # the whole split: the whole-split model
    assert "train_subset" not in full.meta["spec"] and full.key != tm.key


def test_a_saved_adversarial_set_is_an_ordinary_voc_dataset(tmp_path):
    """RAD's AOCO path: a set saved by the adversarial cache reads back through build_dataset (VOC
    layout, PNG) with the same 8-bit pixels, boxes, labels and classes."""
    from advlib.data import build_dataset, collate

    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 32, 32, generator=g)
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [10.0, 12.0, 30.0, 31.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[5.0, 5.0, 15.0, 15.0]]), "labels": torch.tensor([1])}]
    cache = AdversarialCache(tmp_path)
    saved = cache.save("k", images, targets, ["circle", "square"], pgd("cls"), {})
    ds = build_dataset(cache.path("k"), "voc", "test", size=(32, 32))
    assert list(ds.classes) == ["circle", "square"] and len(ds) == 3
    x, t = collate([ds[i] for i in range(len(ds))])
    assert torch.equal((x * 255).round(), (saved * 255).round())  # the same 8-bit levels
    assert torch.equal(x, cache.load("k"))
    for got, want in zip(t, targets):
        assert torch.equal(got["labels"], want["labels"])
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=1.0, rtol=0)  # VOC stores whole pixels
