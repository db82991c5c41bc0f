"""Data: detection datasets (VOC / COCO layout) yielding ``[3, H, W]`` images in ``[0, 1]`` and
target dicts (``boxes`` xyxy in model-input pixels, ``labels`` in ``1..C``, ``difficult``).

``advlib.data.synthetic`` (the generated default dataset, written in VOC layout) is a submodule of
this package and is imported lazily: ``advlib.data.synthetic`` works as an attribute without making
``import advlib.data`` depend on it.
"""

from importlib import import_module
from typing import Any

from advlib.data.datasets import (
    COCODataset,
    DetectionConcatDataset,
    DetectionDataset,
    VOCDataset,
    build_dataset,
    collate,
    find_data_root,
    resolve_classes,
    voc0712,
)

__all__ = [
    "COCODataset",
    "DetectionConcatDataset",
    "DetectionDataset",
    "VOCDataset",
    "build_dataset",
    "collate",
    "find_data_root",
    "resolve_classes",
    "voc0712",
]

# --- synthetic: OWNER TO WIRE ----------------------------------------------------------------
# Re-export names from advlib/data/synthetic.py here once its API is fixed, e.g.
#     from advlib.data.synthetic import make_synthetic_voc  # noqa: E402
# and add them to __all__. Until then only the submodule itself is exposed, lazily (PEP 562).
_LAZY_SUBMODULES = ("synthetic",)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
