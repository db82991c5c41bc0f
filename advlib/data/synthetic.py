"""Generated shapes detection dataset in Pascal VOC layout (the project's default data).

Images show 1..8 filled shapes from :data:`SHAPE_CLASSES` on a smooth, cluttered background.
Classes are told apart by shape only: colours are random, some objects are striped or noisy,
sizes, aspect (+-20 %) and rotation vary, objects may occlude each other (bounded by
``max_occlusion``), and class frequencies follow a geometric long tail (label 1 most common,
label C rarest, ratio ``class_weights_ratio``). Several classes per image give the within-image
class imbalance that CWAT is about.

Every image is rendered from its own generator ``numpy.random.default_rng([seed, index])``, so
a file never depends on generation order, and the same seed gives byte-identical files.
:func:`generate_voc` writes the dataset atomically (temporary sibling directory, then a rename)
and is idempotent; :func:`render_sample` renders one image in memory (used by the tests).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

__all__ = ["SHAPE_CLASSES", "SyntheticConfig", "SyntheticObject", "generate_voc", "render_sample"]

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "plus", "ring",
    "diamond", "hexagon", "crescent", "arrow", "heart", "frame",
)
# Largest rotation (degrees, either way) that keeps each class recognisable and distinct:
# squares/frames must not turn into diamonds, a plus must not become an x.
_MAX_ROTATION = {"square": 15.0, "diamond": 15.0, "frame": 15.0, "plus": 20.0, "heart": 30.0}
_DEFAULT_ROTATION = 45.0     # other shapes: within +-45 degrees of upright
_FORMAT_VERSION = 2
_MIN_VISIBLE = 0.25          # never hide more than 75 % of an object in total (several occluders)
_PLACEMENT_TRIES = 60        # per object; the size shrinks every 8 failed tries
_CONTRAST = 100.0            # wanted RGB distance between an object and the pixels it covers


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generated dataset (sizes are in pixels at ``image_size`` 128).

    ``class_weights_ratio``: frequency of the most (label 1) to the least common class (label C).
    ``max_occlusion``: largest fraction of an earlier object that one later object may hide.
    ``difficult_visible_fraction``: objects less visible than this get ``<difficult>1``.
    """

    n_trainval: int = 3000
    n_test: int = 500
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 8
    min_size: int = 14
    max_size: int = 60
    class_weights_ratio: float = 5.0
    max_occlusion: float = 0.35
    difficult_visible_fraction: float = 0.4
    jpeg_quality: int = 95
    textured_fraction: float = 0.3
    log_uniform_sizes: bool = False


@dataclass(frozen=True)
class SyntheticObject:
    """One drawn object.

    ``box`` is the tight integer box ``(x1, y1, x2, y2)`` of the full (un-occluded) mask in
    continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``); ``mask`` is the bool mask
    ``[y2-y1, x2-x1]`` of the drawn pixels inside the box; ``label`` is ``1..C``.
    """

    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray
    visible_fraction: float
    difficult: bool

    @property
    def name(self) -> str:
        return SHAPE_CLASSES[self.label - 1]


