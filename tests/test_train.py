"""The training loop: learning, bit-identical determinism, resume after a kill, schedules."""

from __future__ import annotations

import warnings

import pytest
import torch

from advlib.train import StandardRecipe, TrainConfig, augment_batch, lr_factor, train
from conftest import make_model

CFG = TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=0.05, seed=3)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bit_identical_weights(tiny_train):
    runs = []
    for _ in range(2):
        m = make_model(seed=0)
        train(m, tiny_train, StandardRecipe(), CFG, progress=False)
        runs.append(_state(m))
    assert _equal(*runs)
    m = make_model(seed=0)
    train(m, tiny_train, StandardRecipe(), TrainConfig(**{**CFG.__dict__, "seed": 4}), progress=False)
    assert not _equal(runs[0], _state(m))


def test_killed_and_resumed_training_ends_with_the_same_weights(tiny_train, tmp_path):
    ref = make_model(seed=0)
    hist_ref = train(ref, tiny_train, StandardRecipe(), CFG, checkpoint_dir=tmp_path / "a", progress=False)
    m = make_model(seed=0)
    train(m, tiny_train, StandardRecipe(), CFG, checkpoint_dir=tmp_path / "b", progress=False, stop_after_epochs=1)
    assert (tmp_path / "b" / "last.pt").exists()
    m2 = make_model(seed=0)  # a new process would start from a fresh model
    hist = train(m2, tiny_train, StandardRecipe(), CFG, checkpoint_dir=tmp_path / "b", progress=False)
    assert _equal(_state(ref), _state(m2))
    assert [h["epoch"] for h in hist] == [1, 2] and hist[1]["loss"] == hist_ref[1]["loss"]


def test_corrupt_checkpoint_is_ignored_with_a_warning(tiny_train, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    m = make_model(seed=0)
    with pytest.warns(UserWarning, match="ignoring checkpoint"):
        train(m, tiny_train, StandardRecipe(), TrainConfig(**{**CFG.__dict__, "epochs": 1}),
              checkpoint_dir=tmp_path, progress=False)


def test_training_lowers_the_loss(tiny_train):
    m = make_model(seed=0)
    hist = train(m, tiny_train, StandardRecipe(), TrainConfig(**{**CFG.__dict__, "epochs": 4, "augment": False}),
                 progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert not m.training


def test_lr_schedules():
    cfg = TrainConfig(epochs=1, warmup_frac=0.1, schedule="cosine")
    # warm-up: step 0 of 100 -> 1/10; end of warm-up -> 1; half-way through the cosine -> 0.5
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)
    step = TrainConfig(epochs=1, warmup_frac=0.0, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(s, 100, step) for s in (0, 49, 50, 75, 99)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])


def test_bad_config_raises():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


def test_augmentation_keeps_boxes_on_the_objects():
    # a white square on black: after any augmentation, the box still covers the bright pixels
    img = torch.zeros(1, 3, 64, 64)
    img[:, :, 20:40, 10:30] = 1.0
    target = [{"boxes": torch.tensor([[10., 20, 30, 40]]), "labels": torch.tensor([1])}]
    for s in range(20):
        out, t = augment_batch(img, target, torch.Generator().manual_seed(s))
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
        if len(t[0]["boxes"]):
            x1, y1, x2, y2 = t[0]["boxes"][0].round().long().tolist()
            inside = out[0, 0, y1 + 2:y2 - 2, x1 + 2:x2 - 2]
            if inside.numel():
                bright = out[0, 0] > out[0, 0].mean()
                # most of the box interior is bright, most of the image outside is not
                assert bright[y1 + 2:y2 - 2, x1 + 2:x2 - 2].float().mean() > 0.9


class _Planted:
    """Unpickling this writes a file: what a planted checkpoint could do with ``weights_only=False``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


def test_a_checkpoint_that_would_run_code_is_refused(tiny_train, tmp_path):
    target = tmp_path / "pwned.txt"
    m = make_model(seed=0)
    torch.save({"model": m.state_dict(), "epoch": 1, "history": [], "evil": _Planted(str(target))},
               tmp_path / "last.pt")
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 1})
    with pytest.warns(UserWarning, match="ignoring checkpoint"):
        hist = train(make_model(seed=0), tiny_train, StandardRecipe(), cfg, checkpoint_dir=tmp_path, progress=False)
    assert not target.exists() and [h["epoch"] for h in hist] == [1]


def test_checkpoints_resume_under_weights_only(tiny_train, tmp_path):
    m = make_model(seed=0)
    train(m, tiny_train, StandardRecipe(), CFG, checkpoint_dir=tmp_path, progress=False, stop_after_epochs=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # tensors and JSON types only
    assert state["epoch"] == 1 and state["cfg"]["milestones"] == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = train(make_model(seed=0), tiny_train, StandardRecipe(), CFG, checkpoint_dir=tmp_path,
                     progress=False, stop_after_epochs=1)
    assert not [w for w in caught if "ignoring checkpoint" in str(w.message)]
    assert [h["epoch"] for h in hist] == [1, 2]  # epoch 1 came from the checkpoint, only epoch 2 ran


def test_amp_trains_in_bfloat16_on_cpu_keeps_attacks_float32_and_enters_the_key_only_when_on(tiny_train):
    import dataclasses

    from advlib.attacks import AttackSpec, attack
    from advlib.recipes import AdversarialRecipe
    from advlib.train import TrainConfig, train
    from conftest import make_model

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_frac=0.0)
    assert "amp" not in cfg.key_dict() and dataclasses.replace(cfg, amp=True).key_dict()["amp"] is True
    seen = []
    spec = AttackSpec("cls", 8 / 255, 2 / 255, 1, random_start=False)
    model = make_model()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    hist = train(model, tiny_train, AdversarialRecipe("cls", spec), dataclasses.replace(cfg, amp=True), progress=False)
    hook.remove()
    # 3 steps: the attack's forward (eval mode) in float32, the training forward in bfloat16
    assert sorted(set(seen), key=str) == sorted({(False, torch.float32), (True, torch.bfloat16)}, key=str)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    # the attack gives the same images inside an autocast region as outside it (it runs float32)
    x = torch.stack([tiny_train[i][0] for i in range(4)])
    t = [tiny_train[i][1] for i in range(4)]
    model.eval()
    plain = attack(model, x, t, spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attack(model, x, t, spec)
    assert torch.equal(plain, inside)


def test_channels_last_is_a_layout_same_weights_same_key_model_handed_back_contiguous(tiny_train):
    import dataclasses

    from advlib.recipes import StandardRecipe
    from advlib.train import TrainConfig, train
    from conftest import make_model

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_frac=0.0, augment=True)
    cl = dataclasses.replace(cfg, channels_last=True)
    assert cl.key_dict() == cfg.key_dict()  # a memory layout: the same model-cache key
    seen = []
    a, b = make_model(seed=0), make_model(seed=0)
    conv = next(m for m in b.modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    train(a, tiny_train, StandardRecipe(), cfg, progress=False)
    train(b, tiny_train, StandardRecipe(), cl, progress=False)
    hook.remove()
    assert seen and all(seen)  # the batches did run channels-last
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-4, rtol=1e-3), name
        assert q.is_contiguous(), name  # handed back in the ordinary layout
