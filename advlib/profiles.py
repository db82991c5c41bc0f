"""Run profiles (smoke, default, voc, coco) and notebook parameter validation.

A profile fixes everything that decides how big an experiment is: dataset, input size, backbone,
training schedule, evaluation subset and attack budgets. ``smoke`` runs each notebook in about a
minute on 2 CPU cores (CI, nbval); ``default`` is the embedded reproduction on the generated
shapes dataset; ``voc``/``coco`` are the papers' settings (SSD300, VGG16, SGD lr 1e-3 ... ) for
users with the data and a GPU.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    """Everything that sets the size of an experiment.

    Attributes:
        name: profile name.
        data_format: ``synthetic`` (generated VOC layout), ``voc`` or ``coco``.
        train_split, test_split: split names (VOC ImageSets/Main names, or COCO ``instances_<split>``).
        image_size: square model input in pixels.
        backbone: backbone name for the STD model (see :mod:`advlib.models.backbones`).
        second_backbone: the other architecture of MTD's Table 3.
        epochs, batch_size, optimizer, lr, weight_decay, momentum, warmup_frac, schedule,
        milestones: the training schedule of the STD model.
        finetune_epochs, finetune_lr: adversarial recipes fine-tune from STD with these.
        n_trainval, n_test: generated dataset size (synthetic only).
        eval_images: test images used for attack tables (``None`` = all).
        attack_steps: PGD steps of the papers' tables (10 in MTD/CWAT/RobustDet).
        num_workers: DataLoader workers.
        pretrained_backbone: ImageNet backbone weights (real-data profiles).
    """

    name: str
    data_format: str
    train_split: str
    test_split: str
    image_size: int
    backbone: str
    second_backbone: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float = 0.9
    warmup_frac: float = 0.04
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()
    finetune_epochs: int = 4
    finetune_lr: float = 1e-3
    n_trainval: int = 0
    n_test: int = 0
    eval_images: int | None = None
    attack_steps: int = 10
    num_workers: int = 0
    pretrained_backbone: bool = False
    augment: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        """JSON-friendly view (part of every cache key and results file)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", data_format="synthetic", train_split="trainval", test_split="test",
        image_size=64, backbone="tiny_vgg", second_backbone="tiny_resnet", epochs=3, batch_size=32,
        optimizer="adamw", lr=3e-3, weight_decay=0.05, finetune_epochs=1, finetune_lr=1e-3,
        n_trainval=160, n_test=32, eval_images=32, attack_steps=2,
    ),
    "default": Profile(
        name="default", data_format="synthetic", train_split="trainval", test_split="test",
        image_size=128, backbone="tiny_vgg", second_backbone="tiny_resnet", epochs=12, batch_size=32,
        optimizer="adamw", lr=3e-3, weight_decay=0.05, finetune_epochs=3, finetune_lr=1e-3,
        n_trainval=3000, n_test=500, eval_images=500, attack_steps=10,
    ),
    # The papers' setting: SSD300 VGG16, SGD momentum 0.9, weight decay 5e-4, lr 1e-3 with step
    # decay (MTD trains from an ImageNet backbone; CWAT/RobustDet fine-tune from STD).
    "voc": Profile(
        name="voc", data_format="voc", train_split="trainval", test_split="test",
        image_size=300, backbone="vgg16", second_backbone="resnet50", epochs=120, batch_size=32,
        optimizer="sgd", lr=1e-3, weight_decay=5e-4, schedule="step", milestones=(0.67, 0.83),
        finetune_epochs=24, finetune_lr=1e-3, eval_images=None, num_workers=4,
        pretrained_backbone=True,
    ),
    "coco": Profile(
        name="coco", data_format="coco", train_split="train2017", test_split="val2017",
        image_size=300, backbone="vgg16", second_backbone="resnet50", epochs=60, batch_size=32,
        optimizer="sgd", lr=1e-3, weight_decay=5e-4, schedule="step", milestones=(0.67, 0.83),
        finetune_epochs=12, finetune_lr=1e-3, eval_images=5000, num_workers=4,
        pretrained_backbone=True,
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """Look up a profile by name, optionally overriding fields (validated).

    Raises:
        ValueError: unknown profile or unknown/ill-typed override.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
    base = PROFILES[name]
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown profile field {key!r}; fields are {sorted(fields)}")
        current = getattr(base, key)
        if current is not None and value is not None and isinstance(current, (int, float)) \
                and not isinstance(value, (int, float)):
            raise ValueError(f"profile field {key!r} expects a number, got {value!r}")
    prof = dataclasses.replace(base, **overrides)
    if prof.epochs < 1 or prof.batch_size < 1 or prof.image_size < 32:
        raise ValueError(f"profile {name!r}: epochs, batch_size must be >= 1 and image_size >= 32")
    return prof


def default_data_root(profile: Profile) -> Path:
    """Where the generated dataset of a synthetic profile lives (``data/shapes-<profile>``)."""
    return PROJECT_ROOT / "data" / f"shapes-{profile.name}"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is validated."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device (auto, cpu, cuda, cuda:0, ...)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use 'auto' or 'cpu'")
    return dev


@dataclass(frozen=True)
class RunParams:
    """The validated parameters every notebook's ``parameters`` cell sets."""

    profile: Profile
    data_root: Path
    data_format: str
    classes: tuple[str, ...] | None
    device: torch.device
    seed: int


def validate_params(
    profile: str = "default",
    data_root: str | os.PathLike | None = None,
    data_format: str = "voc",
    classes=None,
    device: str = "auto",
    seed: int = 0,
    **overrides,
) -> RunParams:
    """Check a notebook's parameters and resolve defaults, with clear errors.

    Args:
        profile: ``smoke`` | ``default`` | ``voc`` | ``coco``.
        data_root: dataset root; ``None`` means the generated dataset of the profile (synthetic
            profiles) and is an error for real-data profiles.
        data_format: ``voc`` or ``coco`` (the generated dataset is VOC layout).
        classes: ``None`` (from the data), a list of names, or a comma-separated string.
        device: ``auto``, ``cpu``, ``cuda``...
        seed: non-negative int.
        **overrides: profile fields to override (e.g. ``epochs=2``).
    """
    prof = get_profile(profile, **overrides)
    if data_format not in ("voc", "coco"):
        raise ValueError(f"data_format must be 'voc' or 'coco', got {data_format!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(classes, str):
        classes = tuple(c.strip() for c in classes.split(",") if c.strip())
    elif classes is not None:
        classes = tuple(str(c) for c in classes)
    if classes is not None and (len(classes) == 0 or len(set(classes)) != len(classes)):
        raise ValueError(f"classes must be non-empty and unique, got {classes!r}")
    if data_root is None or str(data_root) == "":
        if prof.data_format != "synthetic":
            raise ValueError(f"profile {profile!r} needs data_root (a {prof.data_format.upper()} dataset)")
        root = default_data_root(prof)
        data_format = "voc"
    else:
        root = Path(data_root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data_root {str(root)!r} does not exist")
        if prof.data_format == "synthetic":
            # A user's own data with a small profile: read it in the format they name.
            prof = dataclasses.replace(prof, data_format=data_format)
    if prof.data_format == "coco" or data_format == "coco":
        if prof.train_split == "trainval":
            prof = dataclasses.replace(prof, train_split="train2017", test_split="val2017")
    return RunParams(prof, root, data_format, classes, resolve_device(device), seed)


@dataclass(frozen=True)
class Budget:
    """Evaluation budgets of the paper notebooks (kept out of :class:`Profile` so that changing
    them never invalidates a trained model's cache key).

    Attributes:
        table_images: test images for the robustness tables.
        sweep_images: test images for the steps/ε sweeps.
        dag_steps: DAG's iteration cap (150 in the papers).
        second_backbone_epochs: STD epochs of the second architecture (MTD Table 3/5).
        second_finetune_epochs: its MTD fine-tuning epochs.
        seeds: seeds for the seed-variance rows.
        tsne_starts: random starts per task domain in MTD Fig. 4.
        sweep_steps: PGD steps of the sweeps (the papers: 20).
        recipe_epochs: fine-tuning epochs of the adversarial recipes (``None``: the profile's
            ``finetune_epochs``).
    """

    table_images: int
    sweep_images: int
    dag_steps: int
    second_backbone_epochs: int
    second_finetune_epochs: int
    seeds: tuple[int, ...]
    tsne_starts: int
    sweep_steps: int = 20
    recipe_epochs: int | None = None

    def __post_init__(self) -> None:
        for name in ("table_images", "sweep_images", "dag_steps", "tsne_starts", "sweep_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("Budget.seeds must name at least one seed")
        if self.recipe_epochs is not None and self.recipe_epochs < 1:
            raise ValueError(f"Budget.recipe_epochs must be >= 1 or None, got {self.recipe_epochs}")


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(16, 8, 3, 1, 1, (0, 1), 8, sweep_steps=2),
    # 2 CPU cores, <= 30 min from a cache of STD models: subsets for tables and sweeps, DAG capped
    # at 40 steps, robust recipes fine-tuned 2 epochs from STD
    "default": Budget(72, 24, 40, 12, 1, (0, 1, 2), 32, recipe_epochs=2),
    "voc": Budget(4952, 500, 150, 120, 24, (0,), 64),
    "coco": Budget(5000, 500, 150, 60, 12, (0,), 64),
}


def get_budget(profile: Profile) -> Budget:
    """The evaluation budget of a profile (``default``'s for unknown names)."""
    return BUDGETS.get(profile.name, BUDGETS["default"])