def _validate(config: SyntheticConfig, seed: int) -> None:
    """Raise ``ValueError`` naming the first bad field of ``config`` (or the seed)."""
    def bad(field: str, value: object, expected: str) -> ValueError:
        return ValueError(f"SyntheticConfig.{field}={value!r}: expected {expected}")

    c = config
    for f in dataclasses.fields(c):                   # ints must be ints; floats may be ints too
        value, kinds = getattr(c, f.name), (int, np.integer)
        if isinstance(f.default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise bad(f.name, value, "a bool")
            continue
        if isinstance(f.default, float):
            kinds = (int, float, np.integer, np.floating)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise bad(f.name, value, f"a {type(f.default).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected an int >= 0")
    checks = [
        ("n_trainval", c.n_trainval >= 1, ">= 1"),
        ("n_test", c.n_test >= 1, ">= 1"),
        ("image_size", 32 <= c.image_size <= 4096, "in [32, 4096]"),
        ("min_objects", c.min_objects >= 1, ">= 1"),
        ("max_objects", c.min_objects <= c.max_objects <= 64, f"in [min_objects={c.min_objects}, 64]"),
        ("min_size", c.min_size >= 4, ">= 4"),
        ("max_size", c.min_size <= c.max_size <= 128, f"in [min_size={c.min_size}, 128]"),
        ("class_weights_ratio", c.class_weights_ratio >= 1.0, ">= 1"),
        ("max_occlusion", 0.0 <= c.max_occlusion <= 1 - _MIN_VISIBLE, f"in [0, {1 - _MIN_VISIBLE}]"),
        ("difficult_visible_fraction", 0.0 <= c.difficult_visible_fraction <= 1.0, "in [0, 1]"),
        ("jpeg_quality", 1 <= c.jpeg_quality <= 100, "in [1, 100]"),
        ("textured_fraction", 0.0 <= c.textured_fraction <= 1.0, "in [0, 1]"),
    ]
    for field, ok, expected in checks:
        if not ok:
            raise bad(field, getattr(c, field), expected)


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, r_out: float, r_in: float | None = None, start: float = -90.0) -> np.ndarray:
    """Regular polygon (``r_in`` None) or star with alternating radii; vertex 0 at ``start``."""
    k = n if r_in is None else 2 * n
    t = np.deg2rad(start) + np.arange(k) * 2.0 * np.pi / k
    r = np.full(k, r_out) if r_in is None else np.where(np.arange(k) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


@functools.lru_cache(maxsize=None)
def _unit_shape(name: str) -> tuple[tuple[np.ndarray, int], ...]:
    """Polygons of one class in ``[-1, 1]^2`` (y down), each with fill 255 (draw) or 0 (cut)."""
    sq, a = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 0.34
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    heart = np.stack([16 * np.sin(t) ** 3,
                      -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    shapes = {
        "circle": [(_circle(), 255)],
        "square": [(sq, 255)],
        "triangle": [([[0, -1], [1, 0.732], [-1, 0.732]], 255)],          # equilateral
        "star": [(_regular(5, 1.0, 0.42), 255)],
        "plus": [([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                   [-1, a], [-1, -a], [-a, -a]], 255)],
        "ring": [(_circle(), 255), (_circle(0.58), 0)],
        "diamond": [([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], 255)],
        "hexagon": [(_regular(6, 1.0, start=0.0), 255)],
        "crescent": [(_circle(), 255), (_circle(0.82, 0.45, -0.2), 0)],
        "arrow": [([[-1, -0.26], [0.15, -0.26], [0.15, -0.75], [1, 0], [0.15, 0.75], [0.15, 0.26],
                    [-1, 0.26]], 255)],
        "heart": [(2.0 * (heart - heart.min(0)) / np.ptp(heart, axis=0) - 1.0, 255)],
        "frame": [(sq, 255), (0.6 * sq, 0)],
    }
    if name not in shapes:
        raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_CLASSES}")
    return tuple((np.asarray(p, float), fill) for p, fill in shapes[name])


def _shape_mask(name: str, size: float, aspect: float, angle: float) -> np.ndarray:
    """Tight bool mask ``[h, w]`` of one shape: extent ``size`` (longer side) before rotation."""
    half = size / 2.0
    scale = np.array([half * min(1.0, aspect), half * min(1.0, 1.0 / aspect)])
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rot = np.array([[c, -s], [s, c]])
    polys = [((p * scale) @ rot.T, fill) for p, fill in _unit_shape(name)]  # [V, 2] each
    pts = np.concatenate([p for p, _ in polys])
    lo = pts.min(0)
    w, h = (np.ceil(pts.max(0) - lo) + 3).astype(int)
    canvas = Image.new("L", (int(w), int(h)), 0)
    draw = ImageDraw.Draw(canvas)
    for p, fill in polys:
        draw.polygon((p - lo + 1.0).ravel().tolist(), fill=fill)
    mask = np.asarray(canvas) > 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Colour gradient + smooth noise + distractor lines, dots, blobs and strokes: ``[n, n, 3]``."""
    f = n / 128.0
    angle = rng.uniform(0.0, 2.0 * np.pi)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    k = int(rng.integers(3, 7))                       # smooth: built at k x k, then upsampled
    ramp = (np.arange(k) + 0.5) / k - 0.5
    t = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None] + 0.5  # [k, k]
    low = c1 + (c2 - c1) * t[..., None] + rng.uniform(0.3, 0.6) * rng.uniform(-128, 128, (k, k, 3))
    pil = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((n, n), Image.BICUBIC)
    draw = ImageDraw.Draw(pil)

    palette = iter(tuple(c) for c in rng.integers(0, 256, (20, 3)).tolist())  # <= 19 distractors

    def colour() -> tuple[int, int, int]:
        return next(palette)

    for _ in range(int(rng.integers(1, 5))):                                   # thin lines
        xy = (rng.uniform(-0.1, 1.1, 4) * n).tolist()
        draw.line(xy, fill=colour(), width=max(1, round(rng.uniform(1, 2.5) * f)))
    for _ in range(int(rng.integers(0, 11))):                                  # small dots
        x, y = rng.uniform(0, n, 2)
        r = rng.uniform(1.0, 2.5) * f
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour())
    for _ in range(int(rng.integers(0, 4))):                                   # irregular blobs
        m = int(rng.integers(7, 12))
        t_b = np.sort(rng.uniform(0, 2 * np.pi, m))
        rad = rng.uniform(3, 10) * f * rng.uniform(0.35, 1.3, m)
        centre = rng.uniform(0, n, 2)
        pts = centre + np.stack([rad * np.cos(t_b), rad * np.sin(t_b)], 1)       # [m, 2]
        draw.polygon(pts.ravel().tolist(), fill=colour())
    for _ in range(int(rng.integers(0, 3))):                                   # strokes
        steps = rng.normal(0, 12 * f, (int(rng.integers(2, 5)), 2))
        pts = rng.uniform(0, n, 2) + np.cumsum(steps, axis=0)                   # [k, 2]
        draw.line(pts.ravel().tolist(), fill=colour(), width=max(2, round(rng.uniform(2, 3.5) * f)),
                  joint="curve")
    return np.array(pil)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, f: float,
             textured: float = 0.3) -> np.ndarray:
    """Fill ``[h, w, 3]`` float: flat (``1 - textured``), else stripes or noise (half each)."""
    kind = rng.random()
    if kind >= textured:
        return np.broadcast_to(base, (h, w, 3))
    if kind < textured / 2:
        other = np.clip(255.0 - base + rng.normal(0, 40, 3), 0, 255)
        period = rng.uniform(3.0, 8.0) * max(f, 0.5)
        a = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        stripe = np.floor((xx * math.cos(a) + yy * math.sin(a)) / period) % 2 == 1  # [h, w]
        return np.where(stripe[..., None], other, base)
    return base + rng.normal(0.0, rng.uniform(15, 35), (h, w, 1))


def _class_probs(config: SyntheticConfig) -> np.ndarray:
    """Geometric weights: ``p[0] / p[C-1] == class_weights_ratio``."""
    c = len(SHAPE_CLASSES)
    w = config.class_weights_ratio ** (-np.arange(c) / (c - 1))
    return w / w.sum()


def render_sample(seed: int, index: int, config: SyntheticConfig = SyntheticConfig()
                  ) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Render image ``index`` of the dataset with ``seed`` (before JPEG compression).

    Objects are placed at random positions; a placement is rejected when it would newly hide
    more than ``max_occlusion`` of an earlier object (or leave it less than 25 % visible), and
    the size shrinks after repeated rejections. In each split the first C images start with
    class ``1..C`` in turn, so every class occurs in both splits when a split has >= C images.

    Returns:
        image ``uint8 [H, W, 3]`` and the objects in drawing order (later ones on top).
    """
    n, f = config.image_size, config.image_size / 128.0
    rng = np.random.default_rng([seed, index])
    img = _background(rng, n)                                             # uint8 [n, n, 3]
    owner = np.full((n, n), -1, np.int16)                                 # top object per pixel
    n_obj = int(rng.integers(config.min_objects, config.max_objects + 1))
    labels = rng.choice(len(SHAPE_CLASSES), size=n_obj, p=_class_probs(config))
    local = index if index < config.n_trainval else index - config.n_trainval
    if local < len(SHAPE_CLASSES):
        labels[0] = local
    lo_size, hi_size = max(3.0, config.min_size * f), min(float(n), config.max_size * f)
    placed: list[tuple[int, int, int, np.ndarray]] = []                  # (label, x0, y0, mask)
    area: list[int] = []
    visible: list[int] = []
    for label in labels:
        name = SHAPE_CLASSES[label]
        size = (math.exp(rng.uniform(math.log(lo_size), math.log(hi_size))) if config.log_uniform_sizes
                else rng.uniform(lo_size, hi_size))
        aspect = rng.uniform(0.8, 1.2)
        limit = _MAX_ROTATION.get(name, _DEFAULT_ROTATION)
        angle = rng.uniform(-limit, limit)
        mask = _shape_mask(name, size, aspect, angle)
        for attempt in range(_PLACEMENT_TRIES):
            if max(mask.shape) > n or (attempt > 0 and attempt % 8 == 0):
                size = size * 0.8 if max(mask.shape) > n else max(lo_size, size * 0.8)
                mask = _shape_mask(name, size, aspect, angle)
                if max(mask.shape) > n:
                    continue
            mh, mw = mask.shape
            x0, y0 = int(rng.integers(0, n - mw + 1)), int(rng.integers(0, n - mh + 1))
            hit = owner[y0:y0 + mh, x0:x0 + mw][mask]
            hit = hit[hit >= 0]
            if hit.size:
                newly = np.bincount(hit, minlength=len(area))                  # [n_placed]
                a, v = np.asarray(area), np.asarray(visible)
                if np.any(newly > config.max_occlusion * a) or np.any(v - newly < _MIN_VISIBLE * a):
                    continue
                for j in np.flatnonzero(newly):
                    visible[j] -= int(newly[j])
            break
        else:
            continue                                  # no room left: skip this object
        region = img[y0:y0 + mh, x0:x0 + mw]                                # view [mh, mw, 3]
        under = region[mask].mean(0)
        cands = rng.uniform(0, 255, (8, 3))
        dist = np.linalg.norm(cands - under, axis=1)
        ok = np.flatnonzero(dist >= _CONTRAST)
        base = cands[ok[0] if ok.size else int(np.argmax(dist))]
        region[mask] = np.clip(_texture(rng, mh, mw, base, f, config.textured_fraction)[mask], 0, 255)
        owner[y0:y0 + mh, x0:x0 + mw][mask] = len(placed)
        placed.append((int(label), x0, y0, mask))
        area.append(int(mask.sum()))
        visible.append(area[-1])
    if len(placed) < config.min_objects:
        raise RuntimeError(f"could not place {config.min_objects} objects in image {index}; "
                           f"lower min_objects or max_size, or raise max_occlusion ({config})")
    objects = []
    for (label, x0, y0, mask), a, v in zip(placed, area, visible):
        frac = v / a
        box = (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0])
        objects.append(SyntheticObject(label + 1, box, mask, frac,
                                       frac < config.difficult_visible_fraction))
    return img, objects


def _annotation_xml(image_id: str, n: int, objects: list[SyntheticObject]) -> str:
    """Standard VOC XML; the integer box ``(x1, y1, x2, y2)`` becomes 1-based ``x1+1 .. x2``."""
    parts = [f"<annotation>\n\t<folder>SyntheticShapes</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             "\t<source>\n\t\t<database>advlib synthetic shapes</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{n}</width>\n\t\t<height>{n}</height>\n\t\t<depth>3</depth>\n"
             "\t</size>\n\t<segmented>0</segmented>\n"]
    for o in objects:
        x1, y1, x2, y2 = o.box
        parts.append(f"\t<object>\n\t\t<name>{o.name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{int(o.difficult)}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _recipe(seed: int, config: SyntheticConfig) -> dict:
    """What determines the files (plain JSON types, so ``5`` and ``5.0`` give the same bytes)."""
    cfg = {f.name: type(f.default)(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {"format_version": _FORMAT_VERSION, "generator": "advlib.data.synthetic",
            "seed": int(seed), "config": cfg, "classes": list(SHAPE_CLASSES)}


def _split_ids(config: SyntheticConfig) -> dict[str, list[str]]:
    ids = [f"{i:06d}" for i in range(config.n_trainval + config.n_test)]
    return {"trainval": ids[:config.n_trainval], "test": ids[config.n_trainval:]}


def _mismatch(root: Path, recipe: dict, config: SyntheticConfig) -> str | None:
    """None if ``root`` holds a complete dataset made from ``recipe``, else what differs."""
    try:
        old = json.loads((root / "generation.json").read_text())
    except FileNotFoundError:
        return "has no generation.json (not a generated dataset)"
    except (OSError, ValueError) as err:
        return f"has an unreadable generation.json ({err})"
    diffs = [f"{k}: {old.get(k)!r} != requested {v!r}" for k, v in recipe.items()
             if k != "config" and old.get(k) != v]
    old_cfg = old.get("config") if isinstance(old.get("config"), dict) else {}
    diffs += [f"config.{k}: {old_cfg.get(k)!r} != requested {v!r}"
              for k, v in recipe["config"].items() if old_cfg.get(k) != v]
    if diffs:
        return "was generated with different settings (" + "; ".join(diffs) + ")"
    missing = [i for ids in _split_ids(config).values() for i in ids
               if not (root / "Annotations" / f"{i}.xml").is_file()
               or not (root / "JPEGImages" / f"{i}.jpg").is_file()]
    extra = ["classes.txt", "ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt"]
    missing += [e for e in extra if not (root / e).is_file()]
    if missing:
        return f"is incomplete ({len(missing)} files missing, e.g. {missing[:3]})"
    return None


def _write(tmp: Path, seed: int, config: SyntheticConfig, progress: bool) -> None:
    """Write the whole dataset into ``tmp`` (generation.json last)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp / sub).mkdir(parents=True)
    splits = _split_ids(config)
    counts = {s: {c: 0 for c in SHAPE_CLASSES} for s in splits}
    difficult = {s: {c: 0 for c in SHAPE_CLASSES} for s in splits}
    total = config.n_trainval + config.n_test
    with tqdm(total=total, desc=f"shapes -> {tmp.name}", disable=not progress, leave=False) as bar:
        for split, ids in splits.items():
            for image_id in ids:
                image, objects = render_sample(seed, int(image_id), config)
                Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg",
                                            quality=config.jpeg_quality, subsampling=0)
                (tmp / "Annotations" / f"{image_id}.xml").write_text(
                    _annotation_xml(image_id, config.image_size, objects))
                for o in objects:
                    counts[split][o.name] += 1
                    difficult[split][o.name] += int(o.difficult)
                bar.update(1)
            (tmp / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    (tmp / "classes.txt").write_text("".join(c + "\n" for c in SHAPE_CLASSES))
    meta = {**_recipe(seed, config), "images": {s: len(v) for s, v in splits.items()},
            "class_counts": counts, "difficult_counts": difficult}
    (tmp / "generation.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def generate_voc(root: str | Path, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                 overwrite: bool = False, progress: bool = True) -> Path:
    """Generate the shapes dataset in Pascal VOC layout under ``root`` (atomically, idempotent).

    Writes ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``, ``ImageSets/Main/{trainval,test}.txt``,
    ``classes.txt`` (names in label order 1..C) and ``generation.json`` (seed, config, class
    counts per split). Ids are ``000000..`` with trainval first. Box coordinates are 1-based
    like VOC: a reader recovers the tight pixel box as ``x1 = xmin - 1, x2 = xmax``.

    Args:
        root: dataset directory; generated in ``<root>.tmp-<pid>`` and renamed into place.
        seed: non-negative int; the same seed gives byte-identical files.
        config: dataset parameters (validated, ``ValueError`` names the bad field).
        overwrite: replace an existing ``root`` whose content differs (an identical dataset is
            kept; bump ``_FORMAT_VERSION`` when the drawing code changes).
        progress: show a tqdm progress bar.

    Returns:
        ``Path(root)``. Returns at once if ``root`` already holds this exact dataset.

    Raises:
        ValueError: bad ``config`` or ``seed``.
        FileExistsError: ``root`` exists, is not empty and differs, and ``overwrite`` is False.
    """
    _validate(config, seed)
    root = Path(root)
    recipe = _recipe(seed, config)
    if root.exists():
        problem = _mismatch(root, recipe, config)
        if problem is None:
            return root
        if not overwrite and not (root.is_dir() and not any(root.iterdir())):
            raise FileExistsError(f"{root} exists and {problem}; pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f"{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, seed, config, progress)
        if root.exists():                 # overwrite or empty placeholder: move it aside first
            old = root.parent / f"{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            try:
                os.replace(tmp, root)
            except OSError:               # another process finished first
                if _mismatch(root, recipe, config) is not None:
                    raise
                shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
