"""Adversarial training recipes (MTD's CLS/LOC/CON/MTD)."""

from __future__ import annotations

import pytest
import torch

from advlib.attacks import attack
from advlib.losses import match_anchors, multibox_terms, ssd_loss
from advlib.papers.mtd import mtd_attack_spec
from advlib.recipes import AdversarialRecipe, make_recipe
from advlib.train import StandardRecipe, TrainConfig, train
from advlib.cache import spec_key
from conftest import make_model


@pytest.fixture(scope="module")
def batch(tiny_train):
    from advlib.data import collate

    return collate([tiny_train[i] for i in range(4)])


def test_recipes_by_name_and_keys_differ():
    assert isinstance(make_recipe("std"), StandardRecipe)
    keys = {spec_key(make_recipe(n).spec()) for n in ("std", "cls", "loc", "con", "mtd")}
    assert len(keys) == 5
    assert make_recipe("cls").spec()["attack"]["objective"] == "cls"
    assert make_recipe("con").spec()["attack"]["objective"] == "multibox"
    with pytest.raises(ValueError, match="unknown recipe"):
        make_recipe("trades")


def test_mtd_spec_is_algorithm_1():
    s = mtd_attack_spec()
    # random start in the eps-ball, then one signed step of size eps in each task domain
    assert s.objective == "mda" and s.random_start and s.steps == 1 and s.step_size == pytest.approx(8 / 255)
    assert mtd_attack_spec(steps=10).step_size == pytest.approx(2 / 255)


def test_mtd_example_is_the_larger_loss_per_image(batch):
    x, targets = batch
    model = make_model(seed=5).eval()
    spec = mtd_attack_spec()
    picked = attack(model, x, targets, spec)
    x_cls = attack(model, x, targets, spec.replace(objective="cls"))
    x_loc = attack(model, x, targets, spec.replace(objective="loc"))
    m = match_anchors(model.anchors, targets, model.box_coder)
    with torch.no_grad():
        l_cls = ssd_loss(multibox_terms(model(x_cls), m))
        l_loc = ssd_loss(multibox_terms(model(x_loc), m))
    for i in range(x.shape[0]):
        expected = x_cls[i] if l_cls[i] >= l_loc[i] else x_loc[i]
        assert torch.equal(picked[i], expected)


def test_adversarial_recipe_trains_and_keeps_train_mode(tiny_train, batch):
    x, targets = batch
    model = make_model(seed=6).train()
    recipe = make_recipe("mtd")
    loss = recipe(model, x, targets)
    assert torch.isfinite(loss) and model.training
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, tiny_train, make_recipe("cls"), TrainConfig(epochs=1, batch_size=8), progress=False)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_adversarial_examples_are_harder_than_clean(batch):
    x, targets = batch
    model = make_model(seed=7).eval()
    m = match_anchors(model.anchors, targets, model.box_coder)
    adv = attack(model, x, targets, make_recipe("con").attack_spec)
    with torch.no_grad():
        assert ssd_loss(multibox_terms(model(adv), m)).sum() > ssd_loss(multibox_terms(model(x), m)).sum()
    assert isinstance(make_recipe("con"), AdversarialRecipe)
