"""Detectors: the :class:`Detector` protocol, the SSD family with dense outputs (white-box
targets) and backbones by name."""

from advlib.models.backbones import BACKBONES, build_backbone
from advlib.models.detector import Detector
from advlib.models.ssd import DenseOutput, SSDDetector, build_ssd, count_parameters

__all__ = ["BACKBONES", "DenseOutput", "Detector", "SSDDetector", "build_backbone", "build_ssd", "count_parameters"]
