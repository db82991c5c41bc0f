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
from dataclasses import dataclass
from pathlib import Path

import torch

from advlib.paths import PROJECT_ROOT
from advlib.train import TrainConfig



@dataclass(frozen=True)
class Profile:
    """Everything that sets the size of an experiment.

    Attributes:
        name: profile name.
        data_format: ``synthetic`` (generated VOC layout), ``voc`` or ``coco``.
        train_split, test_split: split names (VOC ImageSets/Main names, or COCO ``instances_<split>``);
            ``None``: detected from the data (``trainval``/``test``, ``train``/``val``, ``train``/``test``).
        image_size: square model input in pixels.
        backbone: backbone name for the STD model (see :mod:`advlib.models.backbones`).
        second_backbone: the other architecture (MTD's Table 3, transfer sources).
        train: the STD model's training schedule (its ``seed`` is replaced by the run's).
        finetune_epochs, finetune_lr: adversarial recipes fine-tune from STD with these.
        n_trainval, n_test: generated dataset size (synthetic only).
        eval_images: test images used for attack tables (``None`` = all).
        attack_steps: PGD steps of the papers' tables (10 in MTD/CWAT/RobustDet).
        pretrained_backbone: ImageNet backbone weights (real-data profiles).
        clean_map_floor: below this clean mAP of the STD model, claims that compare attacked
            models are "not testable on this data".
        stream_eval: the evaluation split is read batch by batch (``Experiment.eval_data`` is an
            :class:`~advlib.imageset.ImageSet`), not held in memory (the real-data profiles).
    """

    name: str
    data_format: str
    train_split: str | None
    test_split: str | None
    image_size: int
    backbone: str
    second_backbone: str
    train: TrainConfig
    finetune_epochs: int = 4
    finetune_lr: float = 1e-3
    n_trainval: int = 0
    n_test: int = 0
    eval_images: int | None = None
    attack_steps: int = 10
    pretrained_backbone: bool = False
    clean_map_floor: float = 0.2
    stream_eval: bool = False

    def to_dict(self) -> dict:
        """JSON-friendly view (written beside every result)."""
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


