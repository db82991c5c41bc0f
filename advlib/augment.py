"""SSD-style batched augmentation (scale jitter, flip, photometric) drawn from a seeded generator:
what the training loop (:func:`advlib.train.train`) applies to every batch or shard."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align


def augment_batch(images: Tensor, targets: list[dict], gen: torch.Generator) -> tuple[Tensor, list[dict]]:
    """SSD-style augmentation for a whole batch: scale jitter (zoom in/out), flip, photometric.

    All random numbers come from ``gen`` (CPU), so a run is reproducible on any device.

    Shape:
        images ``[B, 3, H, W]`` in [0, 1] -> same; boxes transformed, objects whose centre leaves
        the crop are dropped.
    """
    b, _, h, w = images.shape
    dev = images.device
    r = torch.rand(b, 9, generator=gen)  # every draw for the batch at once
    scale = torch.where(r[:, 0] < 0.5, 0.75 + 0.5 * r[:, 1], torch.ones(b))  # crop side / image side
    aspect = 0.9 + 0.2 * r[:, 2]
    cw, ch = scale * w * aspect.sqrt(), scale * h / aspect.sqrt()
    x0 = torch.minimum(torch.zeros(b), w - cw) + r[:, 3] * (w - cw).abs()
    y0 = torch.minimum(torch.zeros(b), h - ch) + r[:, 4] * (h - ch).abs()
    rois = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1).to(dev)
    fill = 0.5
    out = roi_align(images - fill, rois, (h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True) + fill
    flip = r[:, 5] < 0.5
    out = torch.where(flip.to(dev)[:, None, None, None], out.flip(-1), out)
    # photometric: brightness, contrast, saturation
    bright = (r[:, 6] - 0.5) * 0.2
    contrast = 0.75 + 0.5 * r[:, 7]
    sat = 0.7 + 0.6 * r[:, 8]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.to(dev).view(b, 1, 1, 1) + mean + bright.to(dev).view(b, 1, 1, 1)
    gray = out.mean(dim=1, keepdim=True)
    out = ((out - gray) * sat.to(dev).view(b, 1, 1, 1) + gray).clamp(0.0, 1.0)
    new_targets = []
    for i, t in enumerate(targets):
        boxes = t["boxes"]
        sx, sy = float(w / cw[i]), float(h / ch[i])
        off = torch.tensor([x0[i], y0[i], x0[i], y0[i]], device=boxes.device)
        nb = (boxes - off) * torch.tensor([sx, sy, sx, sy], device=boxes.device)
        cx, cy = (nb[:, 0] + nb[:, 2]) / 2, (nb[:, 1] + nb[:, 3]) / 2
        nb = torch.stack([nb[:, 0].clamp(0, w), nb[:, 1].clamp(0, h), nb[:, 2].clamp(0, w), nb[:, 3].clamp(0, h)], 1)
        keep = (cx > 0) & (cx < w) & (cy > 0) & (cy < h) & (nb[:, 2] - nb[:, 0] > 2) & (nb[:, 3] - nb[:, 1] > 2)
        nb = nb[keep]
        if flip[i]:
            nb = torch.stack([w - nb[:, 2], nb[:, 1], w - nb[:, 0], nb[:, 3]], 1)
        nt = {k: (v[keep] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == boxes.shape[0] else v)
              for k, v in t.items()}
        nt["boxes"] = nb
        new_targets.append(nt)
    return out, new_targets
