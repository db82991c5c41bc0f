"""Data: detection datasets (VOC / COCO layout) yielding ``[3, H, W]`` images in ``[0, 1]`` and
target dicts (``boxes`` xyxy in model-input pixels, ``labels`` in ``1..C``, ``difficult``).

Modules: ``layout`` (roots, splits), ``classes``, ``base`` (dataset base, concat, collate),
``voc``, ``coco``, ``build``, ``validate``, ``images``, ``hashing``; ``synthetic`` and ``shapes``
(the generated default dataset, written in VOC layout).
"""

from advlib.data.base import DetectionConcatDataset, DetectionDataset, collate
from advlib.data.build import build_dataset
from advlib.data.classes import resolve_classes
from advlib.data.coco import COCODataset
from advlib.data.hashing import hash_files
from advlib.data.images import to_rgb
from advlib.data.layout import find_data_root, resolve_splits
from advlib.data.validate import validate_images
from advlib.data.voc import VOCDataset, VOCObject, voc0712, voc_annotation_xml

__all__ = [
    "COCODataset",
    "DetectionConcatDataset",
    "DetectionDataset",
    "VOCDataset",
    "VOCObject",
    "build_dataset",
    "collate",
    "find_data_root",
    "hash_files",
    "resolve_classes",
    "resolve_splits",
    "to_rgb",
    "validate_images",
    "voc0712",
    "voc_annotation_xml",
]
