"""Content hashes of files with a persistent per-file cache, and the data layer's cache folder.

The cache is one JSON file mapping ``"<resolved path>"`` to ``[size, mtime_ns, sha256]``; a file
whose size or modification time changed is hashed again. Writes merge with what is on disk under
an exclusive lock (where ``fcntl`` exists) and replace the file atomically (temporary file +
``os.replace``), so concurrent writers never leave a corrupt file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: atomic replace still avoids corruption
    fcntl = None

PathLike = str | os.PathLike
_MEMORY: dict[str, dict[str, list]] = {}  # cache file -> entries, per process


def cache_disabled() -> bool:
    """True when ``ADVLIB_NO_RESULT_CACHE`` is set (unit tests): default caches stay in memory."""
    return os.environ.get("ADVLIB_NO_RESULT_CACHE", "") not in ("", "0")


def default_cache_dir() -> Path:
    """``<project>/data/cache``: where the data layer keeps file hashes and validation verdicts."""
    from advlib.paths import cache_root

    return cache_root()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as compact JSON to ``path`` atomically (the project's one atomic writer)."""
    from advlib.cache import atomic_write_text  # not at the top: advlib.cache imports advlib.data lazily

    atomic_write_text(path, json.dumps(data, separators=(",", ":")))


def hash_files(paths: Sequence[Path], cache_file: PathLike | None = None) -> list[str]:
    """sha256 of each file's bytes, reusing cached digests of files that did not change.

    Args:
        paths: files to hash.
        cache_file: the JSON cache; default ``<project>/data/cache/file_hashes.json`` (kept in
            memory only when ``ADVLIB_NO_RESULT_CACHE`` is set).

    Returns:
        Hex digests in the order of ``paths``.

    Raises:
        FileNotFoundError: a file is missing (named).
    """
    persist = cache_file is not None or not cache_disabled()
    cache_path = Path(cache_file) if cache_file is not None else default_cache_dir() / "file_hashes.json"
    key = str(cache_path.resolve()) if persist else "<memory>"
    if key not in _MEMORY:
        _MEMORY[key] = _read_json(cache_path) if persist else {}
    entries = _MEMORY[key]
    digests, new = [], {}
    folders: dict[str, str] = {}  # each folder resolved once (a dataset's files share a few); strings, not Paths
    for p in paths:
        folder, name = os.path.split(os.fspath(p))
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = str(Path(folder).resolve())
        path = os.path.join(real, name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file {p} not found (hashing the dataset's images)") from None
        old = entries.get(path)
        if isinstance(old, list) and len(old) == 3 and old[:2] == [st.st_size, st.st_mtime_ns]:
            digests.append(old[2])
            continue
        digest = sha256_file(Path(path))
        new[path] = [st.st_size, st.st_mtime_ns, digest]
        digests.append(digest)
    if new:
        entries.update(new)
        if persist:
            with _locked(cache_path):
                merged = _read_json(cache_path)  # entries other processes wrote meanwhile
                merged.update(new)
                write_json_atomic(cache_path, merged)
                entries.update(merged)
    return digests
