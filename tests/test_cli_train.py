"""``advlib.cli train`` / ``adversarial-set`` as a user runs them, in one process and under torchrun
(2 gloo processes): the torchrun-trained model lands under the key a notebook asks for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], env: dict, launcher: list[str] | None = None) -> str:
    cmd = (launcher or [sys.executable]) + ["-m", "advlib.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_cli_train_torchrun_and_adversarial_set(tiny_voc, tmp_path):
    from advlib.experiment import Experiment

    env = {**os.environ, "ADVLIB_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["--profile", "smoke", "--data-root", str(tiny_voc)]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    out = _run(["train", *common, "--recipe", "cls", "--parent", "std"], env,
               launcher=[torchrun, "--standalone", "--nproc_per_node=2"])
    # the parent STD and CLS both trained by 2 processes; rank 0 alone prints
    assert "cls (ssd, tiny_vgg, seed 0, 2 process(es)): clean mAP@0.5" in out and out.count("clean mAP") == 1, out
    key = re.search(r"cache key (\w+)", out).group(1)

    # the key a notebook asks for (notebook 01's CLS call), found without training
    os.environ["ADVLIB_CACHE_DIR"] = env["ADVLIB_CACHE_DIR"]
    try:
        exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", progress=False)
        tm = exp.trained("cls", parent="std", cfg=exp.finetune_config(), cached_only=True)
    finally:
        del os.environ["ADVLIB_CACHE_DIR"]
    assert tm is not None and tm.key == key
    assert tm.meta["train_seconds"] > 0 and len(tm.meta["history"]) == exp.profile.finetune_epochs

    adv = _run(["adversarial-set", *common, "--attack", "A_cls", "--images", "4", "--batch-size", "2"], env)
    path = Path(re.search(r"-> (\S+) \(read it", adv).group(1))
    from advlib.data import build_dataset

    ds = build_dataset(path, "voc", "test", size=64)
    assert len(ds) == 4



def test_adversarial_set_of_a_model_not_in_the_cache_says_how_to_train_it(tiny_voc, tmp_path, monkeypatch):
    from advlib.cli import main

    monkeypatch.setenv("ADVLIB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match="is not in the model cache: train it first with `python -m advlib.cli train`"):
        main(["adversarial-set", "--profile", "smoke", "--data-root", str(tiny_voc), "--recipe", "loc", "--parent",
              "std", "--attack", "A_cls"])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*/model.pt"))  # nothing trained
