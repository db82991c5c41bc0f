"""Tests for split detection, VOC year detection, class resolution and class subsets on tiny fixtures.

Expected values are written by hand from the fixtures (which split files exist, which objects each
annotation holds), never taken from the code under test.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image
from test_datasets import voc_xml, write_coco, write_voc

from advlib.data import COCODataset, VOCDataset, build_dataset, find_data_root, resolve_classes, resolve_splits

RED = Image.new("RGB", (40, 30), (255, 0, 0))


def two_split_voc(root: Path, splits: tuple[str, str] = ("train", "val")) -> Path:
    """train: t1 (dog, cat), t2 (nothing); val/test: v1 (dog, bird) -- bird only in the test split."""
    return write_voc(root, {
        "t1": (RED, ".jpg", voc_xml(40, 30, [("dog", 1, 1, 10, 10, 0), ("cat", 11, 11, 20, 20, 0)])),
        "t2": (RED, ".jpg", voc_xml(40, 30)),
        "v1": (RED, ".jpg", voc_xml(40, 30, [("dog", 1, 1, 10, 10, 0), ("bird", 5, 5, 30, 25, 0)])),
    }, {splits[0]: ["t1", "t2"], splits[1]: ["v1"]})


# ----------------------------------------------------------------------------------- 1. splits


def test_resolve_splits_voc(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = two_split_voc(tmp_path)
    with caplog.at_level(logging.INFO, logger="advlib.data.layout"):
        assert resolve_splits(root, "voc") == ("train", "val")
    assert "train='train', test='val'" in caplog.text
    (root / "ImageSets" / "Main" / "test.txt").write_text("v1\n", encoding="utf-8")
    assert resolve_splits(root, "voc") == ("train", "val")  # train/val comes before train/test
    assert resolve_splits(root, "voc", test_split="test") == ("train", "test")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("t1\nv1\n", encoding="utf-8")
    assert resolve_splits(root, "voc") == ("trainval", "test")  # the first pair wins
    assert resolve_splits(root, "voc", train_split="train") == ("train", "val")
    with pytest.raises(FileNotFoundError, match=r"split 'nope' not found .*available splits: test, train, trainval, val$"):
        resolve_splits(root, "voc", train_split="nope")


def test_resolve_splits_nothing_fits(tmp_path: Path) -> None:
    root = two_split_voc(tmp_path, ("alpha", "beta"))
    with pytest.raises(FileNotFoundError, match=r"cannot pick train/test splits .*available splits: alpha, beta;"):
        resolve_splits(root, "voc")
    assert resolve_splits(root, "voc", "alpha", "beta") == ("alpha", "beta")


def test_resolve_splits_coco(tmp_path: Path) -> None:
    for split in ("train", "val", "train2017", "val2017"):
        write_coco(tmp_path / "c", anns=[], split=split) if split == "train" else \
            (tmp_path / "c" / "annotations" / f"instances_{split}.json").write_text("{}", encoding="utf-8")
    assert resolve_splits(tmp_path / "c", "coco") == ("train2017", "val2017")
    (tmp_path / "c" / "annotations" / "instances_val2017.json").unlink()
    assert resolve_splits(tmp_path / "c", "coco") == ("train", "val")


# -------------------------------------------------------------------------------------- 2. year


def test_voc2012_only_devkit(tmp_path: Path) -> None:
    two_split_voc(tmp_path / "VOCdevkit" / "VOC2012", ("trainval", "test"))
    expected = (tmp_path / "VOCdevkit" / "VOC2012").resolve()
    assert find_data_root(tmp_path, "voc") == expected and find_data_root(tmp_path / "VOCdevkit", "voc") == expected
    assert VOCDataset(tmp_path, "test").root == expected
    assert build_dataset(tmp_path, "voc", None, year=None).split == "trainval"
    two_split_voc(tmp_path / "VOCdevkit" / "VOC2007", ("trainval", "test"))  # two years: 2007 as before
    assert find_data_root(tmp_path, "voc") == (tmp_path / "VOCdevkit" / "VOC2007").resolve()
    assert build_dataset(tmp_path, "voc", "test", year=2012).root == expected


# ------------------------------------------------------------------------------------ 3. classes


def test_classes_from_both_splits_and_empty_training_class(tmp_path: Path) -> None:
    root = two_split_voc(tmp_path)
    with pytest.warns(UserWarning, match=r"class 'bird' has no objects in the training split 'train'") as rec:
        train = VOCDataset(root, "train", size=32)
    assert len(rec) == 1 and train.classes == ("bird", "cat", "dog")
    assert train.objects_per_class() == {"bird": 0, "cat": 1, "dog": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per class: the same data again is silent
        assert resolve_classes(root, "voc") == ("bird", "cat", "dog")
        assert VOCDataset(root, "train", size=32).classes == ("bird", "cat", "dog")
        test = VOCDataset(root, "val", size=32)  # the test split does not warn
    assert test.objects_per_class() == {"bird": 1, "cat": 0, "dog": 1}
    assert test.annotation(0)["labels"].tolist() == [3, 1]  # dog, bird


def test_utf8_classes_txt(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"x": (RED, ".jpg", voc_xml(40, 30, [("café", 1, 1, 10, 10, 0)]))},
                     {"trainval": ["x"]})
    (root / "classes.txt").write_bytes("Straße\ncafé\n".encode("utf-8"))
    ds = VOCDataset(root, size=32)
    assert ds.classes == ("Straße", "café") and ds.annotation(0)["labels"].tolist() == [2]
    assert resolve_classes(root, "voc", ("trainval",)) == ("Straße", "café")


# --------------------------------------------------------------------------------- 4. subsets


def test_class_subset_case_insensitive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = two_split_voc(tmp_path, ("trainval", "test"))
    with caplog.at_level(logging.INFO, logger="advlib.data.voc"):
        ds = VOCDataset(root, "test", classes=["BIRD", "Dog"], size=(30, 40))
    assert "dropped 0 object" not in caplog.text
    assert ds.classes == ("BIRD", "Dog") and len(ds) == 1
    assert ds.annotation(0)["labels"].tolist() == [2, 1]  # dog -> 2, bird -> 1
    with caplog.at_level(logging.INFO, logger="advlib.data.voc"):
        tr = VOCDataset(root, "trainval", classes=["cat"], size=(30, 40))
    assert "dropped 1 object(s) of 1 unselected class(es)" in caplog.text  # t1's dog
    assert len(tr) == 2 and [tr.annotation(i)["labels"].tolist() for i in range(2)] == [[1], []]
    assert tr.annotation(0)["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0]]  # the cat, 0-based
    with pytest.raises(ValueError, match=re.escape("class 'horse' is not in the data at ") +
                       r".*available classes: \['bird', 'cat', 'dog'\]"):
        VOCDataset(root, "trainval", classes=["dog", "horse"])


def test_coco_subset_and_classes_txt(tmp_path: Path) -> None:
    root = write_coco(tmp_path, anns=[
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0},  # zebra
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [0, 0, 4, 4], "iscrowd": 0},  # apple
    ])
    ds = COCODataset(root, "val", classes=["ApPlE"], size=(50, 100))
    assert ds.classes == ("ApPlE",) and ds.annotation(0)["labels"].tolist() == [1]
    assert ds.annotation(0)["boxes"].tolist() == [[0.0, 0.0, 4.0, 4.0]] and len(ds) == 3
    with pytest.raises(ValueError, match=r"class 'pear' is not in the data .*\['bird', 'zebra', 'apple'\]"):
        COCODataset(root, "val", classes=["pear"])
    (root / "classes.txt").write_text("zebra\napple\nbird\n", encoding="utf-8")
    assert COCODataset(root, "val").classes == ("zebra", "apple", "bird")


def test_coco_orphan_annotations_warn(tmp_path: Path) -> None:
    root = write_coco(tmp_path, anns=[
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 77, "category_id": 5, "bbox": [1, 1, 2, 2], "iscrowd": 0},
        {"id": 3, "image_id": 78, "category_id": 2, "bbox": [1, 1, 2, 2], "iscrowd": 0},
    ])
    with pytest.warns(UserWarning, match=r"instances_val\.json: ignored 2 annotation\(s\) whose image_id is not in"):
        ds = COCODataset(root, "val")
    assert sum(len(ds.annotation(i)["labels"]) for i in range(len(ds))) == 1
    assert json.loads((root / "annotations" / "instances_val.json").read_text())["annotations"][1]["id"] == 2
