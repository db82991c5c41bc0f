"""The model cache: keys, atomic writes, corruption detection, no retraining on a hit."""

from __future__ import annotations

import pytest
import torch

from advlib.zoo import CorruptCacheWarning, ModelZoo, spec_key
from conftest import make_model


def test_key_depends_on_every_field_and_not_on_order():
    a = spec_key({"recipe": "std", "seed": 0, "profile": {"epochs": 1}})
    assert a == spec_key({"seed": 0, "profile": {"epochs": 1}, "recipe": "std"})
    assert a != spec_key({"recipe": "std", "seed": 1, "profile": {"epochs": 1}})
    assert a != spec_key({"recipe": "std", "seed": 0, "profile": {"epochs": 2}})


def test_get_trains_once_then_loads(tmp_path):
    zoo = ModelZoo(tmp_path)
    calls = []

    def fit(model, ckpt_dir):
        calls.append(ckpt_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return {"note": "trained"}

    spec = {"recipe": "test", "seed": 0}
    m1, meta1 = zoo.get(spec, lambda: make_model(0), fit)
    m2, meta2 = zoo.get(spec, lambda: make_model(0), fit)
    assert len(calls) == 1 and meta1["note"] == "trained" and meta2["key"] == meta1["key"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not list((tmp_path / meta1["key"]).glob("*.tmp-*"))  # nothing half-written left


def test_corrupt_file_is_detected_and_retrained(tmp_path):
    zoo = ModelZoo(tmp_path)
    spec = {"recipe": "test", "seed": 1}
    calls = []
    zoo.get(spec, lambda: make_model(0), lambda m, d: calls.append(1))
    path = tmp_path / spec_key(spec) / "model.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    path.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning, match="corrupt"):
        zoo.get(spec, lambda: make_model(0), lambda m, d: calls.append(1))
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
