"""Robustness tables, transfer caching and sweeps on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advlib.attacks import pgd
from advlib.cache import AdversarialCache, CorruptCacheWarning
from advlib.data import VOCDataset, collate
from advlib.robustness import Transfer, adversarial_images, robustness_table
from advlib.sweeps import sweep
from conftest import make_model

CLASSES = tuple(f"c{i}" for i in range(1, 13))


@pytest.fixture(scope="module")
def data(tiny_test):
    return collate([tiny_test[i] for i in range(4)])


@pytest.fixture(scope="module")
def models():
    return {"A": make_model(seed=1).eval(), "B": make_model(seed=2).eval()}


def test_table_cells_carry_specs_and_transfer_sets_are_cached(models, data, tmp_path, monkeypatch):
    images, targets = data
    cache = AdversarialCache(tmp_path)
    spec = pgd("cls", steps=1)
    attacks = {"clean": None, "white": spec, "from A": Transfer("A", spec)}
    t1 = robustness_table(models, attacks, images, targets, CLASSES, cache=cache, data_id="tiny", progress=False)
    assert t1.frame.shape == (2, 3)
    cell = next(c for c in t1.cells if c.model == "B" and c.attack == "from A")
    assert cell.source == "A" and cell.spec["eps_px"] == 8 and cell.spec["objective"] == "cls" and not cell.cached
    assert all(c.spec is None for c in t1.cells if c.attack == "clean")
    # the cached set is a VOC dataset of PNGs, readable as an adversarial test set
    (d,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    ds = VOCDataset(d, "test", classes=CLASSES, size=64)
    assert len(ds) == 4 and torch.allclose(ds.annotation(0)["boxes"], targets[0]["boxes"], atol=1e-4)
    adv0, _ = ds[0]
    assert (adv0 - images[0]).abs().max() <= 8 / 255 + 1e-6
    # second time: no crafting at all, same numbers
    import advlib.robustness as rob

    def boom(*a, **k):
        raise AssertionError("transfer set crafted twice")

    monkeypatch.setattr(rob, "adversarial_images", boom)
    t2 = robustness_table(models, {"from A": Transfer("A", spec)}, images, targets, CLASSES, cache=cache,
                          data_id="tiny", progress=False)
    assert all(c.cached for c in t2.cells)
    assert t2.get("B", "from A") == t1.get("B", "from A")


def test_unknown_transfer_source(models, data):
    images, targets = data
    with pytest.raises(ValueError, match="unknown source"):
        robustness_table(models, {"x": Transfer("Z", pgd("cls"))}, images, targets, CLASSES, progress=False)


def test_steps_sweep_snapshots_equal_separate_runs(models, data):
    images, targets = data
    m = models["A"]
    spec = pgd("loc", steps=3, step_size=2 / 255)
    snaps = adversarial_images(m, images, targets, spec, progress=False, snapshots=[1, 3])
    one = adversarial_images(m, images, targets, spec.replace(steps=1), progress=False)
    assert torch.allclose(snaps[1], one, atol=1e-6)
    df = sweep(m, spec, images, targets, 12, steps=[0, 1, 3], progress=False)
    assert df["steps"].tolist() == [0, 1, 3] and df["spec"].iloc[2]["steps"] == 3
    with pytest.raises(ValueError, match="exactly one"):
        sweep(m, spec, images, targets, 12)


def test_result_cache_makes_a_second_table_and_sweep_attack_free(models, data, tmp_path, monkeypatch):
    from advlib.cache import ResultCache

    images, targets = data
    rc = ResultCache(tmp_path / "results", enabled=True)
    spec = pgd("cls", steps=2)
    attacks = {"clean": None, "white": spec, "from A": Transfer("A", spec)}
    t1 = robustness_table(models, attacks, images, targets, CLASSES, cache=AdversarialCache(tmp_path / "adv"),
                          data_id="tiny", progress=False, result_cache=rc)
    s1 = sweep(models["A"], spec, images, targets, len(CLASSES), steps=[0, 1, 2], progress=False, result_cache=rc)
    assert not any(c.result_cached for c in t1.cells) and rc.misses == 1 and rc.hits == 0
    import advlib.robustness as rob

    def boom(*a, **k):
        raise AssertionError("attacked although the result was cached")

    monkeypatch.setattr(rob, "adversarial_images", boom)
    monkeypatch.setattr(rob, "detect_all", boom)
    monkeypatch.setattr(rob, "attacked_detections", boom)
    t2 = robustness_table(models, attacks, images, targets, CLASSES, cache=AdversarialCache(tmp_path / "adv"),
                          data_id="tiny", progress=False, result_cache=rc)
    s2 = sweep(models["A"], spec, images, targets, len(CLASSES), steps=[0, 1, 2], progress=False, result_cache=rc)
    assert all(c.result_cached for c in t2.cells)
    pd_t1, pd_t2 = t1.frame, t2.frame
    assert np.allclose(pd_t1.values, pd_t2.values) and list(s1["map"]) == list(s2["map"])
    # per-class AP is kept with every cell (mean of the classes with objects = mAP)
    pc = t2.per_class("white")
    assert pc.shape == (len(CLASSES), 2)
    assert np.nanmean(pc["A"].values.astype(float)) == pytest.approx(t2.get("A", "white"), abs=1e-6)
    # other data, other spec or another model: a miss, never a stale number
    with pytest.raises(AssertionError, match="cached"):
        robustness_table(models, {"white": spec.replace(eps=4 / 255)}, images, targets, CLASSES, progress=False,
                         result_cache=rc)
    with pytest.raises(AssertionError, match="cached"):
        robustness_table(models, {"white": spec}, images[:2], targets[:2], CLASSES, progress=False, result_cache=rc)


def test_result_cache_survives_a_torn_file_and_can_be_disabled(tmp_path):
    from advlib.cache import ResultCache

    rc = ResultCache(tmp_path, enabled=True)
    calls = []
    assert rc.cached(lambda: calls.append(1) or {"x": 1.5}, a=1) == {"x": 1.5}
    assert rc.cached(lambda: calls.append(1) or {"x": 9.0}, a=1) == {"x": 1.5} and len(calls) == 1
    (f,) = list(tmp_path.glob("*.json"))
    f.write_text("{not json")
    with pytest.warns(CorruptCacheWarning, match="unreadable"):
        assert rc.cached(lambda: calls.append(1) or {"x": 2.5}, a=1) == {"x": 2.5} and len(calls) == 2
    off = ResultCache(tmp_path, enabled=False)
    assert off.cached(lambda: calls.append(1) or {"x": 3.5}, a=1) == {"x": 3.5} and len(calls) == 3


def test_sweep_curves_reuse_the_shared_point(models, data, monkeypatch):
    import advlib.sweeps as rob
    from advlib.sweeps import sweep_curves

    images, targets = data
    calls = []
    real = rob.sweep

    def counting(*a, **k):
        calls.append(k.get("eps"))
        return real(*a, **k)

    monkeypatch.setattr(rob, "sweep", counting)
    spec = pgd("cls", eps=8 / 255, step_size=2 / 255, steps=2)
    c = sweep_curves({"A": models["A"]}, {"A_cls": spec}, images, targets, len(CLASSES), steps=[0, 1, 2],
                     eps=[4 / 255, 8 / 255], progress=False)
    assert calls == [None, [4 / 255]]  # the ε = 8 point is the steps curve's end, not a second run
    e, s = c[c.kind == "eps"], c[c.kind == "steps"]
    assert list(e["eps_px"].round(3)) == [4.0, 8.0] and list(s["steps"]) == [0, 1, 2]
    assert float(e[e.eps_px.round(3) == 8.0]["map"].iloc[0]) == float(s[s.steps == 2]["map"].iloc[0])
    ref = real(models["A"], spec, images, targets, len(CLASSES), eps=[8 / 255], progress=False)
    assert float(ref["map"].iloc[0]) == pytest.approx(float(s[s.steps == 2]["map"].iloc[0]), abs=1e-9)


def test_transfer_sets_are_keyed_by_the_evaluated_subset(models, tiny_test, tmp_path):
    images, targets = collate([tiny_test[i] for i in range(6)])
    cache = AdversarialCache(tmp_path)
    attacks = {"from A": Transfer("A", pgd("cls", steps=1))}
    for n in (4, 6):  # same data_id, other images: a new set, not the 4-image one
        t = robustness_table(models, attacks, images[:n], targets[:n], CLASSES, cache=cache, data_id="tiny",
                             progress=False, result_cache=False)
        assert not any(c.cached for c in t.cells)
    sets = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [len((p / "ImageSets" / "Main" / "test.txt").read_text().split()) for p in sets] in ([4, 6], [6, 4])


def test_malformed_cached_cells_and_sweep_rows_are_recomputed(models, data, tmp_path):
    from advlib.cache import ResultCache

    images, targets = data
    rc = ResultCache(tmp_path, enabled=True)
    spec = pgd("cls", steps=1)
    t1 = robustness_table({"A": models["A"]}, {"clean": None, "white": spec}, images, targets, CLASSES,
                          progress=False, result_cache=rc)
    s1 = sweep(models["A"], spec, images, targets, len(CLASSES), steps=[0, 1], progress=False, result_cache=rc)
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 3
    for bad in ('{"value": "garbage"}', '{"value": {"map": "x"}}', '{"value": [{"map": 1.0}]}'):
        for f in files:
            f.write_text(bad)
        with pytest.warns(CorruptCacheWarning):
            t2 = robustness_table({"A": models["A"]}, {"clean": None, "white": spec}, images, targets, CLASSES,
                                  progress=False, result_cache=rc)
            s2 = sweep(models["A"], spec, images, targets, len(CLASSES), steps=[0, 1], progress=False,
                       result_cache=rc)
        assert not any(c.result_cached for c in t2.cells)
        assert np.allclose(t1.frame.values, t2.frame.values) and list(s1["map"]) == list(s2["map"])


def test_white_box_cells_are_evaluated_on_8bit_images(models, data, monkeypatch):
    import advlib.robustness as rob
    from advlib.evaluate import evaluate_voc

    images, targets = data
    seen = []
    real_detect = rob.detect_all
    model_detect = models["A"].detect

    def recording(x, *a, **k):  # what the detector is shown
        seen.append(x.clone())
        return model_detect(x, *a, **k)

    monkeypatch.setattr(models["A"], "detect", recording)
    spec = pgd("cls", steps=2, step_size=1.3 / 255)  # off-grid steps: unrounded images are not 8-bit
    table = robustness_table({"A": models["A"]}, {"white": spec}, images, targets, CLASSES, progress=False,
                             result_cache=False)
    x = torch.cat(seen)
    monkeypatch.undo()
    assert ((x * 255) - (x * 255).round()).abs().max() < 1e-4
    raw = adversarial_images(models["A"], images, targets, spec, progress=False)
    assert ((raw * 255) - (raw * 255).round()).abs().max() > 0.1  # the rounding did something
    assert (x - images).abs().max() <= 8 / 255 + 1e-6
    rounded = (raw.clamp(0, 1) * 255).round() / 255
    expected = evaluate_voc(real_detect(models["A"], rounded), targets, len(CLASSES), class_names=CLASSES).map
    assert table.get("A", "white") == pytest.approx(float(expected), abs=1e-9)


def test_coco_ap_cells_are_pycocotools_on_the_same_detections(models, data, tmp_path):
    from advlib.cache import ResultCache
    from advlib.evaluate import evaluate_coco
    from advlib.robustness import detect_all

    images, targets = data
    rc = ResultCache(tmp_path / "results", enabled=True)
    t = robustness_table(models, {"clean": None}, images, targets, CLASSES, progress=False, result_cache=rc, coco=True)
    for name, m in models.items():
        want = evaluate_coco(detect_all(m, images), targets, len(CLASSES))["AP"]
        assert t.coco_frame.loc[name, "clean"] == pytest.approx(want)
    # a VOC-only table leaves COCO AP empty, and a cached VOC-only cell is not taken for a COCO one
    rc2 = ResultCache(tmp_path / "results2", enabled=True)
    voc = robustness_table(models, {"clean": None}, images, targets, CLASSES, progress=False, result_cache=rc2)
    assert voc.coco_frame.isna().all().all()
    again = robustness_table(models, {"clean": None}, images, targets, CLASSES, progress=False, result_cache=rc2,
                             coco=True)
    assert not any(c.result_cached for c in again.cells) and again.coco_frame.notna().all().all()


def test_mda_column_with_its_parts_equals_separate_tables_from_one_craft_of_each(models, data, monkeypatch):
    from advlib.attacks import OBJECTIVES, preset
    from advlib.attacks.mda import components

    images, targets = data
    cols = {"A_cls": preset("A_cls", steps=2, seed=3), "A_loc": preset("A_loc", steps=2, seed=3),
            "MDA": preset("MDA", steps=2, seed=3)}
    assert components(cols["MDA"]) == (cols["A_cls"], cols["A_loc"])  # the presets are exactly MDA's parts
    alone = {c: robustness_table(models, {c: s}, images, targets, CLASSES, progress=False, result_cache=False)
             for c, s in cols.items()}
    crafts = []
    for cls in {type(OBJECTIVES.build(name)) for name in ("cls", "loc")}:
        def counting(self, *a, _real=cls.craft, **k):
            crafts.append(self.name)
            return _real(self, *a, **k)
        monkeypatch.setattr(cls, "craft", counting)
    together = robustness_table(models, cols, images, targets, CLASSES, progress=False, result_cache=False)
    for m in models:
        for c in cols:
            a = next(x for x in alone[c].cells if x.model == m)
            b = next(x for x in together.cells if x.model == m and x.attack == c)
            np.testing.assert_equal((b.map, b.map_allpoint, b.ap), (a.map, a.map_allpoint, a.ap))
    # per model: one A_cls and one A_loc craft per batch serve the three columns
    assert sorted(crafts) == ["cls", "cls", "loc", "loc"]
    # with A_cls and A_loc cached, MDA alone still crafts both (and nothing else is recomputed)
    crafts.clear()
    mixed = robustness_table({"A": models["A"]}, {"A_cls": cols["A_cls"], "MDA": cols["MDA"]}, images, targets,
                             CLASSES, progress=False, result_cache=False)
    assert sorted(crafts) == ["cls", "loc"] and mixed.get("A", "MDA") == alone["MDA"].get("A", "MDA")


def test_mda_detections_equal_each_attack_run_alone(models, data):
    from advlib.attacks import preset
    from advlib.robustness import attacked_detections, mda_detections

    images, targets = data
    mda = preset("MDA", steps=2, seed=1)
    got = mda_detections(models["B"], images, targets, mda, {"mda", "cls", "loc"}, batch_size=3, progress=False)
    for part, spec in (("mda", mda), ("cls", preset("A_cls", steps=2, seed=1)), ("loc", preset("A_loc", steps=2, seed=1))):
        ref = attacked_detections(models["B"], images, targets, spec, batch_size=3, progress=False)
        assert len(got[part]) == len(ref) == len(images)
        for d, r in zip(got[part], ref):
            assert all(torch.equal(d[k], r[k]) for k in ("boxes", "scores", "labels"))
    assert sum(len(d["scores"]) for d in got["mda"]) > 0  # detections to compare, not empty lists
