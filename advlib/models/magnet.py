"""MagNet for detectors (Meng & Chen 2017; AdvAmd's Table 1 baseline): an auto-encoder
*reformer* in front of the detector and a reconstruction-error *detector* that rejects inputs.

* :class:`AutoEncoder`: MagNet's CIFAR reformer shape (three 3×3 convolutions, no down-sampling,
  sigmoid output), trained on clean images only (with small Gaussian noise, as MagNet).
* :class:`MagNetDetector`: a :class:`~advlib.models.detector.Detector` whose forward is
  ``detector(reformer(x))`` (so white-box attacks differentiate through the reformer) and whose
  :meth:`MagNetDetector.detect` returns **no detections for a rejected image**: its
  reconstruction error (mean squared, per image) exceeds ``threshold``. In mAP a rejected image
  therefore misses all its objects (the defence refuses to answer; the notebook says so).
  ``threshold`` is set on clean validation images (:func:`rejection_threshold`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advlib.utils import eval_mode


class AutoEncoder(nn.Module):
    """MagNet's reformer: conv3×3 (3→w) → ReLU → conv3×3 (w→w) → ReLU → conv3×3 (w→3) → sigmoid."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def reconstruction_error(ae: nn.Module, images: Tensor, batch_size: int = 64) -> Tensor:
    """Per-image mean squared reconstruction error ``[N]`` (eval mode, no gradient)."""
    out = []
    with torch.no_grad(), eval_mode(ae):
        dev = next(ae.parameters()).device
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(dev)
            out.append(((ae(x) - x) ** 2).mean(dim=(1, 2, 3)).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def rejection_threshold(ae: nn.Module, clean_images: Tensor, false_positive_rate: float = 0.05) -> float:
    """The reconstruction error that rejects ``false_positive_rate`` of clean images (MagNet sets
    its detector's threshold this way on clean validation data)."""
    if not 0.0 <= false_positive_rate < 1.0:
        raise ValueError(f"false_positive_rate must be in [0, 1), got {false_positive_rate}")
    err = reconstruction_error(ae, clean_images)
    if err.numel() == 0:
        raise ValueError("rejection_threshold needs at least one clean image")
    return float(torch.quantile(err.double(), 1.0 - false_positive_rate))


class MagNetDetector(nn.Module):
    """A detector behind MagNet's reformer and rejection detector (see the module docstring).

    Args:
        detector: the protected detector (not retrained: MagNet leaves the classifier alone).
        reformer: a trained :class:`AutoEncoder`.
        threshold: reconstruction error above which an image is rejected (``inf``: never).
    """

    def __init__(self, detector: nn.Module, reformer: nn.Module, threshold: float = float("inf")) -> None:
        super().__init__()
        self.detector, self.reformer = detector, reformer
        # a buffer, so that the threshold is part of the weights' fingerprint (result-cache keys)
        self.register_buffer("rejection_threshold", torch.tensor(float(threshold), dtype=torch.float64))
        self.last_rejected: Tensor | None = None

    @property
    def threshold(self) -> float:
        return float(self.rejection_threshold)

    # what attacks and evaluation read from a detector
    num_classes = property(lambda self: self.detector.num_classes)
    anchors = property(lambda self: self.detector.anchors)
    box_coder = property(lambda self: self.detector.box_coder)
    image_size = property(lambda self: self.detector.image_size)
    score_thresh = property(lambda self: self.detector.score_thresh)

    @property
    def match(self):
        """The inner detector's matching rule, if it has its own (``None``: the SSD's)."""
        return getattr(self.detector, "match", None)

    def forward(self, images: Tensor):
        return self.detector(self.reformer(images))

    def decode(self, box_deltas: Tensor) -> Tensor:
        return self.detector.decode(box_deltas)

    def postprocess(self, output, score_thresh: float | None = None) -> list[dict[str, Tensor]]:
        return self.detector.postprocess(output, score_thresh)

    @torch.no_grad()
    def detect(self, images: Tensor, score_thresh: float | None = None, batch_size: int = 64) -> list[dict[str, Tensor]]:
        """Detections of the reformed images; none for a rejected image (``last_rejected`` [N])."""
        out: list[dict[str, Tensor]] = []
        rejected = []
        with eval_mode(self):
            for i in range(0, images.shape[0], batch_size):
                x = images[i:i + batch_size]
                x = x.to(next(self.parameters()).device)
                r = self.reformer(x)
                bad = ((r - x) ** 2).mean(dim=(1, 2, 3)) > self.threshold
                dets = self.detector.postprocess(self.detector(r), score_thresh)
                for d, b in zip(dets, bad.tolist()):
                    out.append({k: v[:0] for k, v in d.items()} if b else d)
                rejected.append(bad.cpu())
        self.last_rejected = torch.cat(rejected) if rejected else torch.zeros(0, dtype=torch.bool)
        return out


__all__ = ["AutoEncoder", "MagNetDetector", "reconstruction_error", "rejection_threshold"]
