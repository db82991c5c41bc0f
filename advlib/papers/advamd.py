"""AdvAmd (Yu, Chen & Gan, IJCAI 2023) for notebook 04: its budget, the vanilla models, the
defences and AdvAmd trained through the model cache, MagNet's threshold and the tidy evaluation
rows the claims read. The algorithm (stage 1, α and Ā, the recipes) is in
:mod:`advlib.papers.advamd_recipes`, re-exported here; the reported tables and the claims in
:mod:`advlib.papers.advamd_claims`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from advlib.papers.advamd_claims import TABLE3_ORDER
from advlib.profiles import family_schedule
from advlib.papers.advamd_recipes import (EPSILONS, PGD_STEP_FRACTION, PGD_STEPS, PHI, SOURCE, AdvAmdRecipe,
                                          DistillRecipe, ReconstructionRecipe, Stage1, attack_difficulty,
                                          cached_stage1, compute_stage1, object_predictions,
                                          setting_name, setting_spec, soft_class_loss, stage1_key, stage1_summary,
                                          vulnerability, weighted_multibox)

# ------------------------------------------------------------------ the notebook's budget and models
#: every setting of Table 1, in the paper's column order
SETTINGS = tuple((k, e) for k in ("FGSM", "PGD") for e in EPSILONS)


@dataclass(frozen=True)
class AdvAmdBudget:
    """Notebook 04's budget.

    Attributes:
        train_images: the fixed training subset stage 1 attacks and every stage-2 model,
            defence and control fine-tunes on (augmentation off: δ belongs to the image).
        epochs: fine-tuning epochs of AdvAmd, the defences and the benign control (the paper
            trains AdvAmd until its loss falls below σ, which it does not give).
        batch_size: fine-tuning batch.
        eval_images: test images of Tables 1 and 3.
        seeds: vanilla and AdvAmd seeds for the seed rows (AdvAmd in ``seed_setting`` only).
        settings: Table 1's settings (the paper's four; the smoke budget one).
        seed_setting: the setting AdvAmd and the control are trained in for every seed.
        table3_settings: Table 3's settings (on the SSD; none in the smoke budget).
        temperature: defensive distillation's T.
        magnet_epochs, magnet_fpr, magnet_val_images: the reformer's epochs, the clean false-
            positive rate its rejection threshold allows, and the held-out clean training images
            the threshold is set on.
        white_box_images, white_box_steps: the beyond-the-paper white-box table.
    """

    train_images: int
    epochs: int
    eval_images: int
    seeds: tuple[int, ...]
    batch_size: int = 16
    settings: tuple[tuple[str, float], ...] = SETTINGS
    seed_setting: tuple[str, float] = ("FGSM", 0.01)
    table3_settings: tuple[tuple[str, float], ...] = (("FGSM", 0.01), ("PGD", 0.01), ("PGD", 0.1))
    temperature: float = 10.0
    magnet_epochs: int = 3
    magnet_fpr: float = 0.05
    magnet_val_images: int = 200
    white_box_images: int = 72
    white_box_steps: int = 10

    def __post_init__(self) -> None:
        if min(self.train_images, self.epochs, self.eval_images, self.batch_size,
               self.magnet_epochs, self.magnet_val_images, self.white_box_images, self.white_box_steps) < 1:
            raise ValueError(f"invalid AdvAmd budget {self}")
        if not self.seeds or not 0 < self.magnet_fpr < 1 or self.temperature <= 0:
            raise ValueError(f"invalid AdvAmd budget {self}")
        for kind, eps in (self.seed_setting, *self.table3_settings, *self.settings):
            setting_spec(kind, eps)  # validates the attack name
        if self.seed_setting not in self.settings or not set(self.table3_settings) <= set(self.settings):
            raise ValueError(f"the seed setting and Table 3's settings must be among the budget's settings {self.settings}")


BUDGETS = {
    # CI plumbing: tiny subsets, one fine-tuning epoch
    "smoke": AdvAmdBudget(train_images=16, epochs=1, eval_images=8, seeds=(0,), batch_size=8,
                          settings=(("FGSM", 0.01),), table3_settings=(),
                          magnet_epochs=1, magnet_val_images=16, white_box_images=4, white_box_steps=2),
    "default": AdvAmdBudget(train_images=256, epochs=2, eval_images=200, seeds=(0, 1, 2)),
    "voc": AdvAmdBudget(train_images=5011, epochs=4, eval_images=4952, seeds=(0,),
                        magnet_epochs=10, magnet_val_images=500, white_box_images=500),
}

#: Table 3's rows: (mediate samples, auxiliary BN, AdvAmd loss), the paper's order
TABLE3_ROWS = TABLE3_ORDER
ARCH_NAMES = {"ssd": "SSD", "retinanet": "RetinaNet"}


def budget(profile_name: str) -> AdvAmdBudget:
    """The AdvAmd budget of a profile (the default profile's for a profile it does not name)."""
    return BUDGETS.get(profile_name, BUDGETS["default"])


def vanilla(exp, ab: AdvAmdBudget, arch: str, seed: int | None = None):
    """The vanilla model of an architecture and seed from the zoo (:meth:`Experiment.vanilla`, shared
    with the other notebooks): the SSD is the STD model of notebooks 00/01; RetinaNet starts from
    that STD model's backbone (our stand-in for the paper's ImageNet-pretrained backbones) and trains
    with the clean loss on the whole split."""
    if arch not in ARCH_NAMES:
        raise ValueError(f"unknown AdvAmd architecture {arch!r}; expected one of {sorted(ARCH_NAMES)}")
    return exp.vanilla(arch, seed=exp.seed if seed is None else seed)


def finetune_config(exp, ab: AdvAmdBudget, seed: int):
    """Every stage-2 model's schedule: the profile's fine-tuning schedule for ``ab.epochs`` epochs
    of ``ab.batch_size`` images, augmentation off (stage 1's δ belongs to the unaugmented image)."""
    return dataclasses.replace(exp.finetune_config(ab.epochs, seed=seed), batch_size=ab.batch_size, augment=False)


def stage1(exp, ab: AdvAmdBudget, arch: str, kind: str, eps: float, seed: int | None = None,
           cached_only: bool = False) -> Stage1 | None:
    """Stage 1 of a setting on the vanilla model of ``arch`` and ``seed`` (cached on disk; with
    ``cached_only``, ``None`` when it or its vanilla model is not cached: nothing is computed)."""
    if cached_only:
        if arch not in ARCH_NAMES:
            raise ValueError(f"unknown AdvAmd architecture {arch!r}; expected one of {sorted(ARCH_NAMES)}")
        tm = exp.vanilla(arch, seed=exp.seed if seed is None else seed, cached_only=True)
        if tm is None:
            return None
        return cached_stage1(exp, tm.model, setting_spec(kind, eps), PHI[kind], ab.train_images, cached_only=True)
    v = vanilla(exp, ab, arch, seed).model
    return cached_stage1(exp, v, setting_spec(kind, eps), PHI[kind], ab.train_images)


def fine_tuned(exp, ab: AdvAmdBudget, arch: str, recipe, seed: int | None = None, cached_only: bool = False):
    """A model fine-tuned from the vanilla one with ``recipe`` on the stage-1 subset (zoo; with
    ``cached_only``, ``None`` when the cache lacks it: nothing is trained)."""
    seed = exp.seed if seed is None else seed
    rc = exp.clean_recipe(arch, seed=seed, cached_only=cached_only)
    if rc is None:
        return None
    only = {"cached_only": True} if cached_only else {}
    return exp.trained(recipe, parent=rc[0], parent_cfg=rc[1], seed=seed, cfg=finetune_config(exp, ab, seed),
                       train_images=ab.train_images, arch=arch, **only)


def defence_recipe(defence: str, s1: Stage1 | None, ab: AdvAmdBudget, switches: tuple[bool, bool, bool] = (True, True, True)):
    """The recipe of a Table 1 row: ``AdvAmd`` (with ``switches`` = mediate, aux BN, AdvAmd loss),
    ``Adv-Train``, ``Def-Distill`` or ``Benign FT`` (the control: the clean loss, same schedule)."""
    from advlib.train import StandardRecipe

    if defence == "AdvAmd":
        mediate, aux_bn, amd_loss = switches
        return AdvAmdRecipe("advamd", s1, mediate=mediate, aux_bn=aux_bn, amd_loss=amd_loss)
    if defence == "Adv-Train":
        return AdvAmdRecipe("adv-train", s1, mediate=False, aux_bn=False, amd_loss=False)
    if defence == "Def-Distill":
        return DistillRecipe("def-distill", ab.temperature, s1)
    if defence == "Benign FT":
        return StandardRecipe()
    raise ValueError(f"unknown defence {defence!r}; expected AdvAmd, Adv-Train, Def-Distill or Benign FT")


def reformer(exp, ab: AdvAmdBudget, cached_only: bool = False):
    """MagNet's reformer, trained on the clean stage-1 subset (zoo; one for every detector; with
    ``cached_only``, ``None`` when the cache lacks it: nothing is trained)."""
    from advlib.train import TrainConfig

    cfg = dataclasses.replace(TrainConfig.from_profile(exp.profile, seed=exp.seed), epochs=ab.magnet_epochs,
                              batch_size=ab.batch_size)
    return exp.trained(ReconstructionRecipe(), cfg=cfg, train_images=ab.train_images, arch="magnet-reformer",
                       **({"cached_only": True} if cached_only else {}))


def magnet_threshold(exp, ab: AdvAmdBudget, ae: nn.Module) -> float:
    """The rejection threshold on ``ab.magnet_val_images`` clean training images outside the
    reformer's training subset (false-positive rate ``ab.magnet_fpr``)."""
    from advlib.data import collate
    from advlib.models.magnet import rejection_threshold

    used = set(getattr(exp.train_subset(ab.train_images), "indices", range(len(exp.train_set))))
    held = [i for i in range(len(exp.train_set)) if i not in used][:ab.magnet_val_images]
    if not held:
        raise ValueError("no training image is left outside the reformer's subset to set MagNet's threshold on")
    images, _ = collate([exp.train_set[i] for i in held])
    return rejection_threshold(ae, images, ab.magnet_fpr)


def magnet_parts(exp, ab: AdvAmdBudget, cached_only: bool = False):
    """MagNet's reformer (a TrainedModel, :func:`reformer`) and its rejection threshold
    (:func:`magnet_threshold`): what ``MagNetDetector(detector, reformer.model, threshold)`` puts
    in front of any detector. With ``cached_only``, ``None`` when the reformer is not cached."""
    ae = reformer(exp, ab, cached_only=cached_only)
    return None if ae is None else (ae, magnet_threshold(exp, ab, ae.model))


def reductions(exp, ab: AdvAmdBudget) -> str:
    """What this budget changes from the paper, in one line (printed beside every table)."""
    n = min(ab.train_images, len(exp.train_set))
    return (f"Budget: two small detectors on {exp.profile.name} data (the paper: Faster R-CNN, SSD, RetinaNet, "
            f"YOLO-V5 with ResNet-50 on COCO); vanilla SSD = STD, vanilla RetinaNet (one conv per head, 64-channel FPN) from STD's "
            f"backbone, {family_schedule(exp.profile, 'retinanet').epochs} epochs; "
            f"stage 1 and every fine-tune on {n} of {len(exp.train_set)} training images, {ab.epochs} epoch(s) "
            f"of {ab.batch_size} (the paper: until the loss falls below σ); PGD {PGD_STEPS} steps of ε/4 "
            f"(the paper: ART, steps not given); evaluated on {ab.eval_images} test images; seeds "
            f"{list(ab.seeds)} for vanilla, AdvAmd and the control in {setting_name(*ab.seed_setting)}")


def evaluate(exp, arch: str, seed: int, vanilla_model: nn.Module, entries: list[dict], images: Tensor,
             targets: list[dict]):
    """Tidy rows (:data:`advlib.papers.advamd_claims.ROW_COLUMNS` plus COCO box AP) for the vanilla
    model and ``entries`` of one architecture and seed: per setting, one robustness table with the
    benign images and the setting's adversarial set crafted once on the vanilla model (the paper's
    "adversarial dataset"; cached on disk) as columns.

    Args:
        entries: dicts with ``defence``, ``kind``, ``eps``, ``model`` and for AdvAmd rows
            ``mediate``, ``aux_bn``, ``amd_loss``; the vanilla rows are added for every setting.

    Returns:
        ``(rows DataFrame, {setting: RobustnessTable})``.
    """
    import pandas as pd

    from advlib.papers.advamd_claims import switches_label
    from advlib.robustness import Transfer, robustness_table

    settings = list(dict.fromkeys((e["kind"], float(e["eps"])) for e in entries))
    rows, tables = [], {}
    for kind, eps in settings:
        name = setting_name(kind, eps)
        mine = [e for e in entries if (e["kind"], float(e["eps"])) == (kind, eps)]
        labels = {}
        for e in mine:
            sw = switches_label(e.get("mediate"), e.get("aux_bn"), e.get("amd_loss")) if e["defence"] == "AdvAmd" else ""
            labels[f"{e['defence']} {sw}".strip()] = e
        models = {"vanilla": vanilla_model, **{k: e["model"] for k, e in labels.items()}}
        cols = {"benign": None, "adversarial": Transfer("vanilla", setting_spec(kind, eps))}
        t = robustness_table(models, cols, images, targets, exp.classes, data_id=exp.data_id, progress=False, coco=True)
        tables[name] = t
        coco = t.coco_frame
        for label, e in [("vanilla", {"defence": None}), *labels.items()]:
            rows.append({"arch": arch, "seed": seed, "defence": e["defence"], "setting": name, "kind": kind,
                         "eps": eps, "mediate": e.get("mediate"), "aux_bn": e.get("aux_bn"),
                         "amd_loss": e.get("amd_loss"), "benign": t.get(label, "benign"),
                         "adversarial": t.get(label, "adversarial"), "benign_ap": float(coco.loc[label, "benign"]),
                         "adversarial_ap": float(coco.loc[label, "adversarial"]), "model": label})
    return pd.DataFrame(rows), tables


__all__ = ["ARCH_NAMES", "AdvAmdBudget", "AdvAmdRecipe", "BUDGETS", "DistillRecipe", "EPSILONS", "PGD_STEPS",
           "PGD_STEP_FRACTION", "PHI", "ReconstructionRecipe", "SETTINGS", "SOURCE", "Stage1", "TABLE3_ROWS",
           "attack_difficulty", "budget", "cached_stage1", "compute_stage1", "defence_recipe",
           "evaluate", "fine_tuned", "finetune_config", "magnet_threshold", "object_predictions", "reductions",
           "reformer", "setting_name", "setting_spec", "soft_class_loss", "stage1", "stage1_key", "stage1_summary",
           "vanilla", "vulnerability", "weighted_multibox"]
