"""Profiles and notebook parameter validation."""

from __future__ import annotations

import pytest
import torch

from advlib.profiles import PROFILES, get_profile, resolve_device, validate_params


def test_profiles_exist_and_are_frozen():
    assert set(PROFILES) >= {"smoke", "default", "voc", "coco"}
    with pytest.raises(Exception):
        PROFILES["default"].image_size = 3


def test_overrides_and_errors():
    prof = get_profile("smoke", epochs=1, eval_images=8)
    assert prof.train.epochs == 1 and prof.eval_images == 8  # schedule fields go to profile.train
    assert PROFILES["smoke"].train.epochs == 3  # the registered profile is untouched
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile("smoke", epoch=1)
    with pytest.raises(ValueError, match="expects a number"):
        get_profile("smoke", epochs="many")


def test_validate_params(tmp_path):
    p = validate_params("smoke", classes="a, b,c", device="cpu", seed=2)
    assert p.classes == ("a", "b", "c") and p.device == torch.device("cpu") and p.seed == 2
    assert p.data_root.name == "shapes-smoke"
    with pytest.raises(ValueError, match="data_format"):
        validate_params("smoke", data_format="yolo")
    with pytest.raises(ValueError, match="seed"):
        validate_params("smoke", seed=-1)
    with pytest.raises(ValueError, match="unique"):
        validate_params("smoke", classes=["a", "a"])
    with pytest.raises(ValueError, match="needs data_root"):
        validate_params("voc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_params("smoke", data_root=tmp_path / "missing")
    coco = validate_params("coco", data_root=tmp_path, data_format="coco")
    assert coco.profile.train_split is None and coco.user_data  # detected from the data
    mine = validate_params("default", data_root=tmp_path, train_split="train", test_split="val", year=2012,
                           image_size=96)
    assert (mine.profile.train_split, mine.profile.test_split, mine.year) == ("train", "val", "2012")
    assert mine.profile.image_size == 96 and mine.profile.data_format == "voc"
    with pytest.raises(ValueError, match="image_size"):
        validate_params("smoke", image_size=16)
    with pytest.raises(ValueError, match="train_split"):
        validate_params("smoke", train_split="")
    with pytest.raises(ValueError, match="year"):
        validate_params("smoke", year="VOC2012")
    with pytest.raises(ValueError, match="case-insensitively"):
        validate_params("smoke", classes="Cat,cat")


def test_device():
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_budgets_are_validated_and_the_default_one_has_three_seeds():
    from advlib.profiles import BUDGETS, Budget, get_budget

    assert len(BUDGETS["default"].seeds) == 3 and BUDGETS["default"].recipe_epochs == 2
    assert get_budget(get_profile("smoke")) is BUDGETS["smoke"]
    ok = dict(table_images=8, sweep_images=8, dag_steps=3, seeds=(0,))
    with pytest.raises(ValueError, match="table_images"):
        Budget(**{**ok, "table_images": 0})
    with pytest.raises(ValueError, match="seeds"):
        Budget(**{**ok, "seeds": ()})
    with pytest.raises(ValueError, match="recipe_epochs"):
        Budget(**ok, recipe_epochs=0)


def test_finetune_config_overrides_only_the_epochs(tiny_voc):
    from advlib.experiment import Experiment
    from advlib.train import TrainConfig

    exp = Experiment("smoke", data_root=tiny_voc, progress=False, zoo_root=tiny_voc / "zoo")
    base = TrainConfig.from_profile(exp.profile, seed=0, finetune=True)
    assert exp.finetune_config() == base
    # the fine-tuning schedule is the STD schedule with the profile's fine-tuning epochs and lr
    std = exp.profile.train
    assert (base.epochs, base.lr, base.warmup_frac) == (exp.profile.finetune_epochs, exp.profile.finetune_lr, 0.0)
    assert (base.optimizer, base.batch_size, base.weight_decay) == (std.optimizer, std.batch_size, std.weight_decay)
    two = exp.finetune_config(2, seed=5)
    assert two.epochs == 2 and two.seed == 5 and two.lr == base.lr
    with pytest.raises(ValueError, match="epochs"):
        exp.finetune_config(0)
