"""Tests for image-file handling: validation, 16/32-bit images, image hashes in identity(), the
shared VOC XML writer and the median original size. Expected values are computed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_datasets import voc_xml, write_voc

from advlib.data import VOCDataset, hash_files, to_rgb, validate_images, voc_annotation_xml
from advlib.data import hashing


def small_voc(root: Path, n: int = 3) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # scan data >> headers
    images = {f"i{k}": (Image.fromarray(noise), ".jpg",
                        voc_xml(40, 30, [("dog", 1, 1, 10, 10, 0)])) for k in range(n)}
    return write_voc(root, images, {"trainval": list(images)})


# ---------------------------------------------------------------------------------- 5. validation


def test_validate_images_reports_all_bad_files_and_caches(tmp_path: Path) -> None:
    root = small_voc(tmp_path / "voc", 4)
    cache = tmp_path / "validated"
    ds = VOCDataset(root, size=32)
    first = validate_images(ds, cache_dir=cache)
    assert first["images"] == 4 and first["full_decode"] and not first["cached"]
    assert len(list(cache.glob("*.json"))) == 1
    assert validate_images(ds, cache_dir=cache)["cached"]
    jpegs = root / "JPEGImages"
    data = (jpegs / "i0.jpg").read_bytes()
    (jpegs / "i0.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (jpegs / "i1.jpg").write_bytes(b"not an image at all")  # unreadable
    Image.new("RGB", (41, 30)).save(jpegs / "i2.jpg")  # size mismatch with the annotation
    with pytest.raises(ValueError) as err:
        validate_images(VOCDataset(root, size=32), cache_dir=cache)
    msg = str(err.value)
    assert msg.startswith("3 of 4 image file(s) are bad:")
    assert re.search(re.escape(str(jpegs / "i0.jpg")) + r": truncated JPEG", msg)
    assert re.search(re.escape(str(jpegs / "i1.jpg")) + r": unreadable", msg)
    assert re.search(re.escape(str(jpegs / "i2.jpg")) + r": size mismatch: the file is 41x30 \(WxH\) but the "
                     r"annotation says 40x30", msg)
    assert "i3.jpg" not in msg


def test_full_decode_catches_what_headers_miss(tmp_path: Path) -> None:
    """A PNG whose compressed pixels are garbage but whose chunk checksums are right passes the
    header check (``verify`` checks the CRCs) and fails only a full decode."""
    noise = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    write_voc(tmp_path, {"p": (Image.fromarray(noise), ".png", voc_xml(40, 30))}, {"trainval": ["p"]})
    path = tmp_path / "JPEGImages" / "p.png"
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 4 + 10:at + 4 + 40] = bytes(30)  # zero 30 bytes of the zlib stream
    data[at + 4 + length:at + 8 + length] = zlib.crc32(bytes(data[at:at + 4 + length])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    ds = VOCDataset(tmp_path, classes=["dog"], size=32)
    assert not validate_images(ds, full_decode=False, cache_dir=tmp_path / "c")["full_decode"]
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": unreadable"):
        validate_images(ds, full_decode=True, cache_dir=tmp_path / "c")  # a header-only verdict is not enough
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": unreadable"):
        validate_images(ds, cache_dir=tmp_path / "c2")  # small split: full decode by default


# ------------------------------------------------------------------------------ 6. 16/32-bit images


def test_16bit_png_scaled_by_bit_depth(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 65535]], dtype=np.uint16)  # 1000 / 257 = 3.89 -> 4
    write_voc(tmp_path, {"x": (Image.fromarray(values), ".png", voc_xml(4, 1))}, {"trainval": ["x"]})
    with Image.open(tmp_path / "JPEGImages" / "x.png") as im:
        assert im.mode == "I;16"
    img, _ = VOCDataset(tmp_path, classes=["dog"], size=(1, 4))[0]
    expected = torch.tensor([0, 1, 4, 255], dtype=torch.float32) / 255
    assert torch.equal(img, expected.expand(3, 1, 4))
    big_endian = Image.fromarray(values.astype(">u2"))
    assert big_endian.mode == "I;16B"
    assert np.asarray(to_rgb(big_endian))[0, :, 0].tolist() == [0, 1, 4, 255]


def test_32bit_int_image_scaled_by_its_max(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 400, 1000, 2000]], dtype=np.int32))  # max 2000: v * 255 / 2000
    assert im.mode == "I"
    assert np.asarray(to_rgb(im))[0, :, 1].tolist() == [0, 51, 128, 255]  # 51.0, 127.5 -> 128, 255
    low = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32))  # max <= 255: values kept
    assert np.asarray(to_rgb(low))[0, :, 2].tolist() == [0, 7, 255]


# ------------------------------------------------------------------------- 9. XML writer round trip


def test_voc_writer_escapes_and_round_trips(tmp_path: Path) -> None:
    names = ["R&D", "a<b>", "plain"]
    objects = [(names[0], (0, 0, 10, 5), False), (names[1], (2.5, 3, 7.25, 9), True), (names[2], (1, 1, 2, 2), False)]
    xml = voc_annotation_xml("x & y.jpg", 12, 10, objects)
    assert "R&amp;D" in xml and "a&lt;b&gt;" in xml and "<xmin>3.5</xmin>" in xml
    write_voc(tmp_path, {"x": (Image.new("RGB", (12, 10)), ".png", xml)}, {"trainval": ["x"]})
    ds = VOCDataset(tmp_path, size=(10, 12))
    assert ds.classes == ("R&D", "a<b>", "plain")
    t = ds.annotation(0)
    assert t["labels"].tolist() == [1, 2, 3] and t["difficult"].tolist() == [False, True, False]
    assert t["boxes"].tolist() == [[0, 0, 10, 5], [2.5, 3, 7.25, 9], [1, 1, 2, 2]]


# ------------------------------------------------------------------ 10. image bytes in identity()


def test_identity_hashes_image_bytes(tmp_path: Path) -> None:
    root = small_voc(tmp_path / "voc")
    cache = tmp_path / "hashes.json"
    ds = VOCDataset(root, size=32)
    ds.hash_cache = cache
    before = ds.identity()
    assert len(before["images_sha256"]) == 64 and json.loads(cache.read_text(encoding="utf-8"))
    for p in (root / "JPEGImages").glob("*.jpg"):  # black images: same names, sizes and annotations
        Image.new("RGB", (40, 30)).save(p)
    after = VOCDataset(root, size=32)
    after.hash_cache = cache
    changed = after.identity()
    assert changed["images_sha256"] != before["images_sha256"]
    assert {k: v for k, v in changed.items() if k != "images_sha256"} == \
        {k: v for k, v in before.items() if k != "images_sha256"}


def test_hash_cache_reuses_unchanged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [tmp_path / f"{k}.bin" for k in range(3)]
    for k, f in enumerate(files):
        f.write_bytes(bytes([k]) * 100)
    cache = tmp_path / "c" / "file_hashes.json"
    import hashlib
    expected = [hashlib.sha256(bytes([k]) * 100).hexdigest() for k in range(3)]
    assert hash_files(files, cache) == expected
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    hashing._MEMORY.clear()  # a new process: reads the JSON
    assert hash_files(files, cache) == expected and calls == []
    files[1].write_bytes(b"changed!")
    assert hash_files(files, cache)[1] == hashlib.sha256(b"changed!").hexdigest() and calls == [files[1].resolve()]


def test_hash_cache_keys_files_by_their_resolved_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder reached through a symlink or a relative path shares the real folder's entries."""
    import hashlib

    real_dir = tmp_path / "real"
    real_dir.mkdir()
    (real_dir / "a.bin").write_bytes(b"a")
    (tmp_path / "link").symlink_to(real_dir)
    cache = tmp_path / "file_hashes.json"
    assert hash_files([real_dir / "a.bin"], cache) == [hashlib.sha256(b"a").hexdigest()]
    calls = []
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or "recomputed")
    monkeypatch.chdir(tmp_path)
    assert hash_files([tmp_path / "link" / "a.bin", Path("real/a.bin")], cache) == [hashlib.sha256(b"a").hexdigest()] * 2
    assert calls == [] and list(json.loads(cache.read_text())) == [str(real_dir.resolve() / "a.bin")]


