"""One projected-gradient engine for every gradient attack.

An attack is an *objective* (a per-image loss to maximise, see :mod:`advlib.attacks.objectives`)
plus an :class:`AttackSpec` (budget and update rule). The engine does, per step:
input transformations averaged over copies (DI / SI), the input gradient of the summed per-image
loss (never parameter gradients), Gaussian smoothing of the gradient (TI), momentum (MI-FGSM),
the update (``sign`` for FGSM/PGD, mean-L1-normalised for RAD/RAP-style, L∞-normalised for DAG),
projection onto the ε-ball around the clean image and onto ``[0, 1]``, and a per-image
early-stop mask. FGSM is one step without random start.

Random numbers (random start, DI) come from per-image generators seeded by the spec's seed and
the image's own bytes, so attacking a batch gives the same result as attacking each image alone.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlib.utils import eval_mode

UPDATES = ("sign", "l1", "linf")
TRANSFORMS = ("di", "ti", "si")


@dataclass(frozen=True)
class AttackSpec:
    """Everything that defines an attack; carried by every number it produces.

    Attributes:
        objective: objective name (``cls``, ``loc``, ``multibox``, ``mda``, ``toa``, ``owa``,
            ``cwa``, ``dag``, ``rap``, ``dfool``, ``shrink``...).
        eps: L∞ budget in ``[0, 1]`` units (the papers' "ε = 8" is ``8/255``).
        step_size: per-step size in ``[0, 1]`` units (for ``linf`` updates: γ, see DAG).
        steps: number of steps (``1`` and no random start = FGSM).
        random_start: uniform start in the ε-ball.
        update: ``sign`` | ``l1`` (gradient / mean |gradient|) | ``linf`` (gradient / max |gradient|).
        momentum: MI-FGSM decay μ (0 = none).
        transforms: subset of ``di``, ``ti``, ``si``.
        di_prob, ti_kernel, si_copies: transformation settings.
        di_copies: DI draws this many transformed copies per step and averages their gradients
            (Xie et al.'s and RAD's 4; 1 = one copy, the earlier behaviour).
        si_normalise: L1-normalise each SI copy's gradient before averaging (RAD's official
            ``calculate_direction``); off: the raw gradients are averaged.
        early_stop: stop images whose objective reports success.
        seed: seeds random starts and transformations.
        params: objective parameters (e.g. ``beta``), as a sorted tuple of pairs.
        pixel_scale: 255: the scale the papers quote ε in.
    """

    objective: str
    eps: float
    step_size: float
    steps: int
    random_start: bool = True
    update: str = "sign"
    momentum: float = 0.0
    transforms: tuple[str, ...] = ()
    di_prob: float = 0.5
    ti_kernel: int = 5
    si_copies: int = 3
    di_copies: int = 1
    si_normalise: bool = False
    early_stop: bool = False
    seed: int = 0
    params: tuple = field(default=())
    pixel_scale: int = 255

    def __post_init__(self) -> None:
        if not (0.0 <= self.eps <= 1.0):
            raise ValueError(f"eps must be in [0, 1] (pixel units / 255), got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {self.update!r}")
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad:
            raise ValueError(f"unknown transforms {bad}; expected a subset of {TRANSFORMS}")
        if self.momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {self.momentum}")
        if self.di_copies < 1 or self.si_copies < 1:
            raise ValueError(f"di_copies and si_copies must be >= 1, got {self.di_copies}, {self.si_copies}")

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def replace(self, **changes) -> "AttackSpec":
        if "params" in changes and isinstance(changes["params"], dict):
            changes["params"] = tuple(sorted(changes["params"].items()))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-friendly view with ε and step also in pixel units (``eps_px = eps * 255``)."""
        d = dataclasses.asdict(self)
        for name in _LATER_FIELDS:  # at their defaults they stay out, so earlier cache keys hold
            if d[name] == _LATER_FIELDS[name]:
                del d[name]
        d["transforms"] = list(self.transforms)
        d["params"] = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in self.params}
        d["eps_px"] = round(self.eps * self.pixel_scale, 4)
        d["step_px"] = round(self.step_size * self.pixel_scale, 4)
        return d

    def label(self) -> str:
        """Short human label, e.g. ``PGD-10 cls ε=8/255`` or ``PGD-10 rad[kind=size] +SI ε=16/255``."""
        kind = "FGSM" if self.steps == 1 and not self.random_start else f"PGD-{self.steps}"
        params = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params)
        extra = "".join(f" +{t.upper()}" for t in self.transforms) + (f" +MI(μ={self.momentum:g})" if self.momentum else "")
        return (f"{kind} {self.objective}{f'[{params}]' if params else ''}{extra} "
                f"ε={self.eps * self.pixel_scale:g}/{self.pixel_scale}")


