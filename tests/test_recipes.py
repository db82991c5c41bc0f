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


# ------------------------------------------------- pretrained backbones for other families
def test_pretrained_backbone_copies_the_source_backbone_into_any_family_and_keys_on_its_source():
    from advlib.models import backbone_of, build_detector, build_ssd
    from advlib.recipes import PretrainedBackbone
    from advlib.train import StandardRecipe

    torch.manual_seed(0)
    source = build_ssd("tiny_vgg", 3, 64)
    recipe = PretrainedBackbone(source, "abc123")
    assert recipe.name == "std" and recipe.spec() == {**StandardRecipe().spec(), "backbone_from": "abc123"}
    torch.manual_seed(1)
    fresh = build_detector("retinanet", "tiny_vgg", 3, 64)
    before = {k: v.clone() for k, v in backbone_of(fresh).state_dict().items()}
    model = recipe.prepare_model(fresh)
    src = source.backbone.state_dict()
    got = backbone_of(model).state_dict()
    assert set(got) == set(src) and all(torch.equal(got[k], src[k]) for k in src)
    assert any(not torch.equal(before[k], src[k]) for k in src if src[k].is_floating_point())
    # the head is untouched, and the recipe trains with the clean loss
    x = torch.rand(2, 3, 64, 64)
    t = [{"boxes": torch.tensor([[4., 4., 30., 30.]]), "labels": torch.tensor([1])}] * 2
    torch.testing.assert_close(recipe(model, x, t), StandardRecipe()(model, x, t))
    with pytest.raises(TypeError, match="no backbone"):
        backbone_of(torch.nn.Linear(2, 2))


def test_family_schedules_change_only_other_families():
    from advlib.profiles import FAMILY_SCHEDULES, family_schedule, get_profile

    prof = get_profile("default")
    assert family_schedule(prof, "ssd") == prof.train
    retina = family_schedule(prof, "retinanet")
    assert (retina.epochs, retina.batch_size, retina.lr) == (4, 16, 1e-3) == tuple(
        FAMILY_SCHEDULES["default"]["retinanet"][k] for k in ("epochs", "batch_size", "lr"))
    assert retina.optimizer == prof.train.optimizer and family_schedule(get_profile("voc"), "retinanet") == \
        get_profile("voc").train