def test_hash_cache_concurrent_writers(tmp_path: Path) -> None:
    """Four processes hash different files into one cache at once: the JSON stays valid and complete."""
    spec = importlib.util.find_spec("advlib.data.hashing")
    for w in range(4):
        for k in range(30):
            (tmp_path / f"w{w}_{k}").write_bytes(f"{w}-{k}".encode())
    code = ("import importlib.util, sys, pathlib; s = importlib.util.spec_from_file_location('h', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); d = pathlib.Path(sys.argv[2]); "
            "[m.hash_files([d / f'w{sys.argv[3]}_{k}'], d / 'cache.json') for k in range(30)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, spec.origin, str(tmp_path), str(w)]) for w in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    data = json.loads((tmp_path / "cache.json").read_text(encoding="utf-8"))
    assert len(data) == 120 and not list(tmp_path.glob(".cache.json.*.tmp"))


# ------------------------------------------------------------------------ 12. median original size


def test_median_original_size(tmp_path: Path) -> None:
    write_voc(tmp_path, {
        "a": (Image.new("RGB", (200, 100)), ".jpg", voc_xml(200, 100)),
        "b": (Image.new("RGB", (80, 60)), ".jpg", voc_xml(80, 60)),
        "c": (Image.new("RGB", (1000, 800)), ".jpg", voc_xml(1000, 800)),
    }, {"trainval": ["a", "b", "c"]})
    ds = VOCDataset(tmp_path, classes=["dog"], size=32)
    assert ds.median_original_size() == (100, 200)  # heights 60, 100, 800; widths 80, 200, 1000
    assert "200x100 (WxH) is resized to the model input 32x32 (6.2x smaller)" in ds.resize_note()
    assert VOCDataset(tmp_path, classes=["dog"], size=(100, 200)).resize_note() is None
