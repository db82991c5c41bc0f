"""Detectors: the :class:`Detector` protocol, the SSD family with dense outputs (white-box
targets), torchvision's RetinaNet behind the same interface, backbones by name, and
:data:`ARCHITECTURES` (detector family name -> builder) through which ``Experiment`` builds either."""

from advlib.models.backbones import BACKBONES, build_backbone
from advlib.models.detector import Detector
from advlib.models.retinanet import FocalOutput, RetinaNetDetector, build_retinanet
from advlib.models.ssd import DenseOutput, SSDDetector, build_ssd, count_parameters
from advlib.registry import Registry

#: detector family -> ``builder(backbone, num_classes, image_size, pretrained_backbone=False)``
ARCHITECTURES: Registry = Registry("detector architecture")
ARCHITECTURES.add("ssd", build_ssd)
ARCHITECTURES.add("retinanet", build_retinanet)


def build_detector(arch: str, backbone: str, num_classes: int, image_size, pretrained_backbone: bool = False):
    """A freshly initialised detector of family ``arch`` (:data:`ARCHITECTURES`) on ``backbone``."""
    return ARCHITECTURES[arch](backbone, num_classes, image_size, pretrained_backbone=pretrained_backbone)


__all__ = ["ARCHITECTURES", "BACKBONES", "DenseOutput", "Detector", "FocalOutput", "RetinaNetDetector", "SSDDetector",
           "build_backbone", "build_detector", "build_retinanet", "build_ssd", "count_parameters"]
