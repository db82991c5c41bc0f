"""MTD: Zhang & Wang, "Towards Adversarially Robust Object Detection", ICCV 2019.

Everything of this paper in one place: its recipes (CLS, LOC, CON, MTD as configurations of the
core's training loop and attacks), its reported numbers, its notebook budget, the analyses
behind Figs. 3-4, and its claims as functions from this run's numbers to verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from advlib.attacks import AttackSpec, attack, fgsm, pgd, task_input_gradients
from advlib.losses import batched_box_iou, match_targets, pad_targets
from advlib.recipes import RECIPES, AdversarialRecipe
from advlib.results import Claim, Reported, check
from advlib.imageset import in_memory, iter_batches
from advlib.robustness import crafted_batches
from advlib.utils import eval_mode, model_device, targets_to
from advlib.cache import ResultCache, data_fingerprint, model_fingerprint

EPS = 8 / 255
#: a "large" clean-mAP trade-off (0.10 mAP = 10 points; the paper's MTD loses 72.1 - 48.0 = 24.1)
LARGE_DROP = 0.10
SOURCE = "MTD (Zhang & Wang, ICCV 2019)"


# ---------------------------------------------------------------------------------- recipes
def mtd_attack_spec(eps: float = EPS, steps: int = 1, step_size: float | None = None, seed: int = 0) -> AttackSpec:
    """Algorithm 1's training attack: a random start in the ε-ball, then ``steps`` signed steps in
    each task domain (one step of size ε by default: MTD-1step; ``steps=10``: MTD-PGD10)."""
    step = eps if (steps == 1 and step_size is None) else (step_size or 2 / 255)
    return pgd("mda", eps, step, steps, seed=seed)


def _task_recipe(name: str, objective: str):
    def factory(eps: float = EPS, steps: int = 1, seed: int = 0) -> AdversarialRecipe:
        return AdversarialRecipe(name, pgd(objective, eps, eps if steps == 1 else 2 / 255, steps, seed=seed))
    factory.__doc__ = f"{name.upper()}: adversarial training on {objective} examples (MTD §5.2)."
    return factory


for _name, _objective in (("cls", "cls"), ("loc", "loc"), ("con", "multibox")):
    RECIPES.add(_name, _task_recipe(_name, _objective))


@RECIPES.register("mtd")
def mtd_recipe(eps: float = EPS, steps: int = 1, seed: int = 0) -> AdversarialRecipe:
    """MTD (Algorithm 1): train on the per-image larger-loss example of the two task domains."""
    return AdversarialRecipe("mtd", mtd_attack_spec(eps, steps, seed=seed))


@dataclass(frozen=True)
class Protocol:
    """How a robust model is trained: MTD's training attack (``steps`` signed steps per task
    domain) either fine-tuned from the cached STD model for ``epochs`` epochs at the profile's
    fine-tuning lr, or trained from scratch on the STD schedule (``epochs`` = None)."""

    label: str
    steps: int
    epochs: int | None

    def train(self, exp, recipe: str = "mtd", seed: int | None = None, cached_only: bool = False):
        """The model this protocol trains (a :class:`~advlib.experiment.TrainedModel`, cached;
        ``cached_only``: ``None`` when it is not in the cache)."""
        r = RECIPES.build(recipe, steps=self.steps)
        only = {"cached_only": True} if cached_only else {}
        if self.epochs is None:
            return exp.trained(r, seed=seed, **only)
        return exp.trained(r, parent="std", seed=seed, cfg=exp.finetune_config(self.epochs, seed=seed), **only)


def protocol_table(exp, protocols: Mapping[str, Protocol], attacks: Mapping, images: Tensor, targets: list[dict],
                   seed: int | None = None):
    """STD and the MTD model of each protocol under ``attacks`` (a robustness table whose rows are
    the protocols' labels), with each model's training seconds when it was trained."""
    from advlib.robustness import robustness_table

    trained = {"STD": exp.trained("std", seed=seed), **{p.label: p.train(exp, seed=seed) for p in protocols.values()}}
    table = robustness_table({k: tm.model for k, tm in trained.items()}, attacks, images, targets, exp.classes,
                             data_id=exp.data_id)
    return table, {k: tm.meta.get("train_seconds") for k, tm in trained.items()}


def adopted_protocol(epochs: int) -> Protocol:
    """The protocol Table 2's robust models use: MTD-1step fine-tuned ``epochs`` epochs from STD
    (the notebook budget's ``recipe_epochs``); the same cache key as the table's MTD model."""
    return Protocol(f"MTD-1step, fine-tuned {epochs} epochs from STD (adopted)", steps=1, epochs=epochs)


#: the robust-training protocols compared on seed 0 with the adopted one (:func:`adopted_protocol`):
#: the papers train from scratch (MTD) or fine-tune a clean model for many epochs with PGD
#: (CWAT/RobustDet)
PROTOCOLS = {
    "scratch-1step": Protocol("MTD-1step, from scratch on the STD schedule", steps=1, epochs=None),
    "finetune-pgd3": Protocol("MTD-PGD3, fine-tuned 4 epochs from STD", steps=3, epochs=4),
}


# -------------------------------------------------------------------------- reported numbers
_VOC = "VOC07 test, SSD-VGG16, ε = 8"
TABLE2 = Reported("MTD Table 2", _VOC, "VOC07", {
    "STD": {"clean": 72.1, "A_cls": 1.5, "A_loc": 0.0, "DAG": 0.3, "RAP": 6.6},
    "CLS": {"clean": 46.7, "A_cls": 21.8, "A_loc": 32.2, "DAG": 28.0, "RAP": 43.4},
    "LOC": {"clean": 51.9, "A_cls": 23.7, "A_loc": 26.5, "DAG": 17.2, "RAP": 43.6},
    "CON": {"clean": 38.7, "A_cls": 18.3, "A_loc": 27.2, "DAG": 26.4, "RAP": 40.8},
    "MTD": {"clean": 48.0, "A_cls": 29.1, "A_loc": 31.9, "DAG": 28.5, "RAP": 44.9},
    "ours avg": {"clean": 46.3, "A_cls": 23.2, "A_loc": 29.4, "DAG": 25.0, "RAP": 43.2}}, scale=100)
TABLE3 = Reported("MTD Table 3", "VOC07 test, ε = 8", "VOC07", {
    "STD VGG16": {"DAG": 0.3, "RAP": 6.6}, "MTD VGG16": {"DAG": 28.5, "RAP": 44.9},
    "STD ResNet50": {"DAG": 0.4, "RAP": 8.8}, "MTD ResNet50": {"DAG": 22.9, "RAP": 39.1}}, scale=100)
TABLE5 = Reported("MTD Table 5", "MTD SSD-VGG16 under attacks transferred from SSD-ResNet50, VOC07 test",
                  "VOC07", {"MTD": {"clean": 48.0, "DAG": 49.3, "RAP": 49.4}}, scale=100)


# ---------------------------------------------------------------------------------- budget
@dataclass(frozen=True)
class MTDBudget:
    """Notebook 01's budget beyond the shared :class:`advlib.profiles.Budget`.

    Attributes:
        second_backbone_epochs: STD epochs of the second architecture (Tables 3 and 5).
        second_finetune_epochs: its MTD fine-tuning epochs.
        tsne_starts: random starts per task domain in Fig. 4.
        protocols: names in :data:`PROTOCOLS` trained on seed 0 beside the adopted protocol and
            compared with it (the default profile's protocol study; empty: only the adopted one).
    """

    second_backbone_epochs: int
    second_finetune_epochs: int
    tsne_starts: int
    protocols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"MTDBudget.protocols: unknown {unknown}; known: {sorted(PROTOCOLS)}")


BUDGETS = {"smoke": MTDBudget(second_backbone_epochs=1, second_finetune_epochs=1, tsne_starts=8),
           "default": MTDBudget(second_backbone_epochs=12, second_finetune_epochs=1, tsne_starts=32,
                                 protocols=("scratch-1step", "finetune-pgd3")),
           "voc": MTDBudget(second_backbone_epochs=120, second_finetune_epochs=24, tsne_starts=64),
           "coco": MTDBudget(second_backbone_epochs=60, second_finetune_epochs=12, tsne_starts=64)}


def budget(profile_name: str) -> MTDBudget:
    """The MTD budget of a profile (the default profile's for a profile it does not name)."""
    return BUDGETS.get(profile_name, BUDGETS["default"])


# ------------------------------------------------------------------------------- analyses
def candidate_anchor_metrics(model, images: Tensor, targets: list[dict], iou_thresh: float = 0.5,
                             batch_size: int = 64) -> dict[str, float]:
    """Fig. 3a: on candidate anchors (prior box IoU > ``iou_thresh`` with a ground truth),
    classification accuracy (argmax class == ground-truth class) and mean IoU between the decoded
    box and that ground truth, before NMS. ``images``: a tensor or a streamed ImageSet.

    Returns:
        ``{"accuracy", "mean_iou", "candidates"}``.
    """
    return _anchor_metrics(model, ((x, t) for _, x, t in iter_batches(images, targets, batch_size)), iou_thresh)


@torch.no_grad()
def _anchor_metrics(model, batches, iou_thresh: float = 0.5) -> dict[str, float]:
    """:func:`candidate_anchor_metrics` summed over ``(images, targets)`` batches."""
    correct, iou_sum, n = 0.0, 0.0, 0
    dev = model_device(model)
    with eval_mode(model):
        for x, t in batches:
            x = x.to(dev)
            gt_boxes, gt_labels = pad_targets(t, dev)  # [B, M, 4], [B, M]
            prior_iou = batched_box_iou(gt_boxes, model.anchors)  # [B, M, A]
            prior_iou = torch.where(gt_labels[..., None] > 0, prior_iou, torch.full_like(prior_iou, -1.0))
            best, obj = prior_iou.max(1)  # [B, A]
            cand = best > iou_thresh
            out = model(x)
            label = gt_labels.gather(1, obj)
            boxes = model.decode(out.box_deltas)  # [B, A, 4]
            gt_for_anchor = gt_boxes.gather(1, obj[..., None].expand(-1, -1, 4))  # [B, A, 4]
            iou = batched_box_iou(boxes.unsqueeze(2), gt_for_anchor.unsqueeze(2))  # [B, A, 1, 1]
            iou = iou.squeeze(-1).squeeze(-1)  # [B, A]
            correct += float(((out.cls_logits.argmax(-1) == label) & cand).sum())
            iou_sum += float((iou * cand).sum())
            n += int(cand.sum())
    return {"accuracy": correct / max(n, 1), "mean_iou": iou_sum / max(n, 1), "candidates": n}


def task_gradients(model, images: Tensor, targets: list[dict]) -> tuple[Tensor, Tensor]:
    """Fig. 3b: input gradients ``(g_cls, g_loc)`` of the two task losses, each ``[B, 3, H, W]``
    (``images``: one batch, a tensor or a small streamed ImageSet)."""
    with eval_mode(model):
        return task_input_gradients(model, in_memory(images), match_targets(model, targets))


def gradient_cosine(g_a: Tensor, g_b: Tensor) -> Tensor:
    """Per-image cosine similarity of two gradient batches -> ``[B]``."""
    return torch.nn.functional.cosine_similarity(g_a.flatten(1), g_b.flatten(1), dim=1, eps=1e-12)  # [B, 3*H*W]


def _is_metrics(value) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(k), dict) for k in ("clean", "A_cls", "A_loc"))


def task_interaction(model, images: Tensor, targets: list[dict], eps: float = EPS,
                     result_cache: ResultCache | bool | None = None) -> dict[str, dict[str, float]]:
    """Fig. 3a: :func:`candidate_anchor_metrics` on clean images and under one-step A_cls and A_loc
    (FGSM of size ``eps``), kept in the result cache.

    Returns:
        ``{"clean" | "A_cls" | "A_loc": {"accuracy", "mean_iou", "candidates"}}`` plus ``"spec"``.
    """
    specs = {"A_cls": fgsm("cls", eps), "A_loc": fgsm("loc", eps)}

    def compute() -> dict:
        out = {"clean": candidate_anchor_metrics(model, images, targets)}
        bs = 32
        for name, spec in specs.items():  # attacked batch by batch: no adversarial set is held
            out[name] = _anchor_metrics(model, ((adv, targets[c * bs:(c + 1) * bs]) for c, adv in
                                                crafted_batches(model, images, targets, spec, bs, progress=False)))
        out["spec"] = {k: v.to_dict() for k, v in specs.items()}
        return out

    return ResultCache.resolve(result_cache).cached(compute, validate=_is_metrics, kind="task_interaction",
                                                    model=model_fingerprint(model), eps=eps,
                                                    data=data_fingerprint(images, targets))


def gradient_cosines(model, images: Tensor, targets: list[dict], batch_size: int = 16,
                     result_cache: ResultCache | bool | None = None) -> Tensor:
    """Fig. 3b over a set: per-image cosine of the two task gradients -> ``[N]`` (cached)."""
    dev = model_device(model)

    def compute() -> list[float]:
        cos = [gradient_cosine(*task_gradients(model, x.to(dev), targets_to(dev, t))).cpu()
               for _, x, t in iter_batches(images, targets, batch_size)]
        return torch.cat(cos).tolist() if cos else []

    value = ResultCache.resolve(result_cache).cached(
        compute, validate=lambda v: isinstance(v, list) and len(v) == images.shape[0],
        kind="gradient_cosines", model=model_fingerprint(model), data=data_fingerprint(images, targets))
    return torch.tensor(value)


@dataclass
class TaskDomains:
    """Adversarial examples of one image from many random starts, per task loss, and their t-SNE."""

    perturbations: np.ndarray  # [2n, 3*H*W] (x_adv - x), A_cls first
    task: np.ndarray  # [2n] 0 = cls, 1 = loc
    embedding: np.ndarray  # [2n, 2]
    knn_accuracy: float  # k-NN accuracy of the task label in the full space (5-fold)
    knn_accuracy_2d: float  # same, in the t-SNE plane
    spec: dict


def task_domains(model, image: Tensor, target: dict, spec: AttackSpec, n: int = 32, k: int = 5,
                 seed: int = 0) -> TaskDomains:
    """Fig. 4: ``n`` A_cls and ``n`` A_loc examples of one image from random starts (a seeded
    generator per start), embedded with t-SNE, and how separable the two sets are (k-NN accuracy).
    """
    from sklearn.manifold import TSNE
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    if n < k + 1:
        raise ValueError(f"need n > k ({n} <= {k})")
    x = image.unsqueeze(0).expand(n, -1, -1, -1).contiguous()
    perts = []
    for t, name in enumerate(("cls", "loc")):
        gens = [torch.Generator().manual_seed(seed * 10_000 + t * 1_000 + i) for i in range(n)]
        adv = attack(model, x, [target] * n, spec.replace(objective=name, random_start=True), generators=gens)
        perts.append((adv - x).flatten(1).cpu().numpy())  # [n, 3, H, W] -> [n, 3*H*W]
    feats = np.concatenate(perts)
    labels = np.repeat([0, 1], n)
    emb = TSNE(n_components=2, perplexity=min(30.0, n - 1), init="pca", random_state=seed).fit_transform(feats)
    knn = KNeighborsClassifier(n_neighbors=k)
    acc_full = float(cross_val_score(knn, feats, labels, cv=min(5, n)).mean())
    acc_2d = float(cross_val_score(knn, emb, labels, cv=min(5, n)).mean())
    return TaskDomains(feats, labels, emb, acc_full, acc_2d, spec.replace(objective="cls|loc").to_dict())


# ---------------------------------------------------------------------------------- claims
TASK_ATTACKS = ("A_cls", "A_loc")


def baseline_claims(clean_map: float, attacked_map: float) -> list[Claim]:
    """Notebook 00: the standard SSD collapses under A_cls (Table 2: 72.1 -> 1.5)."""
    ratio = attacked_map / clean_map if clean_map > 0 else float("nan")
    return [check("STD collapses under A_cls: the attack leaves <= 15% of clean mAP (MTD Table 2: 72.1 -> 1.5)",
                  ratio <= 0.15, source="MTD Table 2", clean_map=clean_map, attacked_map=attacked_map, ratio=ratio)]


def _curve_at(curves: pd.DataFrame, kind: str, col: str, value) -> pd.Series:
    """mAP per (model, attack) of the rows of one sweep kind at ``col == value``."""
    d = curves[(curves["kind"] == kind) & np.isclose(curves[col].astype(float), float(value))]
    return d.groupby(["model", "attack"])["map"].mean()


def claims(table2: pd.DataFrame, fig3a: Mapping[str, Mapping[str, float]], mean_cosine: float,
           curves: pd.DataFrame, table5: pd.DataFrame, robust: Sequence[str] = ("CLS", "LOC", "CON", "MTD"),
           attacks: Sequence[str] = ("A_cls", "A_loc", "DAG", "RAP"), few_steps: int = 3,
           knn_accuracy: float | None = None) -> list[Claim]:
    """The claims of Sections 3-5 on this run's numbers (thresholds fixed here, before the run).

    Args:
        table2: models (``STD`` and ``robust``) × ``clean`` and ``attacks`` → mAP.
        fig3a: ``{"clean" | "A_cls" | "A_loc": {"accuracy", "mean_iou"}}`` on the STD model.
        mean_cosine: mean cosine of the two task gradients (Fig. 3b).
        curves: sweep rows with ``model``, ``attack``, ``kind`` (``steps`` | ``eps``), ``steps``,
            ``eps_px``, ``map``; models ``STD`` and robust ones.
        table5: the MTD row (index ``MTD``) under white-box columns and transfer columns (names
            containing ``from``).
        few_steps: "within a few steps" means after this many steps.
        knn_accuracy: Fig. 4's separability of the two task domains (k-NN accuracy of the task label).
    """
    t = table2
    robust = list(robust)
    atk = [a for a in attacks if a in t.columns]
    clean = float(t.loc["STD", "clean"])
    avg = t.loc[robust, atk].mean(axis=1)
    paper_drop = (TABLE2.values["STD"]["clean"] - TABLE2.values["MTD"]["clean"]) / TABLE2.scale
    out = [
        check("STD collapses: A_cls and A_loc each leave < 15% of clean mAP",
              max(t.loc["STD", "A_cls"], t.loc["STD", "A_loc"]) < 0.15 * clean, source="MTD Table 2",
              clean=clean, A_cls=float(t.loc["STD", "A_cls"]), A_loc=float(t.loc["STD", "A_loc"])),
        check("Each task attack lowers both task metrics (Fig. 3a)",
              all(fig3a[a][k] < fig3a["clean"][k] for a in TASK_ATTACKS for k in ("accuracy", "mean_iou")),
              source="MTD Fig. 3a",
              **{f"{a}_{k}": float(fig3a[a][k]) for a in ("clean", *TASK_ATTACKS) for k in ("accuracy", "mean_iou")}),
        check("Task gradients are misaligned: mean cosine well below 1 (< 0.5)", mean_cosine < 0.5,
              source="MTD Fig. 3b", mean_cosine=float(mean_cosine)),
        check("Every robust model beats STD under every attack",
              bool((t.loc[robust, atk] > t.loc["STD", atk]).all().all()), source="MTD Table 2",
              **{f"min_margin_{a}": float((t.loc[robust, a] - t.loc["STD", a]).min()) for a in atk}),
        check("Every robust model loses clean mAP (the trade-off)",
              bool((t.loc[robust, "clean"] < clean).all()), source="MTD Table 2",
              **{f"clean_{m}": float(t.loc[m, "clean"]) for m in ["STD", *robust]}),
        check(f"The trade-off is large: MTD loses >= {LARGE_DROP * 100:g} points of clean mAP "
              f"(paper: {100 * paper_drop:.1f})", clean - float(t.loc["MTD", "clean"]) >= LARGE_DROP,
              source="MTD Table 2", clean_drop_points=100 * (clean - float(t.loc["MTD", "clean"]))),
        check("CLS is more robust than LOC under A_cls while LOC keeps more clean mAP",
              t.loc["CLS", "A_cls"] > t.loc["LOC", "A_cls"] and t.loc["LOC", "clean"] > t.loc["CLS", "clean"],
              source="MTD Table 2", CLS_A_cls=float(t.loc["CLS", "A_cls"]), LOC_A_cls=float(t.loc["LOC", "A_cls"]),
              CLS_clean=float(t.loc["CLS", "clean"]), LOC_clean=float(t.loc["LOC", "clean"])),
        check("MTD has the best (or within 2 points of the best) average over attacks, and beats CON",
              avg["MTD"] >= avg.max() - 0.02 and avg["MTD"] > avg["CON"], source="MTD Table 2",
              **{f"avg_{m}": float(avg[m]) for m in robust}),
        _graceful_claim(curves, clean, few_steps),
    ]
    white = [c for c in table5.columns if "from" not in c and c != "clean"]
    moved = [c for c in table5.columns if "from" in c]
    wb, tr = float(table5.loc["MTD", white].mean()), float(table5.loc["MTD", moved].mean())
    out.append(check("Transferred attacks hurt the MTD model less than white-box ones", tr > wb,
                     source="MTD Table 5", white_box_mean=wb, transferred_mean=tr))
    if knn_accuracy is not None:
        out.append(check("The two task domains overlap but have distinct regions: "
                         "0.6 < k-NN accuracy of the task label < 0.95", 0.6 < knn_accuracy < 0.95,
                         source="MTD Fig. 4", knn_accuracy=float(knn_accuracy)))
    return out


def _graceful_claim(curves: pd.DataFrame, std_clean: float, few_steps: int) -> Claim:
    """Figs. 5-6: STD keeps < 15% of clean mAP after ``few_steps`` steps (either task attack), while
    the robust models keep > 50% of their 1-step mAP at the longest attack and of their smallest-ε
    mAP at the largest ε."""
    steps, eps = curves[curves["kind"] == "steps"], curves[curves["kind"] == "eps"]
    k_max = int(steps["steps"].max())
    few = min(few_steps, k_max)
    std_few = _curve_at(curves, "steps", "steps", few).xs("STD", level="model")
    std_ratio = float(std_few.max() / max(std_clean, 1e-9))

    def robust_only(s: pd.Series) -> pd.Series:
        return s[s.index.get_level_values("model") != "STD"]

    keep_steps = float((robust_only(_curve_at(curves, "steps", "steps", k_max))
                        / robust_only(_curve_at(curves, "steps", "steps", 1))).mean())
    e_lo, e_hi = float(eps["eps_px"].min()), float(eps["eps_px"].max())
    keep_eps = float((robust_only(_curve_at(curves, "eps", "eps_px", e_hi))
                      / robust_only(_curve_at(curves, "eps", "eps_px", e_lo))).mean())
    return check("Robust models degrade gracefully with steps and ε while STD falls within a few steps",
                 std_ratio < 0.15 and keep_steps > 0.5 and keep_eps > 0.5, source="MTD Figs. 5-6",
                 **{f"std_map_after_{few}_steps_over_clean": std_ratio,
                    f"robust_map_{k_max}_over_1_steps": keep_steps,
                    f"robust_map_eps{e_hi:g}_over_eps{e_lo:g}": keep_eps})


__all__ = ["BUDGETS", "LARGE_DROP", "MTDBudget", "PROTOCOLS", "Protocol", "adopted_protocol", "protocol_table", "TABLE2", "TABLE3", "TABLE5", "TaskDomains", "baseline_claims", "budget",
           "candidate_anchor_metrics", "claims", "gradient_cosine", "gradient_cosines", "mtd_attack_spec",
           "mtd_recipe", "task_domains", "task_gradients", "task_interaction"]
