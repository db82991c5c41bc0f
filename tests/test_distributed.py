"""torch.distributed on the CPU (gloo, 2 processes): a DDP training equals one process doing
gradient accumulation over the same per-rank micro-batches with the same augmentation draws, and a
sharded adversarial set and sharded detections equal the unsharded ones."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from advlib.attacks import AttackSpec
from advlib.distributed import interleave

CFG = dict(epochs=1, batch_size=8, lr=1e-3, warmup_frac=0.0, augment=True, seed=3)
SPEC = AttackSpec("cls", 8 / 255, 2 / 255, 3, random_start=True, seed=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(model) -> dict:
    """Parameters only: BN running statistics are per rank (no SyncBatchNorm on the CPU)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _dataset(root):
    from advlib.data import VOCDataset

    return VOCDataset(root, "trainval", size=64, cache_images=True)


def _rank_main(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist

    from advlib.cache import AdversarialCache
    from advlib.data import VOCDataset, collate
    from advlib.robustness import adversarial_images, crafted_batches, detect_all
    from advlib.train import StandardRecipe, TrainConfig, train
    from conftest import make_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = make_model(seed=1)
        train(model, _dataset(root), StandardRecipe(), TrainConfig(**CFG), progress=False,
              checkpoint_dir=os.path.join(out, "ckpt"))
        test = VOCDataset(root, "test", size=64, cache_images=True)
        x, t = collate([test[i] for i in range(7)])
        adv = adversarial_images(model, x, t, SPEC, batch_size=2, progress=False)  # 4 batches over 2 ranks
        dets = detect_all(model, adv, batch_size=3)
        cache = AdversarialCache(os.path.join(out, "adv"))
        cached, from_disk = cache.get_or_create("k", lambda: adversarial_images(model, x, t, SPEC, 2, progress=False),
                                                t, [str(i) for i in range(12)], SPEC, {})
        stream = AdversarialCache(os.path.join(out, "stream"))
        path, done = stream.get_or_create_stream("s", lambda: crafted_batches(model, x, t, SPEC, 2, progress=False), 2,
                                                 (64, 64), t, [str(i) for i in range(12)], SPEC, {})
        torch.save({"weights": _weights(model), "buffers": dict(model.named_buffers()), "adv": adv, "dets": dets, "cached": cached, "from_disk": from_disk,
                    "ckpt_files": sorted(os.listdir(os.path.join(out, "ckpt")))},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_interleave_inverts_round_robin_chunks():
    per_rank = [[0, 3, 6], [1, 4], [2, 5]]  # 7 chunks over 3 ranks: rank r has r, r + 3, ...
    assert interleave(per_rank) == list(range(7))


def test_ddp_two_processes_match_gradient_accumulation(tiny_voc, tmp_path):
    from advlib.data import VOCDataset, collate
    from advlib.robustness import adversarial_images, detect_all
    from advlib.train import StandardRecipe, TrainConfig, train
    from conftest import make_model

    mp.spawn(_rank_main, args=(2, _free_port(), str(tiny_voc), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # the reference: one process, the same global batches cut into the same two shards
    ref = make_model(seed=1)
    train(ref, _dataset(tiny_voc), StandardRecipe(), TrainConfig(**CFG), progress=False, micro_batches=2)
    for k, v in _weights(ref).items():
        torch.testing.assert_close(r0["weights"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        torch.testing.assert_close(r1["weights"][k], r0["weights"][k], rtol=0, atol=1e-6, msg=k)
    for k, v in r0["buffers"].items():  # rank 0's BN statistics broadcast at the end of the epoch
        assert torch.equal(r1["buffers"][k], v), k
    # and not the plain single-batch run (the shards' BN statistics and draws differ): the test can fail
    plain = make_model(seed=1)
    train(plain, _dataset(tiny_voc), StandardRecipe(), TrainConfig(**CFG), progress=False)
    assert any(not torch.allclose(plain_v, _weights(ref)[k], atol=1e-5) for k, plain_v in _weights(plain).items())
    # only rank 0 wrote the checkpoint; both ranks saw it
    assert r0["ckpt_files"] == r1["ckpt_files"] == ["last.pt"]

    # the sharded set and detections equal one process's, on the model rank 0 ended with
    test = VOCDataset(tiny_voc, "test", size=64, cache_images=True)
    x, t = collate([test[i] for i in range(7)])
    model = make_model(seed=1)
    model.load_state_dict(torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["model"])  # rank 0's
    model.eval()
    adv = adversarial_images(model, x, t, SPEC, batch_size=2, progress=False)
    assert r0["adv"].shape == adv.shape == x.shape
    torch.testing.assert_close(r0["adv"], adv, rtol=0, atol=1e-6)
    dets = detect_all(model, adv, batch_size=3)
    assert len(r0["dets"]) == len(dets) == 7
    for a, b in zip(r0["dets"], dets):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
    # the cached set: rank 0 saved it once, rank 1 returned what rank 0 saved
    assert not r0["from_disk"] and not r1["from_disk"]
    assert torch.equal(r0["cached"], r1["cached"])
    assert (tmp_path / "adv" / "k" / "ImageSets" / "Main" / "test.txt").read_text().split() == [f"{i:06d}" for i in range(7)]
    # the streamed set: each rank wrote its own batches' PNGs, rank 0 the rest; equal to one process's set
    from advlib.cache import AdversarialCache

    AdversarialCache(tmp_path / "single").save("s", adv, t, [str(i) for i in range(12)], SPEC, {})
    ids = [f"{i:06d}" for i in range(7)]
    assert (tmp_path / "stream" / "s" / "ImageSets" / "Main" / "test.txt").read_text().split() == ids
    assert not list((tmp_path / "stream").glob("*.tmp*"))
    for i in ids:
        for sub, ext in (("JPEGImages", "png"), ("Annotations", "xml")):
            a = (tmp_path / "stream" / "s" / sub / f"{i}.{ext}").read_bytes()
            assert a == (tmp_path / "single" / "s" / sub / f"{i}.{ext}").read_bytes(), (sub, i)


def test_micro_batches_must_split_the_global_batch(tiny_voc):
    from advlib.train import StandardRecipe, TrainConfig, train
    from conftest import make_model

    with pytest.raises(ValueError, match="global batch of 8 images must split into world_size 1 x micro_batches 3"):
        train(make_model(), _dataset(tiny_voc), StandardRecipe(), TrainConfig(**CFG), progress=False, micro_batches=3)
