"""AdvAmd (Yu, Chen & Gan, IJCAI 2023), the algorithm: stage 1, the stage-2 recipe and the classic
defences it is compared with (adversarial training, defensive distillation, MagNet's reformer), as
recipes of the one training loop (re-exported by :mod:`advlib.papers.advamd`).

**Stage 1** (Algorithm 1, lines 1-7), :func:`compute_stage1` / :func:`cached_stage1`: the vanilla
model attacks a fixed set of training images once (FGSM or PGD on the detection loss, at the
paper's ε = 0.01 or 0.1 in [0, 1] units); the perturbations δ are kept **in float** (float16 on
disk: the 8-bit adversarial-set cache would quantise δ at ε = 0.01 to about ±2 levels), adversarial
samples are ``x + δ`` and mediate samples ``x + φδ`` (φ = 0.7 for FGSM, 0.5 for PGD). The same
pass gives the attack-difficulty matrix α and the vulnerability coefficient Ā per class (eq. 6).

**α, defined exactly** (the paper only says α_k^i ∈ [0, 1] is "the attack difficulty from changing
the model detection category for k to i"): for every ground-truth object, its predicted class is
the argmax over the foreground classes of its matched anchors' mean class scores (softmax for the
SSD, sigmoid for RetinaNet). Among the objects of class k predicted correctly on the clean image,
``r_k^i`` is the fraction predicted as i on the adversarial image, and ``α_k^i = 1 − r_k^i``.
Then eq. 6 reduces to ``Ā_k = (Σ_{i≠k} r_k^i + Σ_{j≠k} r_j^k) / (2(N − 1))``: with N = 12 classes
and flip rates below 1, Ā is below about 0.1, so L_A (weighted by Ā) is much weaker than L_B and
L_M. :func:`vulnerability` returns Ā; the notebook reports it and the effective weight.

**Stage 2** (lines 8-18), :class:`AdvAmdRecipe`: from the vanilla model, per batch
``β1·L_B + β2·L_M + β3·L_A`` (β = 1, 1, 1 as the paper) with benign and mediate samples through
the main BN, adversarial samples through the auxiliary BN (:mod:`advlib.models.auxbn`), and L_A
weighting each **positive anchor's classification loss by Ā of its ground-truth class** (background
anchors and the box loss unweighted). The paper trains until the loss falls below σ; we train a
fixed number of epochs (the notebook's budget says how many). Each component switches off for the
ablation (Table 3); with all three off the recipe is **adversarial training** (benign +
adversarial samples, same labels, one BN), Table 1's Adv-Train, on the same stage-1 samples.

**Defensive distillation** (:class:`DistillRecipe`; Papernot et al. 2016/2017 adapted to
detectors): the vanilla model at temperature T is the teacher; the student (initialised from it)
learns the teacher's softened per-anchor class probabilities (softmax over the C+1 classes for the
SSD, per-class sigmoids for RetinaNet) on the positive and counted-negative anchors, ×T², plus the
ground-truth box loss, on benign images and on the setting's stage-1 adversarial images (soft
labels from the clean image): the paper's Table 1 trains each defence per attack setting.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlib.attacks import AttackSpec, attack, fgsm, pgd
from advlib.losses import Terms, class_scores, match_targets, multibox_terms, sigmoid_family, ssd_loss
from advlib.models.auxbn import add_auxiliary_bn, use_bn
from advlib.utils import eval_mode, model_device, targets_to

SOURCE = "Yu, Chen & Gan, Adversarial Amendment is the Only Force Capable of Transforming an Enemy into a Friend, IJCAI 2023"

#: the paper's attack strengths in [0, 1] units (its ε = 0.01 and 0.1)
EPSILONS = (0.01, 0.1)
#: mediate coefficient φ per attack (the paper, §5.3: FGSM 0.7, DeepFool 0.6, PGD 0.5)
PHI = {"FGSM": 0.7, "PGD": 0.5}
#: PGD steps and step (the paper uses ART and gives neither): 10 steps of ε/4 from a random start
PGD_STEPS, PGD_STEP_FRACTION = 10, 0.25


def setting_spec(kind: str, eps: float, seed: int = 0) -> AttackSpec:
    """The attack of a setting: ``FGSM`` (one signed step of ε) or ``PGD`` (:data:`PGD_STEPS`
    steps of ε·:data:`PGD_STEP_FRACTION`, random start) on the detection (multibox) loss."""
    if kind == "FGSM":
        return fgsm("multibox", eps=eps, seed=seed)
    if kind == "PGD":
        return pgd("multibox", eps=eps, step_size=eps * PGD_STEP_FRACTION, steps=PGD_STEPS, seed=seed)
    raise ValueError(f"unknown AdvAmd attack {kind!r}; expected one of {sorted(PHI)}")


def setting_name(kind: str, eps: float) -> str:
    return f"{kind} ε={eps:g}"


# ------------------------------------------------------------------ α and Ā (eq. 6)
@torch.no_grad()
def object_predictions(model, images: Tensor, matched) -> tuple[Tensor, Tensor]:
    """Every ground-truth object's true class and predicted class (1..C): the argmax over the
    foreground classes of the mean class scores of the anchors matched to it (objects without a
    positive anchor are left out).

    Returns:
        ``(true [K], predicted [K])`` int64 on the CPU.
    """
    with eval_mode(model):
        scores = class_scores(model(images))  # [B, A, C]: softmax (SSD) or sigmoid (RetinaNet)
    true, pred = [], []
    for b in range(images.shape[0]):
        idx = matched.object_index[b]
        for j in range(int(matched.num_objects[b])):
            sel = idx == j
            if sel.any():
                true.append(int(matched.object_labels[b, j]))
                pred.append(int(scores[b][sel].mean(0).argmax()) + 1)
    return torch.tensor(true, dtype=torch.int64), torch.tensor(pred, dtype=torch.int64)


def attack_difficulty(true: Tensor, before: Tensor, after: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """α (see the module docstring): ``α[k-1, i-1] = 1 − r_k^i`` with ``r_k^i`` the fraction of
    class-k objects predicted correctly before the attack that are predicted as i after it.

    Returns:
        ``(alpha [C, C] float64 (diagonal 1 − keep rate, unused by eq. 6), correct [C]: objects
        of each class predicted correctly before the attack)``; a class with none has α = 1
        (no evidence it can be attacked).
    """
    if not (true.shape == before.shape == after.shape):
        raise ValueError(f"true, before, after must have one entry per object, got {true.shape}, "
                         f"{before.shape}, {after.shape}")
    c = num_classes
    ok = before == true
    counts = torch.zeros(c, c, dtype=torch.float64)
    counts.index_put_((true[ok] - 1, after[ok] - 1), torch.ones(int(ok.sum()), dtype=torch.float64), accumulate=True)
    correct = counts.sum(1)
    rate = counts / correct.clamp(min=1)[:, None]
    return 1.0 - rate, correct


def vulnerability(alpha: Tensor) -> Tensor:
    """Ā per class (eq. 6): ``1 − (Σ_{i≠k} α_k^i + Σ_{j≠k} α_j^k) / (2(N − 1))`` -> ``[C]``."""
    n = alpha.shape[0]
    if alpha.shape != (n, n) or n < 2:
        raise ValueError(f"alpha must be a square [N, N] matrix with N >= 2, got {tuple(alpha.shape)}")
    off = alpha - torch.diag(torch.diagonal(alpha))
    return 1.0 - (off.sum(1) + off.sum(0)) / (2 * (n - 1))


def stage1_summary(s1: "Stage1") -> dict:
    """What stage 1 measured: objects predicted correctly before the attack, the fraction of them
    predicted as another class after it (``Σ_k correct_k Σ_{i≠k} r_k^i / Σ_k correct_k``), and
    the mean, min and max of Ā (the weight L_A puts on a positive's classification loss)."""
    r = 1.0 - s1.alpha.double()
    off = r - torch.diag(torch.diagonal(r))
    n = float(s1.correct.sum())
    return {"objects right before": n,
            "flipped to another class": float((off.sum(1) * s1.correct.double()).sum()) / max(n, 1.0),
            "mean Ā": float(s1.abar.mean()), "min Ā": float(s1.abar.min()), "max Ā": float(s1.abar.max())}


# ------------------------------------------------------------------ stage 1
@dataclass
class Stage1:
    """Stage 1 of one setting on one vanilla model (see the module docstring).

    Attributes:
        key: identifies it (vanilla model, attack, images); part of every recipe's cache key.
        image_ids: the training images attacked, in order.
        delta: ``[N, 3, H, W]`` float16 perturbations (``x_adv = clip(x + δ)``).
        checksum: ``[N]`` mean pixel of each clean image (a recipe checks that it trains on the
            images stage 1 attacked, i.e. without augmentation).
        alpha: ``[C, C]`` attack difficulty; correct: ``[C]`` objects correctly predicted before.
        abar: ``[C]`` vulnerability coefficient Ā (eq. 6).
        spec: the attack; phi: the mediate coefficient.
    """

    key: str
    image_ids: list[str]
    delta: Tensor
    checksum: Tensor
    alpha: Tensor
    correct: Tensor
    abar: Tensor
    spec: AttackSpec
    phi: float

    def lookup(self, targets: list[dict], images: Tensor) -> Tensor:
        """The δ of a batch, by image id, checked against the batch's pixels.

        Raises:
            ValueError: an image stage 1 did not attack, or whose pixels differ (augmentation on).
        """
        index = {k: i for i, k in enumerate(self.image_ids)}
        try:
            rows = [index[str(t["image_id"])] for t in targets]
        except KeyError as exc:
            raise ValueError(f"image {exc.args[0]!r} is not in stage 1 {self.key} (train on its images)") from None
        got = images.detach().float().mean(dim=(1, 2, 3)).cpu()
        if not torch.allclose(got, self.checksum[rows], atol=1e-4):
            raise ValueError("the batch's pixels differ from the images stage 1 attacked: train with augment=False")
        return self.delta[rows].to(images.device, images.dtype)


def compute_stage1(model, images: Tensor, targets: list[dict], spec: AttackSpec, phi: float, key: str = "",
                   batch_size: int = 32) -> Stage1:
    """Stage 1 on a set of training images (see the module docstring); the model is not changed."""
    if not 0.0 < phi < 1.0:
        raise ValueError(f"the mediate coefficient φ must be in (0, 1), got {phi}")
    dev = model_device(model)
    deltas, trues, befores, afters = [], [], [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(dev)
        t = targets_to(dev, targets[i:i + batch_size])
        matched = match_targets(model, t)
        adv = attack(model, x, t, spec, matched=matched)
        deltas.append((adv - x).half().cpu())
        tr, b = object_predictions(model, x, matched)
        _, a = object_predictions(model, adv, matched)
        trues.append(tr), befores.append(b), afters.append(a)
    alpha, correct = attack_difficulty(torch.cat(trues), torch.cat(befores), torch.cat(afters), model.num_classes)
    return Stage1(key, [str(t["image_id"]) for t in targets], torch.cat(deltas),
                  images.float().mean(dim=(1, 2, 3)), alpha, correct, vulnerability(alpha), spec, float(phi))


def stage1_key(vanilla_key: str, spec: AttackSpec, phi: float, image_ids: list[str]) -> str:
    ids = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]
    raw = f"{vanilla_key}|{sorted(spec.to_dict().items())}|{phi}|{ids}|v1"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def cached_stage1(exp, vanilla, spec: AttackSpec, phi: float, train_images: int | None,
                  cached_only: bool = False) -> Stage1 | None:
    """Stage 1 of ``vanilla`` (a model from the zoo, with ``zoo_key``) on the experiment's fixed
    training subset of ``train_images`` images (:meth:`~advlib.experiment.Experiment.train_subset`,
    the images the stage-2 recipes then train on), kept on disk under ``<cache>/advamd/``
    (written atomically; recomputed when unreadable; with ``cached_only``, ``None`` instead of
    computing it)."""
    from advlib.data import collate
    from advlib.paths import cache_root

    data = exp.train_subset(train_images)
    images, targets = collate([data[i] for i in range(len(data))])
    ids = [str(t["image_id"]) for t in targets]
    key = stage1_key(vanilla.zoo_key, spec, phi, ids)
    path = cache_root() / "advamd" / f"{key}.pt"
    if path.exists():
        try:
            d = torch.load(path, map_location="cpu", weights_only=False)
            return Stage1(**{**d, "spec": AttackSpec(**{**d["spec"], "transforms": tuple(d["spec"]["transforms"]),
                                                         "params": tuple(d["spec"]["params"])})})
        except Exception:  # noqa: BLE001 - a damaged file is recomputed
            pass
    if cached_only:
        return None
    s1 = compute_stage1(vanilla, images, targets, spec, phi, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    d = {k: getattr(s1, k) for k in ("key", "image_ids", "delta", "checksum", "alpha", "correct", "abar", "phi")}
    spec_d = {k: v for k, v in s1.spec.to_dict().items() if k not in ("eps_px", "step_px")}
    spec_d["params"] = tuple(sorted(spec_d["params"].items()))
    torch.save({**d, "spec": spec_d}, tmp)
    os.replace(tmp, path)
    return s1


# ------------------------------------------------------------------ stage 2 and the baselines
def weighted_multibox(terms: Terms, class_weights: Tensor) -> Tensor:
    """L_A per image: the multibox loss with each positive anchor's classification term weighted by
    ``class_weights[label − 1]`` (Ā of its ground-truth class); counted negatives and the box loss
    unweighted. -> ``[B]``."""
    w = torch.ones_like(terms.cls)
    pos = terms.positive
    w[pos] = class_weights.to(terms.cls)[terms.labels[pos] - 1]
    cls = (terms.cls * w * (pos | terms.hard_negative)).sum(1)
    return (cls + terms.loc.sum(1)) / terms.num_positive.clamp(min=1.0)


class AdvAmdRecipe:
    """Stage 2 of AdvAmd, or one of its ablations, or adversarial training (all switches off).

    Args:
        name: recipe name (cache key).
        stage1: the setting's :class:`Stage1` (its key enters the cache key).
        mediate: add L_M on mediate samples ``x + φδ`` (main BN).
        aux_bn: adversarial samples through the auxiliary BN (else the main BN).
        amd_loss: weight L_A's positive classification terms by Ā (else unweighted).
        betas: (β1, β2, β3).
    """

    def __init__(self, name: str, stage1: Stage1, mediate: bool = True, aux_bn: bool = True, amd_loss: bool = True,
                 betas: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        self.name, self.stage1 = name, stage1
        self.mediate, self.aux_bn, self.amd_loss = bool(mediate), bool(aux_bn), bool(amd_loss)
        self.betas = tuple(float(b) for b in betas)
        if len(self.betas) != 3 or min(self.betas) < 0:
            raise ValueError(f"betas must be three non-negative weights, got {betas}")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Give the vanilla model its auxiliary BNs (when used; testing runs the main BN)."""
        return add_auxiliary_bn(model) if self.aux_bn else model

    def __call__(self, model, images: Tensor, targets: list[dict]) -> Tensor:
        delta = self.stage1.lookup(targets, images)
        matched = match_targets(model, targets)
        model.train()
        b1, b2, b3 = self.betas
        loss = b1 * ssd_loss(multibox_terms(model(images), matched)).mean()
        if self.mediate:
            x_med = (images + self.stage1.phi * delta).clamp(0.0, 1.0)
            loss = loss + b2 * ssd_loss(multibox_terms(model(x_med), matched)).mean()
        x_adv = (images + delta).clamp(0.0, 1.0)
        if self.aux_bn:
            with use_bn(model, "aux"):
                terms = multibox_terms(model(x_adv), matched)
        else:
            terms = multibox_terms(model(x_adv), matched)
        adv = weighted_multibox(terms, self.stage1.abar) if self.amd_loss else ssd_loss(terms)
        return loss + b3 * adv.mean()

    def spec(self) -> dict:
        return {"recipe": self.name, "stage1": self.stage1.key, "mediate": self.mediate, "aux_bn": self.aux_bn,
                "amd_loss": self.amd_loss, "betas": list(self.betas)}


def soft_class_loss(student, teacher, temperature: float) -> Tensor:
    """Per-anchor distillation loss ``[B, A]`` at temperature T (×T²): cross-entropy of the
    student's softmax against the teacher's for the SSD family, binary cross-entropy of each class's
    sigmoid (column 0 excluded) for RetinaNet's focal family."""
    t = float(temperature)
    if sigmoid_family(student):
        target = torch.sigmoid(teacher.cls_logits[..., 1:] / t)
        return F.binary_cross_entropy_with_logits(student.cls_logits[..., 1:] / t, target,
                                                  reduction="none").sum(-1) * t * t
    target = torch.softmax(teacher.cls_logits / t, dim=-1)
    return -(target * F.log_softmax(student.cls_logits / t, dim=-1)).sum(-1) * t * t


class DistillRecipe:
    """Defensive distillation for detectors (see the module docstring).

    Args:
        name: recipe name.
        temperature: T (Papernot et al. use 20-100 for classifiers; the notebook states ours).
        stage1: also train on this setting's adversarial samples (soft labels of the clean image);
            ``None``: benign images only.
    """

    def __init__(self, name: str, temperature: float = 10.0, stage1: Stage1 | None = None) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.name, self.temperature, self.stage1 = name, float(temperature), stage1
        self.teacher: nn.Module | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Keep a frozen copy of the model it starts from (the vanilla model) as the teacher."""
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        return model

    def _loss(self, model, x: Tensor, soft, matched) -> Tensor:
        out = model(x)
        terms = multibox_terms(out, matched)  # positives / counted negatives and the box loss
        per_anchor = soft_class_loss(out, soft, self.temperature)
        cls = (per_anchor * (terms.positive | terms.hard_negative)).sum(1)
        return ((cls + terms.loc.sum(1)) / terms.num_positive.clamp(min=1.0)).mean()

    def __call__(self, model, images: Tensor, targets: list[dict]) -> Tensor:
        if self.teacher is None:
            raise RuntimeError("DistillRecipe needs prepare_model(vanilla) before training (the model cache calls it)")
        self.teacher.to(images.device)
        matched = match_targets(model, targets)
        with torch.no_grad():
            soft = self.teacher(images)
        model.train()
        loss = self._loss(model, images, soft, matched)
        if self.stage1 is not None:
            x_adv = (images + self.stage1.lookup(targets, images)).clamp(0.0, 1.0)
            loss = loss + self._loss(model, x_adv, soft, matched)
        return loss

    def spec(self) -> dict:
        return {"recipe": self.name, "temperature": self.temperature,
                "stage1": None if self.stage1 is None else self.stage1.key}


# ------------------------------------------------------------------ MagNet's reformer
class ReconstructionRecipe:
    """MagNet's reformer training: ``MSE(AE(x + n), x)`` with Gaussian noise ``n`` of std ``noise``
    (MagNet trains its CIFAR auto-encoders with noise 0.025), on clean images only."""

    name = "magnet-reformer"

    def __init__(self, noise: float = 0.025) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = float(noise)

    def __call__(self, model, images: Tensor, targets: list[dict]) -> Tensor:
        noisy = (images + self.noise * torch.randn_like(images)).clamp(0.0, 1.0)
        return F.mse_loss(model(noisy), images)

    def spec(self) -> dict:
        return {"recipe": self.name, "noise": self.noise}


__all__ = ["AdvAmdRecipe", "DistillRecipe", "EPSILONS", "PGD_STEPS", "PGD_STEP_FRACTION", "PHI", "ReconstructionRecipe",
           "SOURCE", "Stage1", "attack_difficulty", "cached_stage1", "compute_stage1",
           "object_predictions", "setting_name", "setting_spec", "soft_class_loss", "stage1_key", "stage1_summary",
           "vulnerability", "weighted_multibox"]
