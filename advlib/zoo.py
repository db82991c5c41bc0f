"""The model cache: train once, load everywhere.

Models live in ``data/cache/<key>/model.pt`` with a ``meta.json`` beside it. The key is a hash of
everything that made the model: the recipe's spec, the profile, the training schedule, the seed,
the dataset's identity (root, split lists, class list: hashed, not timestamps), the backbone, the
parent model's key for fine-tuned recipes, and ``CODE_VERSION``. Files are written atomically
(temporary file + rename) and carry a SHA-256 in ``meta.json``; a file that does not match its
hash is reported and retrained, never silently loaded. A training killed mid-way resumes from
``data/cache/<key>/checkpoint/last.pt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from advlib.profiles import PROJECT_ROOT
from advlib.results import to_jsonable

log = logging.getLogger(__name__)

#: Bump when a change to models/losses/train/data would change what a recipe trains.
CODE_VERSION = "1"


class CorruptCacheWarning(UserWarning):
    """A cached model failed its checksum or could not be read; it will be retrained."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def spec_key(spec: dict) -> str:
    """Stable hash of a JSON-able spec (sorted keys)."""
    blob = json.dumps({**spec, "code_version": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ModelZoo:
    """A directory of trained models keyed by their spec.

    Args:
        root: cache directory (default ``data/cache`` under the project).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else PROJECT_ROOT / "data" / "cache"

    def dir(self, key: str) -> Path:
        return self.root / key

    def has(self, spec: dict) -> bool:
        key = spec_key(spec)
        return (self.dir(key) / "model.pt").exists() and (self.dir(key) / "meta.json").exists()

    def save(self, spec: dict, model: nn.Module, extra: dict | None = None) -> str:
        """Write ``model``'s weights atomically with a checksum; returns the key."""
        key = spec_key(spec)
        d = self.dir(key)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"model.pt.tmp-{os.getpid()}"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        digest = _sha256_file(tmp)
        os.replace(tmp, d / "model.pt")
        meta = {"key": key, "spec": spec, "sha256": digest, "code_version": CODE_VERSION, **(extra or {})}
        tmp_meta = d / f"meta.json.tmp-{os.getpid()}"
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        os.replace(tmp_meta, d / "meta.json")
        return key

    def load(self, spec: dict, model: nn.Module) -> dict | None:
        """Load cached weights into ``model``; ``None`` if absent or corrupt (with a warning)."""
        key = spec_key(spec)
        d = self.dir(key)
        path, meta_path = d / "model.pt", d / "meta.json"
        if not (path.exists() and meta_path.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if _sha256_file(path) != meta.get("sha256"):
                raise ValueError("checksum mismatch")
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            warnings.warn(f"cached model {path} is corrupt ({exc}); it will be retrained",
                          CorruptCacheWarning, stacklevel=2)
            return None
        return meta

    def get(
        self,
        spec: dict,
        build: Callable[[], nn.Module],
        train_fn: Callable[[nn.Module, Path], dict],
    ) -> tuple[nn.Module, dict]:
        """The model for ``spec``: loaded from the cache, or built, trained and cached.

        Args:
            spec: everything that determines the model (JSON-able).
            build: returns a freshly initialised model; it must seed itself (called twice on a miss).
            train_fn: trains it in place given a checkpoint directory; returns extra metadata.

        Returns:
            ``(model in eval mode, meta)``.
        """
        model = build()
        meta = self.load(spec, model)
        if meta is not None:
            return model.eval(), meta
        model = build()  # a failed load may have touched the first one
        key = spec_key(spec)
        ckpt_dir = self.dir(key) / "checkpoint"
        log.info("training %s (key %s)", spec.get("recipe"), key)
        extra = train_fn(model, ckpt_dir) or {}
        self.save(spec, model, extra)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return model.eval(), json.loads((self.dir(key) / "meta.json").read_text())


# ------------------------------------------------------------------ evaluation results
#: Bump when a change to attacks/evaluation would change a cached number.
RESULTS_VERSION = "1"


def data_fingerprint(images: torch.Tensor, targets: list[dict] | None = None) -> str:
    """Hash of an evaluation set's pixels (8-bit) and ground truth: equal data, equal key."""
    h = hashlib.sha256()
    u8 = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    h.update(str(tuple(u8.shape)).encode())
    h.update(u8.numpy().tobytes())
    for t in targets or []:
        for k in ("boxes", "labels", "difficult"):
            if k in t:
                h.update(k.encode())
                h.update(t[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class ResultCache:
    """Evaluation results (JSON) keyed by everything that produced them.

    A robustness cell, a sweep or an analysis number is stored in ``data/cache/results/<key>.json``
    where the key hashes the model's zoo key (or weights), the attack spec, the evaluation data's
    fingerprint and ``RESULTS_VERSION``; a warm re-run of a notebook is then evaluation-free.
    Writes are atomic; an unreadable entry is recomputed. ``enabled=False`` (or the environment
    variable ``ADVLIB_NO_RESULT_CACHE=1``) turns it off.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool | None = None) -> None:
        self.root = Path(root) if root is not None else PROJECT_ROOT / "data" / "cache" / "results"
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
        blob = json.dumps({**parts, "results_version": RESULTS_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, key: str):
        if not self.enabled:
            return None
        path = self.root / f"{key}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["value"]
        except Exception as exc:  # a torn or hand-edited file: recompute
            log.warning("unreadable cached result %s (%s); recomputing", path, exc)
            return None

    def put(self, key: str, value, parts: dict | None = None) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{key}.json"
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"value": value, "parts": parts or {}}, default=str))
        os.replace(tmp, path)

    def cached(self, compute: Callable[[], object], **parts):
        """``compute()``'s JSON-able value for ``parts``: from the cache, or computed and stored."""
        key = self.key(**parts)
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        value = json.loads(json.dumps(to_jsonable(compute())))  # the same types on a hit and a miss
        self.put(key, value, parts)
        return value
