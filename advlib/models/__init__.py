"""Detectors: SSD family with dense outputs (white-box targets) and backbones by name."""

from advlib.models.backbones import BACKBONES, build_backbone
from advlib.models.ssd import DenseOutput, SSDDetector, build_ssd, count_parameters

__all__ = ["BACKBONES", "DenseOutput", "SSDDetector", "build_backbone", "build_ssd", "count_parameters"]
