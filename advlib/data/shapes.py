"""Rendering the generated shapes images: shape masks, backgrounds, textures and placement.

Images show 1..8 filled shapes from :data:`SHAPE_CLASSES` on a smooth, cluttered background.
Classes are told apart by shape only: colours are random, some objects are striped or noisy,
sizes, aspect (+-20 %) and rotation vary, objects may occlude each other (bounded by
``max_occlusion``), and class frequencies follow a geometric long tail (label 1 most common,
label C rarest, ratio ``class_weights_ratio``). Several classes per image give the within-image
class imbalance that CWAT is about.

Every image is rendered from its own generator ``numpy.random.default_rng([seed, index])``, so
an image never depends on generation order. :mod:`advlib.data.synthetic` writes the dataset.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPE_CLASSES", "SyntheticConfig", "SyntheticObject", "render_sample"]

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "plus", "ring",
    "diamond", "hexagon", "crescent", "arrow", "heart", "frame",
)
# Largest rotation (degrees, either way) that keeps each class recognisable and distinct:
# squares/frames must not turn into diamonds, a plus must not become an x.
_MAX_ROTATION = {"square": 15.0, "diamond": 15.0, "frame": 15.0, "plus": 20.0, "heart": 30.0}
_DEFAULT_ROTATION = 45.0     # other shapes: within +-45 degrees of upright
MIN_VISIBLE = 0.25          # never hide more than 75 % of an object in total (several occluders)
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
                if np.any(newly > config.max_occlusion * a) or np.any(v - newly < MIN_VISIBLE * a):
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
