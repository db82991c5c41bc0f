"""RobustDet's adversarial image discriminator (AID) and its online triplet loss (Sec. 4.3, eq. 2).

The AID maps an image to a K-way probability vector ``P = D(x)``; RobustDet's adversarially-aware
convolutions mix K kernels with these weights. Eq. 2 pulls the vectors of images of one kind
(clean or adversarial) together and pushes the two kinds apart by a margin γ = 0.6.

What the official code (7eu7d7/RobustDet, ``triplet/``) does and we follow:

- Mining uses a Jensen-Shannon distance (:func:`js_distance_matrix`, the official ``pdist_js``,
  which is ``2/K`` times the JS divergence). For every anchor-positive pair of one kind, a negative
  is drawn uniformly among those with ``d(a, p) - d(a, n) + γ > 0``.
- The loss itself uses squared L2 distances between the probability vectors, not JS:
  ``mean over triplets of relu(‖a - p‖² - ‖a - n‖² + γ)``.

A consequence worth knowing: ``d <= 2·ln 2 / K`` (0.35 for K = 4), so with γ = 0.6 and K >= 3
every negative passes the mining test and mining is a uniformly random choice of negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlib.models.ssd import IMAGENET_MEAN, IMAGENET_STD

#: Smallest probability inside a logarithm of :func:`js_distance_matrix`.
JS_EPS = 1e-12


class AdversarialImageDiscriminator(nn.Module):
    """The AID: images in ``[0, 1]`` to K-way probabilities (the mixing weights of AAConv).

    Departure from the official code: the official AID is an ImageNet-pretrained ResNet-18 with
    a K-way linear layer and a softmax; ours is a small CNN trained from scratch (four stride-2
    conv-BN-ReLU blocks of ``width, 2·width, 4·width, 4·width`` channels, global average pooling,
    a linear layer to K, softmax), sized for the small inputs and CPU budget of this project.

    Args:
        K: number of kernels mixed by the adversarially-aware convolutions (the paper's M; 4).
        width: channels of the first block.

    Shape:
        images ``[B, 3, H, W]`` in ``[0, 1]`` (normalised inside with ImageNet mean/std, as
        :class:`~advlib.models.ssd.SSDDetector`) -> probabilities ``[B, K]``, rows summing to 1.
    """

    def __init__(self, K: int = 4, width: int = 16) -> None:
        super().__init__()
        if K < 2:
            raise ValueError(f"K must be >= 2, got {K}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.K = K
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.features = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(chans[i + 1]),
                    nn.ReLU(inplace=True),
                )
                for i in range(4)
            )
        )
        self.fc = nn.Linear(chans[-1], K)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, unit BN, a small linear layer (outputs start near uniform).
        Deterministic given ``torch.manual_seed``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def logits(self, images: Tensor) -> Tensor:
        """Pre-softmax scores.

        Shape:
            images ``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, K]``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        x = self.features((images - self.mean) / self.std)  # [B, 4w, H/16, W/16]
        return self.fc(x.mean(dim=(2, 3)))  # global average pool [B, 4w] -> [B, K]

    def forward(self, images: Tensor) -> Tensor:
        """Probabilities ``[B, K]`` (softmax of :meth:`logits`) for images ``[B, 3, H, W]``."""
        return torch.softmax(self.logits(images), dim=-1)


AID = AdversarialImageDiscriminator


def js_distance_matrix(p: Tensor) -> Tensor:
    """Pairwise distances of probability rows, as the official ``pdist_js``.

    ``d(p1, p2) = mean_k [p1 log p1 - p1 log m + p2 log p2 - p2 log m]`` with ``m = (p1 + p2) / 2``,
    i.e. ``(2 / K) · JS(p1 ‖ p2)`` (a mean over the K entries, not a sum, and no ½). Every
    probability inside a logarithm is clamped at ``JS_EPS`` (1e-12), so a zero entry contributes
    ``0 · log(1e-12) = 0`` (its limit) instead of the official ``0 · log 0 = nan``, and gradients
    stay finite.

    Args:
        p: probability rows (non-negative, summing to 1).

    Shape:
        p ``[N, K]`` -> ``[N, N]``, symmetric, zero diagonal.
    """
    if p.dim() != 2:
        raise ValueError(f"p must be [N, K] probability rows, got shape {tuple(p.shape)}")
    p1 = p.unsqueeze(0)  # [1, N, K]: p1[i, j] = p[j]
    p2 = p.unsqueeze(1)  # [N, 1, K]: p2[i, j] = p[i]
    m = (p1 + p2) / 2  # [N, N, K]
    log_m = m.clamp_min(JS_EPS).log()
    terms = p1 * (p1.clamp_min(JS_EPS).log() - log_m) + p2 * (p2.clamp_min(JS_EPS).log() - log_m)
    return terms.mean(dim=-1)  # [N, N, K] -> [N, N]


def _check(probs: Tensor, is_adv: Tensor) -> Tensor:
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, K], got shape {tuple(probs.shape)}")
    if is_adv.dim() != 1 or is_adv.shape[0] != probs.shape[0]:
        raise ValueError(f"is_adv must be [N] with N = {probs.shape[0]}, got shape {tuple(is_adv.shape)}")
    if is_adv.is_floating_point():
        raise ValueError(f"is_adv must be bool or integer labels, got {is_adv.dtype}")
    return is_adv.detach().to("cpu", torch.int64)


