"""Detectors: the :class:`Detector` protocol, the SSD family with dense outputs (white-box
targets), torchvision's RetinaNet, FCOS and Faster R-CNN behind the same interface, backbones by name, and
:data:`ARCHITECTURES` (model family name -> builder) through which ``Experiment`` builds either."""

from advlib.models.backbones import BACKBONES, build_backbone
from advlib.models.detector import Detector, backbone_of
from advlib.models.families import ARCHITECTURES, build_detector
from advlib.models.faster_rcnn import FasterRCNNDetector, RCNNOutput, build_faster_rcnn
from advlib.models.fcos import FCOSDetector, FCOSOutput, build_fcos
from advlib.models.retinanet import FocalOutput, RetinaNetDetector, build_retinanet
from advlib.models.ssd import DenseOutput, SSDDetector, build_ssd, count_parameters

__all__ = ["ARCHITECTURES", "BACKBONES", "DenseOutput", "Detector", "FCOSDetector", "FCOSOutput", "FasterRCNNDetector",
           "FocalOutput", "RCNNOutput", "RetinaNetDetector", "SSDDetector",
           "backbone_of", "build_backbone", "build_detector", "build_faster_rcnn", "build_fcos", "build_retinanet",
           "build_ssd", "count_parameters"]
