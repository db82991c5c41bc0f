"""What attacks, training recipes and evaluation need of a detector: the :class:`Detector` protocol.

Our SSD (:class:`~advlib.models.ssd.SSDDetector`) implements it; other families (torchvision's
RetinaNet, FCOS, Faster R-CNN for RAD's transfer zoo) are wrapped to it. Dense one-stage
detectors expose raw per-anchor outputs so that the shared loss decomposition
(:mod:`advlib.losses`) applies to them; black-box targets need only :meth:`Detector.detect`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Detector(Protocol):
    """A detector the attack engine, the recipes and evaluation can use.

    Attributes:
        num_classes: foreground classes ``C`` (labels ``1..C``; 0 is background).
        anchors: ``[A, 4]`` default boxes, xyxy in input pixels (matched once per batch).
        box_coder: encodes/decodes box offsets (``weights``, ``encode_single``, ``decode_single``).
        score_thresh: post-processing score threshold (what the mAP counts as a detection).
        training: ``nn.Module``'s mode flag (attacks run in eval mode and restore it).
    """

    num_classes: int
    anchors: Tensor
    score_thresh: float
    training: bool

    def __call__(self, images: Tensor):
        """Dense outputs ``(cls_logits [B, A, C+1], box_deltas [B, A, 4])`` for images in ``[0, 1]``."""

    def decode(self, box_deltas: Tensor) -> Tensor:
        """``[B, A, 4]`` offsets -> xyxy boxes in input pixels."""

    def postprocess(self, output, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        """Dense outputs -> per-image ``{boxes, scores, labels}`` after NMS."""

    def detect(self, images: Tensor, score_thresh: float | None = None,
               batch_size: int = 64) -> list[dict[str, Tensor]]:
        """Per-image detections ``{boxes [K, 4], scores [K], labels [K]}`` (mode restored)."""

    def eval(self): ...

    def train(self, mode: bool = True): ...


def backbone_of(model):
    """The feature extractor of a detector of any family: our SSD's ``backbone``, or the body under
    the FPN of a wrapped torchvision detector (``model.net.backbone.body``: RetinaNet, FCOS, Faster
    R-CNN), the same module type for the same backbone name.

    Raises:
        TypeError: a model with neither (naming its type).
    """
    net = getattr(model, "net", None)
    body = getattr(getattr(net, "backbone", None), "body", None) if net is not None else getattr(model, "backbone", None)
    if body is None:
        raise TypeError(f"{type(model).__name__} has no backbone this library knows (model.backbone or "
                        f"model.net.backbone.body)")
    return body


__all__ = ["Detector", "backbone_of"]
