"""Profiles and notebook parameter validation."""

from __future__ import annotations

import pytest
import torch

from advlib.profiles import PROFILES, get_profile, resolve_device, validate_params


def test_profiles_exist_and_are_frozen():
    assert set(PROFILES) >= {"smoke", "default", "voc", "coco"}
    with pytest.raises(Exception):
        PROFILES["default"].epochs = 3


def test_overrides_and_errors():
    assert get_profile("smoke", epochs=1).epochs == 1
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
    assert coco.profile.train_split == "train2017"


def test_device():
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