_ADAMW = TrainConfig(epochs=12, batch_size=32, optimizer="adamw", lr=3e-3, weight_decay=0.05)
# The papers' setting: SSD300 VGG16, SGD momentum 0.9, weight decay 5e-4, lr 1e-3 with step
# decay (MTD trains from an ImageNet backbone; CWAT/RobustDet fine-tune from STD).
_SGD = TrainConfig(epochs=120, batch_size=32, optimizer="sgd", lr=1e-3, weight_decay=5e-4, schedule="step",
                   milestones=(0.67, 0.83), num_workers=4)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", data_format="synthetic", train_split="trainval", test_split="test", image_size=64,
        backbone="tiny_vgg", second_backbone="tiny_resnet", train=dataclasses.replace(_ADAMW, epochs=3),
        finetune_epochs=1, n_trainval=160, n_test=32, eval_images=32, attack_steps=2, stream_eval=True,
    ),
    "default": Profile(
        name="default", data_format="synthetic", train_split="trainval", test_split="test", image_size=128,
        backbone="tiny_vgg", second_backbone="tiny_resnet", train=_ADAMW, finetune_epochs=3,
        n_trainval=3000, n_test=500, eval_images=500, attack_steps=10,
    ),
    "voc": Profile(
        name="voc", data_format="voc", train_split=None, test_split=None, image_size=300, backbone="vgg16",
        second_backbone="resnet50", train=_SGD, finetune_epochs=24, eval_images=None, pretrained_backbone=True,
        stream_eval=True,
    ),
    "coco": Profile(
        name="coco", data_format="coco", train_split=None, test_split=None, image_size=300, backbone="vgg16",
        second_backbone="resnet50", train=dataclasses.replace(_SGD, epochs=60), finetune_epochs=12,
        eval_images=5000, pretrained_backbone=True, stream_eval=True,
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """Look up a profile by name, optionally overriding fields (validated). Fields of the
    training schedule (``epochs``, ``lr``, ``batch_size``, ...) override ``profile.train``.

    Raises:
        ValueError: unknown profile or unknown/ill-typed override.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
    base = PROFILES[name]
    own = {f.name for f in dataclasses.fields(Profile)} - {"train"}
    sched = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}
    for key, value in overrides.items():
        if key not in own | sched:
            raise ValueError(f"unknown profile field {key!r}; fields are {sorted(own | sched)}")
        current = getattr(base, key) if key in own else getattr(base.train, key)
        if current is not None and value is not None and isinstance(current, (int, float)) \
                and not isinstance(current, bool) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"profile field {key!r} expects a number, got {value!r}")
    train = dataclasses.replace(base.train, **{k: v for k, v in overrides.items() if k in sched})
    prof = dataclasses.replace(base, train=train, **{k: v for k, v in overrides.items() if k in own})
    if prof.image_size < 32:
        raise ValueError(f"profile {name!r}: image_size must be >= 32, got {prof.image_size}")
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
    year: str | None = None
    user_data: bool = False


def validate_params(
    profile: str = "default",
    data_root: str | os.PathLike | None = None,
    data_format: str = "voc",
    classes=None,
    device: str = "auto",
    seed: int = 0,
    train_split: str | None = None,
    test_split: str | None = None,
    year: str | int | None = None,
    image_size: int | None = None,
    **overrides,
) -> RunParams:
    """Check a notebook's parameters and resolve defaults, with clear errors.

    Args:
        profile: ``smoke`` | ``default`` | ``voc`` | ``coco``.
        data_root: dataset root; ``None`` means the generated dataset of the profile (synthetic
            profiles) and is an error for real-data profiles.
        data_format: ``voc`` or ``coco`` (the generated dataset is VOC layout).
        classes: ``None`` (from the data), a list of names, or a comma-separated string; a subset
            of the dataset's classes selects them (matched case-insensitively).
        device: ``auto``, ``cpu``, ``cuda``...
        seed: non-negative int.
        train_split, test_split: split names; ``None`` detects them from the data.
        year: VOC year when ``data_root`` holds a ``VOCdevkit`` with several years.
        image_size: model input in pixels (``None``: the profile's).
        **overrides: profile fields to override (e.g. ``epochs=2``).
    """
    if image_size is not None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32:
            raise ValueError(f"image_size must be an int >= 32 (pixels), got {image_size!r}")
        overrides["image_size"] = image_size
    for name, split in (("train_split", train_split), ("test_split", test_split)):
        if split is not None and (not isinstance(split, str) or not split.strip() or "/" in split):
            raise ValueError(f"{name} must be a split name such as 'train' or 'val2017', got {split!r}")
    if year is not None and not str(year).isdigit():
        raise ValueError(f"year must be like 2007 or 2012, got {year!r}")
    prof = get_profile(profile, **overrides)
    if data_format not in ("voc", "coco"):
        raise ValueError(f"data_format must be 'voc' or 'coco', got {data_format!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(classes, str):
        classes = tuple(c.strip() for c in classes.split(",") if c.strip())
    elif classes is not None:
        classes = tuple(str(c).strip() for c in classes)
    if classes is not None and (len(classes) == 0 or len({c.lower() for c in classes}) != len(classes)):
        raise ValueError(f"classes must be non-empty and unique (case-insensitively), got {classes!r}")
    user_data = not (data_root is None or str(data_root) == "")
    if not user_data:
        if prof.data_format != "synthetic":
            raise ValueError(f"profile {profile!r} needs data_root (a {prof.data_format.upper()} dataset)")
        root = default_data_root(prof)
        data_format = "voc"
    else:
        root = Path(data_root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"data_root {str(root)!r} does not exist")
        # a user's own data: read it in the format they name, splits detected unless given
        prof = dataclasses.replace(prof, data_format=data_format, train_split=None, test_split=None)
    if train_split is not None or test_split is not None:
        prof = dataclasses.replace(prof, train_split=train_split or prof.train_split,
                                   test_split=test_split or prof.test_split)
    return RunParams(prof, root, data_format, classes, resolve_device(device), seed,
                     None if year is None else str(year), user_data)


@dataclass(frozen=True)
class Budget:
    """Evaluation budget of a paper notebook (kept out of :class:`Profile` so that changing it
    never invalidates a trained model's cache key). A paper module adds its own fields in a
    budget of its own (e.g. :class:`advlib.papers.mtd.MTDBudget`).

    Attributes:
        table_images: test images for the robustness tables.
        sweep_images: test images for the steps/ε sweeps.
        dag_steps: DAG's iterations (signed steps; 10 in the papers' tables, 20 in the voc budget).
        rap_steps: RAP's iterations (20 in MTD §5.8).
        seeds: seeds for the seed-variance rows.
        sweep_steps: PGD steps of the sweeps (the papers: 20).
        recipe_epochs: fine-tuning epochs of the adversarial recipes (``None``: the profile's
            ``finetune_epochs``).
    """

    table_images: int
    sweep_images: int
    dag_steps: int
    seeds: tuple[int, ...]
    sweep_steps: int = 20
    rap_steps: int = 20
    recipe_epochs: int | None = None

    def __post_init__(self) -> None:
        for name in ("table_images", "sweep_images", "dag_steps", "sweep_steps", "rap_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("Budget.seeds must name at least one seed")
        if self.recipe_epochs is not None and self.recipe_epochs < 1:
            raise ValueError(f"Budget.recipe_epochs must be >= 1 or None, got {self.recipe_epochs}")


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(table_images=16, sweep_images=8, dag_steps=3, seeds=(0, 1), sweep_steps=2, rap_steps=2),
    # 2 CPU cores: subsets of the test split for tables and sweeps, three seeds
    "default": Budget(table_images=72, sweep_images=24, dag_steps=10, seeds=(0, 1, 2), recipe_epochs=2),
    "voc": Budget(table_images=4952, sweep_images=500, dag_steps=150, seeds=(0,)),  # the papers: DAG 150 steps
    "coco": Budget(table_images=5000, sweep_images=500, dag_steps=150, seeds=(0,)),
}


#: per profile, how a detector family's clean schedule differs from the profile's STD schedule
#: (:meth:`advlib.experiment.Experiment.vanilla`); families start from the STD backbone of the same
#: seed. Default: AdamW at lr 3e-3 (the SSD's) stalls RetinaNet's focal loss (4 epochs from scratch:
#: loss 1.56 -> 1.18, mAP 0.014), lr 1e-3 in batches of 16 from the STD backbone reaches mAP 0.40
#: after one epoch; a family without an entry trains with the profile's STD schedule
FAMILY_SCHEDULES: dict[str, dict[str, dict]] = {
    "smoke": {arch: {"epochs": 2, "batch_size": 16, "lr": 1e-3} for arch in ("retinanet", "fcos", "faster_rcnn")},
    # measured from the STD backbone of seed 0, all 500 test images: RetinaNet 0.663 (445 s under
    # load; 290 s for seed 2 alone), FCOS 0.686 (366 s), Faster R-CNN 0.812 (750 s)
    "default": {arch: {"epochs": 4, "batch_size": 16, "lr": 1e-3} for arch in ("retinanet", "fcos", "faster_rcnn")},
}


def family_schedule(profile: Profile, arch: str):
    """The clean schedule of detector family ``arch`` under ``profile`` (:data:`FAMILY_SCHEDULES`
    over the profile's STD schedule; the SSD's is the STD schedule itself)."""
    changes = FAMILY_SCHEDULES.get(profile.name, {}).get(arch, {}) if arch != "ssd" else {}
    return dataclasses.replace(profile.train, **changes)


def get_budget(profile: Profile) -> Budget:
    """The evaluation budget of a profile (``default``'s for unknown names)."""
    return BUDGETS.get(profile.name, BUDGETS["default"])
