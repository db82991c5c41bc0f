"""Where the project lives: every default location (``data/``, ``results/``, ``figures/``) is
below :data:`PROJECT_ROOT`, and nothing written names a machine's folders (:func:`display_path`)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """The cache folder: ``$ADVLIB_CACHE_DIR`` when set (e.g. a larger disk, or a cache shared by
    several checkouts), else ``data/cache`` under the project. Models live at its top, results in
    ``results/``, adversarial sets in ``adv/``, file hashes and validation verdicts beside them."""
    env = os.environ.get("ADVLIB_CACHE_DIR", "")
    return Path(env).expanduser() if env else PROJECT_ROOT / "data" / "cache"


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the project root when it lies inside it (POSIX form), else unchanged:
    what results, identities and notebook output store instead of a machine's absolute path."""
    p = Path(path)
    try:
        return p.resolve().relative_to(PROJECT_ROOT.resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


__all__ = ["PROJECT_ROOT", "cache_root", "display_path"]
