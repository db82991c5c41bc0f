"""Feature extractors for the SSD family, selected by name.

Every backbone maps a normalised image batch ``[B, 3, H, W]`` to a list of feature maps, finest
first, and exposes ``out_channels`` (one entry per map). The small ones train on 2 CPU cores in
minutes (the default profile); ``vgg16``, ``vgg16_bn`` and ``resnet50`` are the papers' backbones
for real data and can load ImageNet weights through torchvision's weights API.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _extra_block(cin: int, cout: int) -> nn.Sequential:
    """SSD's extra layer: 1x1 bottleneck then a stride-2 3x3 conv (halves the map)."""
    mid = max(cout // 2, 16)
    return nn.Sequential(_conv_bn(cin, mid, kernel=1), _conv_bn(mid, cout, stride=2))



class _BodyThenExtras(nn.Module):
    """A body producing the finest map, then ``extras`` each halving the previous map."""

    body: nn.Module
    extras: nn.ModuleList

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.body(x)]
        for block in self.extras:
            feats.append(block(feats[-1]))
        return feats


class TinyVGG(_BodyThenExtras):
    """VGG-style BN backbone for small inputs (plain 3x3 conv-BN-ReLU, strided convs for pooling).

    32-64-128 channels down to stride 8 (first map), then ``extra_channels`` at strides 16, 32, 64.
    At 128 px the maps are 16², 8², 4², 2². Downsampling by stride-2 convolutions keeps the
    full-resolution work small (about 0.2 GMAC per 128 px image), so 2 CPU cores train it at
    tens of images per second.
    """

    def __init__(self, width: int = 32, extra_channels: int = 192, num_extra: int = 3) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w, stride=2), _conv_bn(w, w),
            _conv_bn(w, 2 * w, stride=2), _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, stride=2), _conv_bn(4 * w, 4 * w), _conv_bn(4 * w, 4 * w),
        )
        chans = [4 * w] + [extra_channels] * num_extra
        self.extras = nn.ModuleList(_extra_block(chans[i], chans[i + 1]) for i in range(num_extra))
        self.out_channels = chans


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride=stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.skip(x))


class TinyResNet(_BodyThenExtras):
    """ResNet-style BN backbone for small inputs (the second architecture of MTD's Table 3).

    A stem, residual stages to stride 8 (first map), then residual extras at strides 16, 32, 64.
    """

    def __init__(self, width: int = 32, extra_channels: int = 192, num_extra: int = 3) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w, stride=2), _Residual(w, 2 * w, 2), _Residual(2 * w, 4 * w, 2),
            _Residual(4 * w, 4 * w, 1),
        )
        chans = [4 * w] + [extra_channels] * num_extra
        self.extras = nn.ModuleList(_Residual(chans[i], chans[i + 1], 2) for i in range(num_extra))
        self.out_channels = chans


def imagenet(builder, weights: str | None):
    """``builder(weights=...)`` with torchvision's ImageNet weights ``weights`` (an enum name such as
    ``"VGG16_Weights.IMAGENET1K_FEATURES"``; ``None``: random initialisation). When they are not in
    torch.hub's cache and cannot be downloaded, a ``RuntimeError`` says which file to download
    from where and where to put it (``$TORCH_HOME/hub/checkpoints``)."""
    if weights is None:
        return builder(weights=None)
    import os
    from pathlib import Path
    from urllib.parse import urlparse

    import torch
    from torchvision.models import get_weight

    w = get_weight(weights)
    try:
        return builder(weights=w)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(w.url).path).name
        home = os.environ.get("TORCH_HOME", "~/.cache/torch (TORCH_HOME unset)")
        raise RuntimeError(
            f"cannot load the ImageNet weights {weights} ({type(exc).__name__}: {exc}). On a machine without "
            f"internet, download {w.url} elsewhere and copy it to {target} (torch.hub's cache: "
            f"$TORCH_HOME/hub/checkpoints, TORCH_HOME = {home}); or run without pretrained weights "
            "(a profile with pretrained_backbone=False)") from exc


class VGG16SSD(nn.Module):
    """The SSD300 VGG16 extractor (conv4_3 with L2 norm, dilated fc6/fc7, extras) from torchvision."""

    def __init__(self, batch_norm: bool, pretrained: bool) -> None:
        super().__init__()
        from torchvision.models import vgg16, vgg16_bn
        from torchvision.models.detection.ssd import SSDFeatureExtractorVGG

        if batch_norm:
            vgg = imagenet(vgg16_bn, "VGG16_BN_Weights.IMAGENET1K_V1" if pretrained else None)
        else:
            vgg = imagenet(vgg16, "VGG16_Weights.IMAGENET1K_FEATURES" if pretrained else None)
        self.extractor = SSDFeatureExtractorVGG(vgg.features, highres=False)
        self.out_channels = [512, 1024, 512, 256, 256, 256]

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.extractor(x).values())


class ResNet50SSD(nn.Module):
    """ResNet-50 C3/C4/C5 maps (strides 8, 16, 32) plus three stride-2 extras."""

    def __init__(self, pretrained: bool) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = imagenet(resnet50, "ResNet50_Weights.IMAGENET1K_V2" if pretrained else None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
        self.layer3, self.layer4 = net.layer3, net.layer4
        chans = [512, 1024, 2048, 512, 256, 256]
        self.extras = nn.ModuleList(_extra_block(chans[i], chans[i + 1]) for i in range(2, 5))
        self.out_channels = chans

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stem(x)
        c4 = self.layer3(c3)
        feats = [c3, c4, self.layer4(c4)]
        for block in self.extras:
            feats.append(block(feats[-1]))
        return feats


BACKBONES: dict[str, Callable[[bool], nn.Module]] = {
    "tiny_vgg": lambda pretrained: TinyVGG(),
    "tiny_resnet": lambda pretrained: TinyResNet(),
    "vgg16": lambda pretrained: VGG16SSD(batch_norm=False, pretrained=pretrained),
    "vgg16_bn": lambda pretrained: VGG16SSD(batch_norm=True, pretrained=pretrained),
    "resnet50": lambda pretrained: ResNet50SSD(pretrained=pretrained),
}


def build_backbone(name: str, pretrained: bool = False) -> nn.Module:
    """Build a backbone by name.

    Args:
        name: one of ``BACKBONES`` (``tiny_vgg``, ``tiny_resnet``, ``vgg16``, ``vgg16_bn``, ``resnet50``).
        pretrained: load ImageNet weights through torchvision's weights API (needs internet the
            first time; the tiny backbones have none and ignore it with a warning from the caller).

    Returns:
        A module returning a list of feature maps, with ``out_channels``.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained)
