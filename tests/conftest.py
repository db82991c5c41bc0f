"""Shared fixtures: a tiny generated dataset and tiny detectors (CPU, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)  # tiny tensors: one thread is faster and deterministic


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    """24 train + 8 test generated images at 64 px in VOC layout."""
    from advlib.data.synthetic import SyntheticConfig, generate_voc

    root = tmp_path_factory.mktemp("tiny") / "shapes"
    generate_voc(root, seed=0, config=SyntheticConfig(n_trainval=24, n_test=8, image_size=64), progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_train(tiny_voc):
    from advlib.data import VOCDataset

    return VOCDataset(tiny_voc, "trainval", size=64, cache_images=True)


@pytest.fixture(scope="session")
def tiny_test(tiny_voc):
    from advlib.data import VOCDataset

    return VOCDataset(tiny_voc, "test", size=64, cache_images=True)


def make_model(seed: int = 0, num_classes: int = 12, size: int = 64):
    from advlib.models import build_ssd

    torch.manual_seed(seed)
    return build_ssd("tiny_vgg", num_classes, size)


@pytest.fixture(autouse=True)
def _no_project_result_cache(monkeypatch):
    """Unit tests never read or write the project's result cache (tests that exercise it pass a
    ``ResultCache(tmp_path, enabled=True)``)."""
    monkeypatch.setenv("ADVLIB_NO_RESULT_CACHE", "1")
