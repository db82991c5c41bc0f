"""Detectors: the :class:`Detector` protocol, the SSD family with dense outputs (white-box
targets), torchvision's RetinaNet behind the same interface, backbones by name, and
:data:`ARCHITECTURES` (model family name -> builder) through which ``Experiment`` builds either."""

from advlib.models.backbones import BACKBONES, build_backbone
from advlib.models.detector import Detector
from advlib.models.families import ARCHITECTURES, build_detector
from advlib.models.retinanet import FocalOutput, RetinaNetDetector, build_retinanet
from advlib.models.ssd import DenseOutput, SSDDetector, build_ssd, count_parameters

__all__ = ["ARCHITECTURES", "BACKBONES", "DenseOutput", "Detector", "FocalOutput", "RetinaNetDetector", "SSDDetector",
           "build_backbone", "build_detector", "build_retinanet", "build_ssd", "count_parameters"]
