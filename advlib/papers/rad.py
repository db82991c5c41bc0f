"""RAD: Chen et al., "Relevance Attack on Detectors" (ICLR 2021 submission): notebook 05's runs.

The relevance maps and the attack are core (:mod:`advlib.attacks.relevance`, the ``rad`` objective,
presets ``RAD`` / ``RAD-SI``); this module holds what only the transfer study needs: its budget, the
transfer zoo (detectors of several families trained on the same data, :meth:`Experiment.vanilla`),
the attack settings of Tables 1, 2, 3, 7, 8 and Fig. 7, relevance-map similarity across detectors
(Fig. 1/5), the saved adversarial set read back through the ordinary VOC loader (AOCO, Table 5)
and its RMSE. The paper's numbers and claims are in :mod:`advlib.papers.rad_claims`.

**Our stand-ins, stated beside the tables.** The paper's classification attacks (PGD, SI-PGD,
MI-DI-PGD, MI-TI-PGD) run on an InceptionV3 classifier with the detector's clean output as labels;
ours attack the surrogate detector's classification loss against the ground truth. The
cross-domain generators (CD-paintings/comics) are left out. Surrogates are our SSD and RetinaNet
(the relevance rules cover them); FCOS and Faster R-CNN are black-box victims only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import Tensor

from advlib.imageset import in_memory
from advlib.attacks import PRESETS, AttackSpec, relevance_map
from advlib.papers.rad_claims import (  # the reported numbers and claims, re-exported
    EPS_TOLERANCE, GAUSSIAN_FACTOR, MODELS, NODE_SPREAD, SIMILARITY_MARGIN, SOURCE, TABLE1, TABLE2, TABLE3, TABLE5,
    TABLE5_RMSE, TABLE7, TABLE8, claims)
from advlib.papers.rad_claims import __all__ as _claims_all
from advlib.robustness import Transfer

#: the transfer zoo: (name, detector family, backbone, seed offset). A family starts from the STD
#: backbone of its seed (:meth:`Experiment.vanilla`), so a model on the small VGG of the SSD
#: surrogate's seed would start from the surrogate's own weights and its "black-box" column would
#: measure a fine-tuned copy of the surrogate: the other small-VGG families take other seeds (the
#: experiment's seed plus the offset), so that no model starts from a surrogate's weights (the
#: ResNet-style backbone's STD is trained from scratch, independent of both surrogates).
ZOO = (("SSD-VGG", "ssd", "tiny_vgg", 0), ("SSD-ResNet", "ssd", "tiny_resnet", 0),
       ("RetinaNet", "retinanet", "tiny_vgg", 2), ("RetinaNet-ResNet", "retinanet", "tiny_resnet", 0),
       ("FCOS", "fcos", "tiny_vgg", 1), ("Faster R-CNN", "faster_rcnn", "tiny_vgg", 1))


@dataclass(frozen=True)
class RADBudget:
    """Notebook 05's budget.

    Attributes:
        images: test images of Tables 1, 2, 3, 7, 8 and 5 (every set crafted once, cached on disk).
        eps_images: test images of the ε sweep (Fig. 7).
        eps_px: the sweep's ε in pixel levels (the paper: 4 to 32).
        similarity_images: images of the relevance-map similarity (Fig. 1/5).
        zoo: the transfer zoo (:data:`ZOO`).
        surrogates: zoo names attacked white-box (the first: Tables 1-3, 5, 7 and Fig. 7; all:
            Table 8); each must be an SSD or a RetinaNet (the relevance rules' families).
        steps: every attack's iterations when set (the smoke budget's 2; the paper's 10 otherwise).
    """

    images: int
    eps_images: int
    similarity_images: int
    eps_px: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    zoo: tuple[tuple[str, str, str, int], ...] = ZOO
    surrogates: tuple[str, ...] = ("SSD-VGG", "RetinaNet")
    steps: int | None = None

    def __post_init__(self) -> None:
        if min(self.images, self.eps_images, self.similarity_images) < 1 or len(self.eps_px) < 2:
            raise ValueError(f"invalid RAD budget {self}")
        names = [z[0] for z in self.zoo]
        archs = {z[0]: z[1] for z in self.zoo}
        bad = [s for s in self.surrogates if archs.get(s) not in ("ssd", "retinanet")]
        if not self.surrogates or bad:
            raise ValueError(f"surrogates must be SSD or RetinaNet members of the zoo {names}, got {list(self.surrogates)}")


BUDGETS = {
    # CI plumbing: three families (Faster R-CNN's training alone would take the minute), 2 steps,
    # one seed (no STD model of another seed to train for the families' backbones)
    "smoke": RADBudget(images=4, eps_images=2, similarity_images=2, eps_px=(8.0, 16.0), steps=2,
                       zoo=tuple((n, a, b, 0) for n, a, b, _ in ZOO if n in ("SSD-VGG", "RetinaNet", "FCOS"))),
    "default": RADBudget(images=100, eps_images=50, similarity_images=16),
}


def budget(profile_name: str) -> RADBudget:
    """The RAD budget of a profile (the default profile's for a profile it does not name)."""
    return BUDGETS.get(profile_name, BUDGETS["default"])


def zoo(exp, rb: RADBudget, cached_only: bool = False) -> dict:
    """``{name: TrainedModel}`` of the transfer zoo from the model cache (trained when missing):
    every family's vanilla model of the experiment's seed plus the member's offset
    (:meth:`Experiment.vanilla`, :data:`ZOO`)."""
    out = {}
    for name, arch, backbone, offset in rb.zoo:
        tm = exp.vanilla(arch, backbone, seed=exp.seed + offset, cached_only=cached_only)
        if tm is not None:
            out[name] = tm
    return out


# ------------------------------------------------------------------ the attacks of each table
def rad(kind: str = "cls", m: int = 20, threshold: float | None = None, technique: str | None = None,
        eps: float = 16 / 255) -> AttackSpec:
    """RAD's spec: the ``RAD`` preset (10 mean-L1 steps of 2/255, no random start) on ``kind``
    nodes, static top-``m`` or dynamic ``threshold``, with one update technique (``DI``: 4 copies,
    p = 1, resize to U(0.9, 1); ``TI``: kernel 15; ``SI``: the official 4 L1-normalised scale
    copies), at ``eps``. Parameters at their defaults stay out of the spec (and its cache key)."""
    params = {k: v for k, v in (("kind", kind), ("m", m), ("threshold", threshold))
              if v != {"kind": "cls", "m": 20, "threshold": None}[k]}
    spec = PRESETS["RAD"].replace(eps=float(eps), params=params)
    changes = {None: {}, "DI": dict(transforms=("di",), di_copies=4, di_prob=1.0),
               "TI": dict(transforms=("ti",), ti_kernel=15), "SI": dict(transforms=("si",), si_copies=4, si_normalise=True)}
    if technique not in changes:
        raise ValueError(f"unknown update technique {technique!r}; expected one of {list(changes)}")
    return spec.replace(**changes[technique])


#: Table 1's attacked nodes, Table 2's techniques and Table 7's node selection (no SI)
NODE_ROWS = {"Size": rad("size"), "Localization": rad("loc"), "Classification": rad()}
TECHNIQUE_ROWS = {name: rad(technique=None if name == "None" else name) for name in ("None", "DI", "TI", "SI")}
SELECTION_ROWS = {**{f"dynamic {t:g}".replace("-", "−"): rad(m=20, threshold=t) for t in (-1.0, -2.0, -3.0)},
                  **{f"static {m}": rad(m=m) for m in (10, 20, 30)}}


def table3_rows() -> dict[str, AttackSpec | None]:
    """Table 3's rows on the surrogate: no attack, the Gaussian ablation (σ = 9/255), PGD-style
    attacks on its classification loss (10 signed steps of 2/255 within 16/255, no random start;
    SI: 4 scale copies, MI: μ = 1, DI: 4 copies p = 1, TI: kernel 15), Dfool, Loc, DAG on the top
    3,000 boxes (Appendix E.3) and RAD with SI."""
    base = AttackSpec("cls", 16 / 255, 2 / 255, 10, random_start=False)
    return {"No attack": None, "Gaussian (σ = 9)": PRESETS["Gaussian"], "PGD": base,
            "SI-PGD": base.replace(transforms=("si",), si_copies=4),
            "MI-DI-PGD": base.replace(momentum=1.0, transforms=("di",), di_copies=4, di_prob=1.0),
            "MI-TI-PGD": base.replace(momentum=1.0, transforms=("ti",), ti_kernel=15),
            "Dfool": PRESETS["Dfool"], "Loc": PRESETS["Loc"], "DAG": PRESETS["DAG-top"], "RAD": PRESETS["RAD-SI"]}


def budgeted(spec: AttackSpec, rb: RADBudget | None) -> AttackSpec:
    """``spec`` with the budget's ``steps`` when it sets them (a one-step row such as the noise
    keeps its own)."""
    return spec if rb is None or rb.steps is None or spec.steps == 1 else spec.replace(steps=rb.steps)


def transfer_columns(rows: dict[str, AttackSpec | None], surrogate: str, rb: RADBudget | None = None) -> dict:
    """Table rows as :func:`~advlib.robustness.robustness_table` columns crafted once on ``surrogate``
    (:func:`budgeted` specs)."""
    return {name: None if spec is None else Transfer(surrogate, budgeted(spec, rb)) for name, spec in rows.items()}


def relevance_models(models: dict, rb: RADBudget) -> dict:
    """The zoo members whose relevance maps the rules cover (the SSD and RetinaNet families)."""
    arch = {z[0]: z[1] for z in rb.zoo}
    return {n: m for n, m in models.items() if arch[n] in ("ssd", "retinanet")}


def by_attack(table) -> pd.DataFrame:
    """A robustness table as the paper prints it: attacks × models."""
    return table.frame.T


# ------------------------------------------------------------------ relevance-map similarity
def _rank_corr(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def relevance_similarity(models: dict, images: Tensor) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Fig. 1/5's question in numbers: the relevance maps (multi-node SGLRP, top-20 boxes' classes,
    summed over colour channels) of every model of ``models`` on ``images``, and per model pair the
    mean Spearman rank correlation of two models' maps of the **same** image against the chance
    baseline, the same two models' maps of **different** images (image i against image i+1).

    Returns:
        ``({name: maps [N, H, W]}, frame)`` with one row per pair: ``same_image``, ``chance``.
    """
    images = in_memory(images)  # a few images (the budget's similarity_images), also from a streamed split
    if images.shape[0] < 2:
        raise ValueError("the chance baseline needs at least 2 images")
    maps = {name: relevance_map(m, images).detach().sum(1) for name, m in models.items()}
    names, n, rows = list(maps), images.shape[0], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = [_rank_corr(maps[a][k], maps[b][k]) for k in range(n)]
            chance = [_rank_corr(maps[a][k], maps[b][(k + 1) % n]) for k in range(n)]
            rows.append({"pair": f"{a} ~ {b}", "same_image": float(np.mean(same)), "chance": float(np.mean(chance))})
    return maps, pd.DataFrame(rows).set_index("pair")


# ------------------------------------------------------------------ the saved set (AOCO)
def rmse_levels(adv: Tensor, clean: Tensor) -> float:
    """Table 5's RMSE in pixel levels (0-255): per image sqrt(mean squared difference), averaged."""
    d = (in_memory(adv) - in_memory(clean)).flatten(1) * 255
    return float(d.pow(2).mean(1).sqrt().mean())


def saved_set(exp, surrogate, spec: AttackSpec, images: Tensor, targets: list[dict]):
    """The adversarial set of ``spec`` crafted on ``surrogate`` from the evaluation images, saved
    once through the adversarial-set cache (VOC layout, PNG) and **read back through the ordinary
    dataset loader** (``build_dataset(path, "voc", "test")``), as a user would load AOCO.

    Returns:
        ``(path, images [N, 3, H, W], targets)`` as re-read from disk.
    """
    from advlib.cache import AdversarialCache, data_fingerprint
    from advlib.data import build_dataset, collate
    from advlib.robustness import adversarial_images

    cache = AdversarialCache()
    key = cache.key(surrogate, spec, exp.data_id, data_fingerprint(images, targets))
    cache.get_or_create(key, lambda: adversarial_images(surrogate, images, targets, spec, progress=False),
                        targets, exp.classes, spec, {"source": getattr(surrogate, "zoo_key", ""), "data": exp.data_id})
    ds = build_dataset(cache.path(key), "voc", "test", size=tuple(images.shape[-2:]))
    x, t = collate([ds[i] for i in range(len(ds))])
    return cache.path(key), x, t


def clean_maps(models: dict, images: Tensor, targets: list[dict], classes, data_id: str = "") -> dict[str, float]:
    """Every model's clean mAP@0.5 on ``images`` (through the result cache: a warm re-run detects
    nothing)."""
    from advlib.robustness import robustness_table

    tab = robustness_table(models, {"clean": None}, images, targets, classes, data_id=data_id, progress=False)
    return {name: tab.get(name, "clean") for name in models}


def set_table(models: dict, images: Tensor, targets: list[dict], adv_images: Tensor, adv_targets: list[dict],
              classes, data_id: str = "") -> pd.DataFrame:
    """Every model's mAP@0.5 on the clean images and on the saved set (re-read from disk), and the
    drop in points (0.01 mAP): one row per model (cached results)."""
    clean = clean_maps(models, images, targets, classes, data_id)
    adv = clean_maps(models, adv_images, adv_targets, classes, data_id)
    return pd.DataFrame({name: {"clean": clean[name], "saved set": adv[name], "drop (points)": 100 * (clean[name] - adv[name])}
                         for name in models}).T


def eps_rows(rb: RADBudget) -> dict[float, AttackSpec]:
    """Fig. 7: RAD with SI at every ε of the sweep (10 steps of 2/255, as the paper's other runs)."""
    return {e: PRESETS["RAD-SI"].replace(eps=e / 255) for e in rb.eps_px}


def iteration_frames(model, image: Tensor, spec: AttackSpec, show: tuple[int, ...] = (0, 1, 2, 5, 10)) -> list[dict]:
    """Fig. 8: one image under ``spec`` on ``model`` at the steps in ``show`` (0 = clean; one attack
    run, its snapshots): ``{"step", "image" [3, H, W], "detections", "map" [H, W]}`` per step, the
    map being the relevance map (summed over channels) the attack suppresses."""
    from advlib.attacks import attack

    steps = sorted(s for s in set(show) if 1 <= s <= spec.steps)
    snaps = attack(model, image[None], None, spec, snapshots=steps) if steps else {}
    frames = []
    for s in show:
        if s != 0 and s not in snaps:
            continue
        x = image[None] if s == 0 else snaps[s]
        frames.append({"step": s, "image": x[0], "detections": model.detect(x)[0],
                       "map": relevance_map(model, x).detach().sum(1)[0]})
    return frames


def reductions(exp, rb: RADBudget) -> str:
    """What this budget changes from the paper, in one line (printed beside every table)."""
    return (f"Budget: {len(rb.zoo)} small detectors trained on {exp.profile.name} data (the paper: 9 COCO models); "
            f"surrogates {', '.join(rb.surrogates)} (the paper: YOLOv3, Mask R-CNN, RetinaNet); tables on "
            f"{rb.images} test images, the ε sweep on {rb.eps_images}, similarity on {rb.similarity_images}; "
            "classification attacks on the surrogate detector's classification loss (the paper: InceptionV3)")


__all__ = ["BUDGETS", "NODE_ROWS", "RADBudget", "SELECTION_ROWS", "TECHNIQUE_ROWS", "ZOO", "budget", "by_attack",
           "budgeted", "clean_maps", "eps_rows", "iteration_frames", "rad", "reductions", "relevance_models", "relevance_similarity",
           "rmse_levels", "saved_set", "set_table", "table3_rows", "transfer_columns", "zoo", *_claims_all]
