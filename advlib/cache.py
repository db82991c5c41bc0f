"""The caches: trained models (:class:`ModelCache`, ``data/cache/<key>/``), evaluation results
(:class:`ResultCache`, ``data/cache/results/<key>.json``) and adversarial test sets
(:class:`AdversarialCache`, ``data/cache/adv/<key>/``, VOC layout, PNG).

Rules shared by all three: a key is :func:`hash_json` of everything that made the entry (a model's
recipe, profile, schedule, seed, dataset identity, backbone, parent and ``CODE_VERSION``; a result's
model, attack, data fingerprint and ``RESULTS_VERSION``); files are written atomically (temporary
file in the same folder + ``os.replace``: :func:`atomic_write_text` and friends); one key's
check-compute-write runs under the file lock ``<root>/<key>.lock``, so two processes (two notebooks,
a notebook and the CLI) never compute it twice; model weights carry a SHA-256 and load with
``weights_only=True``; an entry that is unreadable, fails its checksum or is malformed is
recomputed with a :class:`CorruptCacheWarning`; an unwritable cache directory costs one
:class:`CacheNotWritableWarning` and values are returned uncached. Images enter a cache, and are
evaluated, 8-bit: :func:`round_8bit` is the one rounding rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor, nn

from advlib.paths import cache_root
from advlib.results import to_jsonable

log = logging.getLogger(__name__)

#: Bump when a change to models/losses/train/data would change what a recipe trains.
CODE_VERSION = "1"
#: Bump when a change to attacks/evaluation would change a cached number.
#: "2": white-box adversarial images are rounded to 8 bits before detection, as transfer sets are.
RESULTS_VERSION = "2"


class CorruptCacheWarning(UserWarning):
    """A cache entry failed its checksum, could not be read or is malformed; it is recomputed."""


class CacheNotWritableWarning(UserWarning):
    """A cache directory cannot be written to; values are computed and returned, not cached."""


# ------------------------------------------------------------------ shared helpers
def hash_json(obj: Any, n: int) -> str:
    """The first ``n`` (1-64) hex digits of the SHA-256 of ``obj`` as sorted-key JSON (non-JSON
    values written with ``str``): the one cache-key rule."""
    if not 1 <= n <= 64:
        raise ValueError(f"n must be in [1, 64], got {n}")
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder + ``os.replace``)."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


_UNWRITABLE: set[str] = set()


def _not_writable(root: Path, exc: OSError, what: str) -> None:
    if str(root) not in _UNWRITABLE:
        _UNWRITABLE.add(str(root))
        warnings.warn(f"cache directory {root} is not writable ({exc}); {what} are not cached",
                      CacheNotWritableWarning, stacklevel=3)


@contextlib.contextmanager
def _key_lock(root: Path, key: str) -> Iterator[None]:
    """Hold ``<root>/<key>.lock`` (waits for another process); unlocked if ``root`` is not writable."""
    lock: FileLock | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{key}.lock"))
        lock.acquire()
    except OSError as exc:
        log.info("no lock for %s in %s (%s)", key, root, exc)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def to_uint8(images: Tensor) -> Tensor:
    """Images in ``[0, 1]`` -> ``uint8`` on the CPU (clamped, rounded to the nearest level)."""
    return (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def round_8bit(images: Tensor) -> Tensor:
    """The rule for every evaluated adversarial image: round to the nearest of 256 levels (float,
    CPU). Clean images are 8-bit, so for an ε of whole levels (2, 4, 8, 16 / 255) a projected image
    stays in the ε-ball once rounded; for another ε it may leave it by at most half a level."""
    return to_uint8(images).float().div(255.0)


def data_fingerprint(images: Tensor, targets: list[dict] | None = None) -> str:
    """Hash of an evaluation set's pixels (8-bit) and ground truth: equal data, equal key (an
    :class:`~advlib.imageset.ImageSet` hashes itself batch by batch, to the same digest)."""
    if hasattr(images, "fingerprint"):
        return images.fingerprint()
    return pixels_fingerprint(tuple(images.shape), [images], targets)


def pixels_fingerprint(shape: tuple[int, ...], batches, targets: list[dict] | None) -> str:
    """:func:`data_fingerprint` of a set of ``shape`` given as consecutive image batches (the same
    bytes in the same order, so a streamed set and its stacked tensor hash alike)."""
    h = hashlib.sha256()
    h.update(str(tuple(shape)).encode())
    for images in batches:
        h.update(to_uint8(images).numpy().tobytes())
    for t in targets or []:
        for k in ("boxes", "labels", "difficult"):
            if k in t:
                h.update(k.encode())
                h.update(t[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def model_fingerprint(model: nn.Module) -> str:
    """The model-cache key of a model if it has one (``model.zoo_key``), else a hash of its weights."""
    key = getattr(model, "zoo_key", None)
    if key:
        return str(key)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


# ------------------------------------------------------------------ models
def spec_key(spec: dict) -> str:
    """The model-cache key of a JSON-able spec (sorted keys, ``CODE_VERSION`` included)."""
    return hash_json({**spec, "code_version": CODE_VERSION}, 20)


class ModelCache:
    """A directory (``root``, default ``data/cache`` under the project) of trained models keyed by
    their spec (:func:`spec_key`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def dir(self, key: str) -> Path:
        return self.root / key

    def has(self, spec: dict) -> bool:
        key = spec_key(spec)
        return (self.dir(key) / "model.pt").exists() and (self.dir(key) / "meta.json").exists()

    def _save(self, spec: dict, model: nn.Module, extra: dict | None) -> dict:
        key = spec_key(spec)
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        data = buf.getvalue()
        meta = {"key": key, "spec": spec, "sha256": hashlib.sha256(data).hexdigest(),
                "code_version": CODE_VERSION, **(extra or {})}
        try:
            atomic_write_bytes(self.dir(key) / "model.pt", data)
            atomic_write_text(self.dir(key) / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str))
        except OSError as exc:
            _not_writable(self.root, exc, "models")
        return json.loads(json.dumps(meta, default=str))  # the types meta.json gives on a hit

    def save(self, spec: dict, model: nn.Module, extra: dict | None = None) -> str:
        """Write ``model``'s weights atomically with a checksum (a warning if the cache is not
        writable); returns the key."""
        return self._save(spec, model, extra)["key"]

    def load(self, spec: dict, model: nn.Module) -> dict | None:
        """Load cached weights into ``model``; ``None`` if absent or corrupt (with a warning)."""
        d = self.dir(spec_key(spec))
        path, meta_path = d / "model.pt", d / "meta.json"
        if not (path.exists() and meta_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if hashlib.sha256(path.read_bytes()).hexdigest() != meta.get("sha256"):
                raise ValueError("checksum mismatch")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            warnings.warn(f"cached model {path} is corrupt ({exc}); it will be retrained",
                          CorruptCacheWarning, stacklevel=2)
            return None
        return meta

    def get(self, spec: dict, build: Callable[[], nn.Module],
            train_fn: Callable[[nn.Module, Path], dict]) -> tuple[nn.Module, dict]:
        """The model for ``spec``: loaded from the cache, or built, trained and cached (another process
        training the same key is waited for under the key's file lock, then its model is loaded).

        Args:
            spec: everything that determines the model (JSON-able).
            build: returns a freshly initialised model; it must seed itself (called twice on a miss).
            train_fn: trains it in place given a checkpoint directory; returns extra metadata.

        Returns:
            ``(model in eval mode, meta)``.
        """
        from advlib.distributed import barrier, rank_world

        key = spec_key(spec)
        rank, world = rank_world()
        if rank != 0:  # torchrun: train beside rank 0, which alone locks, checkpoints and saves
            model = build()
            meta = self.load(spec, model)
            if meta is None:
                model = build()
                train_fn(model, self.dir(key) / "checkpoint")
                barrier()  # rank 0 has saved
                meta = self.load(spec, model)  # rank 0's weights and metadata (its BN statistics)
                if meta is None:
                    raise RuntimeError(f"rank {rank}: rank 0 did not save model {key} under {self.root}")
            return model.eval(), meta
        with _key_lock(self.root, key):
            model = build()
            meta = self.load(spec, model)
            if meta is not None:
                return model.eval(), meta
            model = build()  # a failed load may have touched the first one
            ckpt_dir = self.dir(key) / "checkpoint"
            log.info("training %s (key %s)", spec.get("recipe"), key)
            meta = self._save(spec, model, train_fn(model, ckpt_dir) or {})
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if world > 1:
            barrier()
        return model.eval(), meta


# ------------------------------------------------------------------ evaluation results
class ResultCache:
    """Evaluation results (JSON) keyed by everything that produced them.

    A robustness cell, a sweep or an analysis number is stored in ``<root>/<key>.json``, so a warm
    re-run of a notebook is evaluation-free. ``enabled=False`` (or the environment variable
    ``ADVLIB_NO_RESULT_CACHE=1``) turns it off.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "results"
        if enabled is None:
            enabled = os.environ.get("ADVLIB_NO_RESULT_CACHE", "") in ("", "0")
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    @classmethod
    def resolve(cls, arg: "ResultCache | bool | None") -> "ResultCache":
        """The cache an API argument names: ``None``/``True`` = the project's, ``False`` = off."""
        if arg is None or arg is True:
            return cls()
        if arg is False:
            return cls(enabled=False)
        return arg

    @staticmethod
    def key(**parts) -> str:
        return hash_json({**parts, "results_version": RESULTS_VERSION}, 24)

    def get(self, key: str, validate: Callable[[Any], bool] | None = None) -> Any:
        """The cached value of ``key``, or ``None`` if absent, unreadable, without ``value`` or rejected
        by ``validate`` (value -> whether it has the expected shape), with a :class:`CorruptCacheWarning`."""
        if not self.enabled:
            return None
        path = self.root / f"{key}.json"
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
            if not isinstance(entry, dict) or "value" not in entry:
                raise ValueError("no 'value'")
            value = entry["value"]
            if validate is not None and not validate(value):
                raise ValueError(f"malformed value {str(value)[:80]!r}")
            return value
        except Exception as exc:  # a torn, hand-edited or foreign file: recompute
            warnings.warn(f"unreadable cached result {path} ({exc}); recomputing", CorruptCacheWarning,
                          stacklevel=2)
            return None

    def put(self, key: str, value: Any, parts: dict | None = None) -> None:
        """Store ``value`` (JSON-able) atomically; a warning, no error, if the cache is not writable."""
        if not self.enabled:
            return
        try:
            atomic_write_text(self.root / f"{key}.json", json.dumps({"value": value, "parts": parts or {}}, default=str))
        except OSError as exc:
            _not_writable(self.root, exc, "results")

    def cached(self, compute: Callable[[], Any], validate: Callable[[Any], bool] | None = None, **parts) -> Any:
        """``compute()``'s JSON-able value for ``parts`` (the key): from the cache (if ``validate``
        accepts it, see :meth:`get`), or computed and stored."""
        key = self.key(**parts)
        value = self.get(key, validate)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        value = json.loads(json.dumps(to_jsonable(compute())))  # the same types on a hit and a miss
        self.put(key, value, parts)
        return value


# ------------------------------------------------------------------ adversarial test sets
from advlib.adv_cache import AdversarialCache  # noqa: E402  (its own module; re-exported here)

__all__ = ["AdversarialCache", "CacheNotWritableWarning", "CorruptCacheWarning", "ModelCache", "ResultCache",
           "atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "data_fingerprint", "hash_json",
           "model_fingerprint", "pixels_fingerprint", "round_8bit", "spec_key", "to_uint8"]