#: fields added after caches were keyed on ``to_dict()``, with the defaults that leave a key unchanged
_LATER_FIELDS = {"di_copies": 1, "si_normalise": False}


def image_generators(images: Tensor, seed: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded by ``seed`` and the image's bytes (batch-invariant)."""
    data = (images.detach() * 255).round().to(torch.uint8).cpu().reshape(images.shape[0], -1).numpy()
    return [torch.Generator().manual_seed((seed * 2_654_435_761 + zlib.crc32(row.tobytes())) % (2**63))
            for row in data]


def _per_image_rand(gens: list[torch.Generator], shape: tuple[int, ...], device) -> Tensor:
    return torch.stack([torch.rand(shape, generator=g) for g in gens]).to(device)


def gaussian_kernel(size: int, sigma: float | None = None) -> Tensor:
    """Normalised 2-D Gaussian ``[size, size]`` (TI-FGSM smooths the gradient with it)."""
    sigma = sigma if sigma is not None else size / 3.0 / math.sqrt(3.0) * 1.5
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def _diverse_input(x: Tensor, gens: list[torch.Generator], prob: float) -> Tensor:
    """DI (Xie et al. 2019) for fixed-size detectors: per image, with probability ``prob``,
    shrink to a random 90-100 % and pad at a random offset, via one batched affine warp."""
    b = x.shape[0]
    r = _per_image_rand(gens, (4,), x.device)  # [B, 4]: apply?, scale, dx, dy
    apply = r[:, 0] < prob
    s = torch.where(apply, 0.9 + 0.1 * r[:, 1], torch.ones_like(r[:, 1]))
    tx = torch.where(apply, (1 - s) * (2 * r[:, 2] - 1), torch.zeros_like(s))
    ty = torch.where(apply, (1 - s) * (2 * r[:, 3] - 1), torch.zeros_like(s))
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / s, 1 / s
    theta[:, 0, 2], theta[:, 1, 2] = -tx / s, -ty / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _normalise(g: Tensor, how: str) -> Tensor:
    flat = g.reshape(g.shape[0], -1)  # [B, 3*H*W]
    if how == "l1":
        scale = flat.abs().mean(1).clamp(min=1e-12)
    else:
        scale = flat.abs().amax(1).clamp(min=1e-12)
    return g / scale.view(-1, *([1] * (g.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project onto the L∞ ball of radius ``eps`` around ``x`` and onto ``[0, 1]``."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def start_point(x: Tensor, spec: AttackSpec, gens: list[torch.Generator]) -> Tensor:
    """Where an attack starts: uniform in the ε-ball (per-image generators) or the clean image."""
    if not spec.random_start:
        return x.clone()
    noise = _per_image_rand(gens, tuple(x.shape[1:]), x.device) * 2 - 1
    return project(x + spec.eps * noise, x, spec.eps)


def run_attack(model: nn.Module, images: Tensor, objective, spec: AttackSpec, state=None,
               snapshots: list[int] | None = None, generators: list[torch.Generator] | None = None):
    """Maximise ``objective`` on ``images`` under ``spec``.

    Args:
        model: the attacked detector; put in eval mode for the attack and restored after.
        images: ``[B, 3, H, W]`` in ``[0, 1]``.
        objective: an :class:`~advlib.attacks.objectives.Objective`: ``loss(model, x, state) ->
            [B]``, and ``done`` / ``loss_and_done`` for early stopping where it declares them.
        spec: the attack settings.
        state: the objective's prepared state (``objective.prepare(model, images, targets)``).
        snapshots: step counts at which to keep a copy (a k-step PGD is the first k steps of a
            longer one, so one run gives a whole steps sweep); then a dict ``{k: x_adv}`` is returned.
        generators: one CPU generator per image for random starts / DI, instead of the ones
            derived from the images' bytes (e.g. many random starts of the same image).

    Returns:
        Adversarial images ``[B, 3, H, W]`` with ``|x_adv - x|_∞ <= eps`` and values in ``[0, 1]``
        (or ``{k: images}`` with ``snapshots``).
    """
    if snapshots is not None and (min(snapshots) < 1 or max(snapshots) > spec.steps):
        raise ValueError(f"snapshots must lie in 1..{spec.steps}, got {snapshots}")
    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    x = images.detach()
    gens = generators if generators is not None else (
        image_generators(x, spec.seed) if (spec.random_start or "di" in spec.transforms) else [])
    if len(gens) not in (0, x.shape[0]):
        raise ValueError(f"need one generator per image ({x.shape[0]}), got {len(gens)}")
    kept: dict[int, Tensor] = {}
    # attacks run in float32 even inside a mixed-precision training step (AMP recipes)
    with eval_mode(model), torch.autocast(x.device.type, enabled=False):
        with torch.no_grad():
            x_adv = start_point(x, spec, gens)
            active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            velocity = torch.zeros_like(x)
            kernel = None
            if "ti" in spec.transforms:
                kernel = gaussian_kernel(spec.ti_kernel).to(x).expand(3, 1, -1, -1).contiguous()
        # an objective that reports success from the same forward pass as its loss saves the
        # separate success check (one forward per step) when no input transformation is used
        fused = spec.early_stop and objective.fuses_done and not spec.transforms
        for step in range(1, spec.steps + 1):
            if fused:
                grad, done = _input_gradient(model, x_adv, objective, spec, state, gens, with_done=True)
                active &= ~done
            elif spec.early_stop and objective.has_done:
                with torch.no_grad():
                    active &= ~objective.done(model, x_adv, state)
            if spec.early_stop and not bool(active.any()):
                kept.update({k: x_adv.detach() for k in (snapshots or []) if k >= step})
                break
            if not fused:
                grad = _input_gradient(model, x_adv, objective, spec, state, gens)
            with torch.no_grad():
                if kernel is not None:
                    grad = F.conv2d(grad, kernel, padding=spec.ti_kernel // 2, groups=3)
                if spec.momentum > 0:
                    velocity = spec.momentum * velocity + _normalise(grad, "l1")
                    grad = velocity
                direction = grad.sign() if spec.update == "sign" else _normalise(grad, spec.update)
                x_adv = x_adv + spec.step_size * direction * active.view(-1, 1, 1, 1)
                x_adv = project(x_adv, x, spec.eps)
            if snapshots is not None and step in snapshots:
                kept[step] = x_adv.detach()
        return kept if snapshots is not None else x_adv.detach()


def _input_gradient(model, x_adv: Tensor, objective, spec: AttackSpec, state, gens, with_done: bool = False):
    """Gradient of ``sum_b loss_b`` w.r.t. the input, averaged over DI/SI copies (each SI copy's
    L1-normalised first with ``spec.si_normalise``; ``spec.di_copies`` DI draws per scale) and,
    with ``with_done``, the objective's per-image success at ``x_adv`` from the same forward pass."""
    scales = [1.0 / 2**i for i in range(spec.si_copies)] if "si" in spec.transforms else [1.0]
    copies = [s for s in scales for _ in range(spec.di_copies if "di" in spec.transforms else 1)]
    total = torch.zeros_like(x_adv)
    done = None
    for scale in copies:
        xa = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            inp = xa * scale
            if "di" in spec.transforms:
                inp = _diverse_input(inp, gens, spec.di_prob)
            if with_done:
                loss, done = objective.loss_and_done(model, inp, state)
            else:
                loss = objective.loss(model, inp, state)
            if loss.dim() != 1 or loss.shape[0] != x_adv.shape[0]:
                raise ValueError(f"objective must return a per-image loss [B], got {tuple(loss.shape)}")
            (g,) = torch.autograd.grad(loss.sum(), xa)
        total += _normalise(g, "l1") if spec.si_normalise and "si" in spec.transforms else g
    return (total / len(copies), done) if with_done else total / len(copies)


def attack(model, images: Tensor, targets: list[dict] | None, spec: AttackSpec,
           snapshots: list[int] | None = None, generators: list | None = None, matched=None):
    """Craft adversarial examples for a batch with the objective ``spec.objective`` names.

    Args:
        model: detector (``anchors``, ``box_coder``, dense outputs; see :class:`advlib.models.Detector`).
        images: ``[B, 3, H, W]`` in ``[0, 1]``.
        targets: ground truth per image (objectives that use it; ``None`` for dfool/shrink/rap).
        spec: the attack.
        snapshots, generators: see :func:`run_attack`.
        matched: an anchor matching of ``targets`` the caller already has (e.g. a training
            batch's); ground-truth objectives reuse it instead of matching again.

    Returns:
        ``[B, 3, H, W]`` adversarial images (``{steps: images}`` with ``snapshots``).
    """
    from advlib.attacks.objectives import make_objective

    return make_objective(spec).craft(model, images, targets, spec, snapshots, generators, matched)
