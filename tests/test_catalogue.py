"""The catalogue finds each notebook's model under the key its notebook trains it with, reports the
others missing, and never trains anything."""

from __future__ import annotations

import pytest


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


def test_catalogue_finds_notebook_models_and_trains_nothing(tiny_voc, tmp_path, monkeypatch):
    from advlib.experiment import Experiment
    from advlib.papers import catalogue, cwat
    from advlib.profiles import get_budget

    monkeypatch.setenv("ADVLIB_CACHE_DIR", str(tmp_path / "cache"))
    exp = Experiment(profile="smoke", data_root=tiny_voc, device="cpu", zoo_root=tmp_path / "zoo", progress=False)
    names = [e.name for e in catalogue.entries("smoke")]
    assert len(names) == len(set(names)) == 17
    # notebook 02's smoke budget trains one-step PGD recipes, and the names say so
    assert cwat.model_name("cwat", cwat.budget("smoke").train_steps) in names and "CWAT-1step" in names

    found, missing = catalogue.cached_models(exp)
    assert found == {} and missing == names
    assert not (tmp_path / "zoo").exists() or _files(tmp_path / "zoo") == []

    # as notebooks 00/01 train them
    std = exp.trained("std")
    cls = exp.trained("cls", parent="std", cfg=exp.finetune_config(get_budget(exp.profile).recipe_epochs))
    before = _files(tmp_path / "zoo")
    found, missing = catalogue.cached_models(exp)
    assert {n: tm.key for n, tm in found.items()} == {"STD": std.key, "CLS-1step": cls.key}
    assert missing == [n for n in names if n not in ("STD", "CLS-1step")]
    assert _files(tmp_path / "zoo") == before  # nothing trained, no stage 1 computed
    assert not (tmp_path / "cache" / "advamd").exists()

    # another seed: nothing cached
    assert catalogue.cached_models(exp, ["STD"], seed=1) == ({}, ["STD"])
    with pytest.raises(KeyError, match="unknown catalogue models.*'CWAT'"):
        catalogue.cached_models(exp, ["CWAT"])
