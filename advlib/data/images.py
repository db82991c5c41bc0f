"""Reading image files: RGB conversion (including 16- and 32-bit integer images) and file checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded PIL image to 8-bit RGB.

    Integer images are scaled to 8 bits by their bit depth instead of PIL's clipping to 255:
    16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) map ``v -> round(v / 257)`` (65535 ->
    255); 32-bit ``I`` and float ``F`` images have no fixed depth, so they map ``v ->
    round(v * 255 / max)`` by the image's own maximum when that exceeds 255, and are clipped to
    ``[0, 255]`` otherwise. Other modes (L, P, RGBA, CMYK, ...) use ``Image.convert("RGB")``.

    Args:
        im: a PIL image.

    Returns:
        An ``RGB`` image of the same size.
    """
    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64) / 257.0
    elif im.mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = float(arr.max()) if arr.size else 0.0
        if top > 255.0:
            arr = np.clip(arr, 0.0, None) * (255.0 / top)
    else:
        return im.convert("RGB")
    gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Open, fully decode and convert one image file to RGB.

    Args:
        path: image file.

    Returns:
        The ``RGB`` image.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable or truncated, naming the file.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} not found") from None
    except _READ_ERRORS as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e


def image_index(folder: Path) -> dict[str, str]:
    """Map file stem -> file name for the images in ``folder`` (prefers .jpg over other extensions)."""
    index: dict[str, str] = {}
    with os.scandir(folder) as it:
        for e in it:
            stem, ext = os.path.splitext(e.name)
            if ext.lower() in IMAGE_EXTS and (stem not in index or ext.lower() == ".jpg"):
                index[stem] = e.name
    return index


def check_image_file(path: Path, size: tuple[int, int], full_decode: bool) -> str | None:
    """What is wrong with one image file, or ``None``.

    Opens the file and checks its header (``Image.verify``), a JPEG's end-of-image marker (a cheap
    truncation test) and the size against the annotation; ``full_decode`` also decodes every pixel.

    Args:
        path: image file.
        size: ``(h, w)`` the annotation gives.
        full_decode: decode the whole image.

    Returns:
        A short description of the problem, or ``None`` when the file is fine.
    """
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 4096))
                if b"\xff\xd9" not in f.read().rstrip(b"\x00\r\n "):
                    return "truncated JPEG (no end-of-image marker)"
        if full_decode:
            with Image.open(path) as im:
                im.load()
    except FileNotFoundError:
        return "file not found"
    except _READ_ERRORS as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if (h, w) != tuple(size):
        return f"size mismatch: the file is {w}x{h} (WxH) but the annotation says {size[1]}x{size[0]}"
    return None