@torch.no_grad()
def mine_triplets(
    probs: Tensor, is_adv: Tensor, margin: float = 0.6, generator: torch.Generator | None = None
) -> Tensor:
    """The official ``RandomNegativeTripletSelector`` with the JS distance.

    For each label in increasing order (0 = clean, then 1 = adversarial) with at least two
    members, and for each of its anchor-positive pairs ``(i, j)``, ``i < j`` in
    ``itertools.combinations`` order, the loss values ``d(a, p) - d(a, n) + margin`` over every
    negative ``n`` (another label) are computed with :func:`js_distance_matrix`, and a negative is
    drawn uniformly among those with a positive value (none: no triplet for this pair). If no
    triplet is found at all but the last label with a pair also has negatives, the official
    fallback triplet is used: that label's last pair and its first negative.

    Args:
        probs: AID probabilities (detached here; mining needs no gradient).
        is_adv: bool or integer labels (0 clean, 1 adversarial; any integers work).
        margin: γ (0.6 in the paper).
        generator: CPU generator for the random negatives (mining runs on the CPU); ``None`` uses
            torch's global generator.

    Returns:
        Triplets ``[T, 3]`` int64 on the CPU: anchor, positive, negative indices into ``probs``.

    Shape:
        probs ``[N, K]``, is_adv ``[N]`` -> ``[T, 3]``.
    """
    labels = _check(probs, is_adv)
    p = probs.detach().cpu()
    d = js_distance_matrix(p if p.dtype in (torch.float32, torch.float64) else p.float())  # [N, N]
    triplets: list[Tensor] = []
    fallback: Tensor | None = None
    for label in torch.unique(labels).tolist():  # sorted
        members = torch.nonzero(labels == label).squeeze(1)  # [M]
        if members.numel() < 2:
            continue
        negatives = torch.nonzero(labels != label).squeeze(1)  # [Nn]
        pairs = torch.combinations(members, 2)  # [P, 2], itertools.combinations order
        fallback = torch.stack([pairs[-1, 0], pairs[-1, 1], negatives[0]]) if negatives.numel() else None
        if negatives.numel() == 0:
            continue
        a, p = pairs[:, 0], pairs[:, 1]
        loss_values = d[a, p].unsqueeze(1) - d[a][:, negatives] + margin  # [P, Nn]
        valid = loss_values > 0
        rows = torch.nonzero(valid.any(dim=1)).squeeze(1)  # pairs with at least one hard negative
        if rows.numel() == 0:
            continue
        pick = torch.multinomial(valid[rows].double(), 1, generator=generator).squeeze(1)  # [R]
        triplets.append(torch.stack([a[rows], p[rows], negatives[pick]], dim=1))  # [R, 3]
    if triplets:
        return torch.cat(triplets)
    if fallback is not None:
        return fallback.view(1, 3)
    return torch.zeros(0, 3, dtype=torch.int64)


def triplet_loss(
    probs: Tensor, is_adv: Tensor, margin: float = 0.6, generator: torch.Generator | None = None
) -> tuple[Tensor, int]:
    """RobustDet's AID loss (eq. 2) as the official ``OnlineTripletLoss(0.6, pdist=pdist_js)``.

    Triplets come from :func:`mine_triplets` (JS distance); the loss is the mean over triplets of
    ``relu(‖a - p‖² - ‖a - n‖² + margin)`` with squared L2 distances between probability rows
    (the official loss; the paper's eq. 2 writes JS and a sum), differentiable w.r.t. ``probs``.

    With no triplet (fewer than two images of every kind, or only one kind) the official code
    returns a constant 0.1; we return a zero instead (``0 · probs.sum()``, which keeps a
    ``grad_fn`` when ``probs`` requires grad and contributes no gradient), with 0 triplets.

    Args:
        probs: AID probabilities.
        is_adv: bool or integer labels (0 clean, 1 adversarial).
        margin: γ (0.6 in the paper).
        generator: CPU generator for the random negatives (``None``: torch's global one).

    Returns:
        ``(loss, n_triplets)``: a scalar tensor on ``probs``' device and the number of triplets.

    Shape:
        probs ``[N, K]``, is_adv ``[N]`` -> scalar.
    """
    triplets = mine_triplets(probs, is_adv, margin, generator).to(probs.device)  # [T, 3]
    if triplets.shape[0] == 0:
        return probs.sum() * 0.0, 0
    anchor, positive, negative = probs[triplets[:, 0]], probs[triplets[:, 1]], probs[triplets[:, 2]]  # [T, K]
    ap = (anchor - positive).pow(2).sum(dim=1)  # [T]
    an = (anchor - negative).pow(2).sum(dim=1)  # [T]
    return F.relu(ap - an + margin).mean(), int(triplets.shape[0])


__all__ = ["AID", "AdversarialImageDiscriminator", "JS_EPS", "js_distance_matrix", "mine_triplets", "triplet_loss"]
