"""What a notebook works with: validated parameters, datasets, the model cache, evaluation.

A notebook's parameters cell sets ``profile``, ``data_root``, ``data_format``, ``classes``,
``train_split``, ``test_split``, ``year``, ``image_size``, ``device``, ``seed``;
``Experiment(**those)`` validates them, generates the default dataset when it is missing, checks
every image of both splits before anything trains, and hands out trained models (from the cache
when possible), evaluation tensors and mAP. :func:`setup` does that and prints a summary for a
notebook. Nothing here is specific to one paper.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from advlib.data import build_dataset, collate, resolve_classes, resolve_splits, validate_images
from advlib.data.synthetic import SyntheticConfig, generate_voc
from advlib.evaluate import VOCResult
from advlib.models import SSDDetector, build_detector
from advlib.profiles import RunParams, default_data_root, validate_params
from advlib.recipes import make_recipe
from advlib.paths import display_path
from advlib.results import save_figure, save_json
from advlib.robustness import detect_all, mean_ap
from advlib.train import Recipe, TrainConfig, train
from advlib.cache import ModelCache

log = logging.getLogger(__name__)

#: The generated dataset always uses this seed: the training seed varies, the data do not.
DATA_SEED = 0
#: Seed of the permutation that picks a training subset (:meth:`Experiment.train_subset`).
SUBSET_SEED = 0
#: Keep decoded images in memory when a split is smaller than this many bytes.
CACHE_BYTES = 3 * 2**30


@dataclass
class TrainedModel:
    """A detector from the model cache and what made it: ``meta`` holds the cache ``key``, the
    ``spec``, the training ``history`` and ``train_seconds`` (when it was trained)."""

    model: SSDDetector
    meta: dict

    @property
    def key(self) -> str:
        return self.meta["key"]


class Experiment:
    """Datasets, models and evaluation for one set of notebook parameters.

    Args:
        profile, data_root, data_format, classes, device, seed, train_split, test_split, year,
            image_size: the notebook parameters (see :func:`advlib.profiles.validate_params`).
        zoo_root: model cache directory (default ``data/cache``).
        progress: tqdm bars for training.
        **overrides: profile fields to override (e.g. ``epochs=2``).
    """

    def __init__(self, profile: str = "default", data_root=None, data_format: str = "voc", classes=None,
                 device: str = "auto", seed: int = 0, zoo_root=None, progress: bool = True,
                 train_split: str | None = None, test_split: str | None = None, year=None,
                 image_size: int | None = None, **overrides) -> None:
        self.params: RunParams = validate_params(profile, data_root, data_format, classes, device, seed,
                                                 train_split, test_split, year, image_size, **overrides)
        self.device = self.params.device
        self.seed = self.params.seed
        self.zoo = ModelCache(zoo_root)
        self.progress = progress
        #: gradient-accumulation shards per process of every global batch (:func:`advlib.train.train`;
        #: not part of any cache key: the same update to float tolerance)
        self.micro_batches = 1
        self.timings: dict[str, float] = {}
        if self.synthetic:
            self._generate()
        self.profile = self._with_splits(self.params.profile)

    # ------------------------------------------------------------------ data
    @property
    def synthetic(self) -> bool:
        return self.params.profile.data_format == "synthetic"

    @property
    def data_format(self) -> str:
        return "voc" if self.synthetic else self.params.data_format

    def synthetic_config(self) -> SyntheticConfig:
        p = self.params.profile
        return SyntheticConfig(n_trainval=p.n_trainval, n_test=p.n_test, image_size=p.image_size)

    def _generate(self) -> None:
        root = self.params.data_root
        if root == default_data_root(self.params.profile):
            t0 = time.perf_counter()
            generate_voc(root, seed=DATA_SEED, config=self.synthetic_config(), progress=self.progress)
            self.timings["generate_data"] = time.perf_counter() - t0

    def _with_splits(self, prof):
        """The profile with its split names resolved against the data (auto-detected when unset)."""
        train_split, test_split = resolve_splits(self.params.data_root, self.data_format, prof.train_split,
                                                 prof.test_split, year=self.params.year)
        return dataclasses.replace(prof, train_split=train_split, test_split=test_split)

    @cached_property
    def classes(self) -> tuple[str, ...]:
        """The class list: the ``classes`` parameter (matched to the data's names), else
        ``classes.txt``, else the names in the annotations of both splits."""
        if self.params.classes is not None:
            return self.params.classes
        return tuple(resolve_classes(self.params.data_root, self.data_format,
                                     (self.profile.train_split, self.profile.test_split), year=self.params.year))

    def _dataset(self, split: str):
        size = self.profile.image_size
        ds = build_dataset(self.params.data_root, self.data_format, split, classes=self.classes, size=size,
                           year=self.params.year)
        ds.cache_images = len(ds) * 3 * size * size < CACHE_BYTES
        return ds

    @cached_property
    def train_set(self):
        return self._checked(self._dataset(self.profile.train_split))

    @cached_property
    def test_set(self):
        return self._checked(self._dataset(self.profile.test_split))

    def _checked(self, ds):
        t0 = time.perf_counter()
        validate_images(ds)
        self.timings[f"validate_{ds.split}"] = time.perf_counter() - t0
        return ds

    def check_data(self) -> None:
        """Read both splits and check every image now (before anything trains); the data layer
        warns once about each class without training objects."""
        _ = self.train_set, self.test_set

    @property
    def untrained_classes(self) -> list[str]:
        """Classes with no object in the training split (kept; per-class AP marks them)."""
        return [c for c, n in self.train_set.objects_per_class().items() if n == 0]

    def per_class_notes(self) -> dict[str, str]:
        """``{class: "no training objects"}`` for the per-class AP tables and charts."""
        return {c: "no training objects" for c in self.untrained_classes}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def output(self) -> str:
        """Where this run's results and figures go, below ``results/`` and ``figures/``: the top
        folders for the reproduction, ``smoke`` etc. for other profiles on the generated data, and
        ``<data folder>-<hash>[/<profile>]`` for a user's dataset (never over the reproduction)."""
        return run_folder(self.params)

    def save_json(self, payload: dict, name: str):
        """Write ``payload`` to this run's results folder; returns the path relative to the project."""
        return display_path(save_json(payload, name, self.output))

    def save_figure(self, fig, name: str):
        """Save ``fig`` to this run's figures folder; returns the path relative to the project."""
        return display_path(save_figure(fig, name, self.output))

    def eval_indices(self) -> list[int]:
        """The test images used for tables: the first ``profile.eval_images`` that have objects."""
        limit = self.profile.eval_images or len(self.test_set)
        idx = [i for i in range(len(self.test_set)) if len(self.test_set.annotation(i)["labels"]) > 0]
        skipped = len(self.test_set) - len(idx)
        if skipped:
            log.info("skipping %d test images without objects for evaluation", skipped)
        return idx[:limit]

    @cached_property
    def eval_data(self) -> tuple[Tensor, list[dict]]:
        """``(images [N, 3, H, W], targets)`` of the evaluation subset, loaded once; under a profile
        with ``stream_eval`` (voc, coco) the images are the streamed :attr:`eval_set` (sliced like a
        tensor, read batch by batch by every evaluation and attack function)."""
        if self.profile.stream_eval:
            return self.eval_set, self.eval_set.targets
        return collate([self.test_set[i] for i in self.eval_indices()])

    @cached_property
    def eval_set(self):
        """The evaluation subset as an :class:`~advlib.imageset.ImageSet`: read batch by batch by a
        ``DataLoader`` (the profile's ``num_workers``), never held whole; what streaming callers
        (``evaluate_attack``, robustness tables on VOC/COCO) take in place of :attr:`eval_data`."""
        from advlib.imageset import ImageSet

        return ImageSet(self.test_set, self.eval_indices(), num_workers=self.profile.train.num_workers)

    @property
    def data_id(self) -> str:
        """The test split's identity as a string (part of adversarial-set keys)."""
        import json

        return json.dumps(self.test_set.identity(), sort_keys=True)

    # ---------------------------------------------------------------- models
    def build(self, backbone: str | None = None, seed: int | None = None, arch: str = "ssd"):
        """A freshly initialised detector of family ``arch`` (``ssd``, ``retinanet``; see
        :data:`advlib.models.ARCHITECTURES`), seeded so that the same call builds the same weights."""
        torch.manual_seed(self.seed if seed is None else seed)
        return build_detector(arch, backbone or self.profile.backbone, self.num_classes, self.profile.image_size,
                              pretrained_backbone=self.profile.pretrained_backbone).to(self.device)

    def model_spec(self, recipe: Recipe, cfg: TrainConfig, backbone: str, seed: int, parent: str | None,
                   train_images: int | None = None, arch: str = "ssd") -> dict:
        """Everything that determines a trained model (its cache key): recipe, schedule, detector
        family (only when not the SSD, so that SSD keys never change), backbone, input size, seed,
        parent model, classes and the training data's identity (and the size of the training
        subset, only when one is used, so that whole-split keys never change)."""
        spec = {"recipe": recipe.spec(), "train": cfg.key_dict(), "backbone": backbone,
                "image_size": self.profile.image_size, "pretrained_backbone": self.profile.pretrained_backbone,
                "seed": seed, "parent": parent, "num_classes": self.num_classes,
                "dataset": self.train_set.identity()}
        if arch != "ssd":
            spec["arch"] = arch
        if train_images is not None:
            spec["train_subset"] = {"images": int(train_images), "rule": f"randperm(seed {SUBSET_SEED}), first n"}
        return spec

    def train_subset(self, n: int | None):
        """The training split, or a fixed subset of ``n`` of its images: the first ``n`` of a
        permutation drawn with :data:`SUBSET_SEED` (the same for every model and seed, so models
        trained on a subset differ only in what they set out to compare), in split order.

        Raises:
            ValueError: ``n`` < 1 or larger than the split (naming both).
        """
        if n is None:
            return self.train_set
        total = len(self.train_set)
        if not 1 <= n <= total:
            raise ValueError(f"train_images={n} must be between 1 and the {total} images of split "
                             f"{self.train_set.split!r}")
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))
        return torch.utils.data.Subset(self.train_set, sorted(perm[:n].tolist()))

    def trained(self, recipe: Recipe | str = "std", backbone: str | None = None, seed: int | None = None,
                parent: Recipe | str | None = None, cfg: TrainConfig | None = None,
                parent_cfg: TrainConfig | None = None, train_images: int | None = None,
                cached_only: bool = False, arch: str = "ssd") -> TrainedModel | None:
        """A trained detector from the model cache (trained and cached if missing) with its metadata.

        Args:
            recipe: a :class:`~advlib.train.Recipe` or a registered name (``std``; papers register
                more, e.g. ``cls``/``loc``/``con``/``mtd`` with ``import advlib.papers.mtd``).
            backbone: backbone name (default: the profile's).
            seed: training seed (default: the experiment's).
            parent: fine-tune from the model this recipe (or name) trains, same backbone and seed;
                ``None`` trains from scratch.
            cfg: schedule (default: the profile's STD schedule, or its fine-tuning schedule).
            parent_cfg: the parent's schedule (default: the profile's STD schedule).
            train_images: train on a fixed subset of this many training images
                (:meth:`train_subset`; ``None`` or the split's size: the whole split). The parent
                keeps its own (whole-split) training.
            cached_only: return ``None`` instead of training when the model is not in the cache
                (e.g. a comparison row another notebook's budget trains).
            arch: detector family (``ssd``, ``retinanet``; :data:`advlib.models.ARCHITECTURES`); the
                parent is of the same family.
        """
        recipe = make_recipe(recipe) if isinstance(recipe, str) else recipe
        backbone = backbone or self.profile.backbone
        seed = self.seed if seed is None else seed
        parent_tm = None if parent is None else self.trained(parent, backbone, seed, cfg=parent_cfg,
                                                              cached_only=cached_only, arch=arch)
        if parent is not None and parent_tm is None:
            return None
        cfg = cfg or TrainConfig.from_profile(self.profile, seed=seed, finetune=parent is not None)
        if train_images == len(self.train_set):
            train_images = None  # the whole split: the same model (and key) as without a subset
        data = self.train_subset(train_images)
        spec = self.model_spec(recipe, cfg, backbone, seed, None if parent_tm is None else parent_tm.key, train_images,
                               arch)
        if cached_only and not self.zoo.has(spec):
            return None

        def build() -> SSDDetector:
            m = self.build(backbone, seed, arch)
            if parent_tm is not None:
                m.load_state_dict(parent_tm.model.state_dict())
            prepare = getattr(recipe, "prepare_model", None)  # a recipe that trains another architecture
            return m if prepare is None else prepare(m).to(self.device)

        def fit(m: SSDDetector, ckpt_dir) -> dict:
            t0 = time.perf_counter()
            hist = train(m, data, recipe, cfg, self.device, ckpt_dir, self.progress, micro_batches=self.micro_batches,
                         desc=f"train {recipe.name} ({backbone if arch == 'ssd' else f'{arch}, {backbone}'}, seed {seed})")
            return {"history": hist, "train_seconds": time.perf_counter() - t0}

        model, meta = self.zoo.get(spec, build, fit)
        model.zoo_key = meta["key"]  # identifies it in result and transfer-set cache keys
        return TrainedModel(model.to(self.device).eval(), meta)

    def clean_recipe(self, arch: str = "ssd", backbone: str | None = None, seed: int | None = None,
                     cached_only: bool = False) -> tuple[Recipe, TrainConfig] | None:
        """``(recipe, schedule)`` of a detector family's clean model (:meth:`vanilla`), also the
        parent to pass when fine-tuning it; ``None`` with ``cached_only`` when its STD source is
        not cached."""
        from advlib.profiles import family_schedule
        from advlib.recipes import PretrainedBackbone

        seed = self.seed if seed is None else seed
        cfg = dataclasses.replace(family_schedule(self.profile, arch), seed=seed)
        if arch == "ssd":
            return make_recipe("std"), cfg
        source = self.trained("std", backbone, seed, cached_only=cached_only)
        return None if source is None else (PretrainedBackbone(source.model, source.key), cfg)

    def vanilla(self, arch: str = "ssd", backbone: str | None = None, seed: int | None = None,
                cached_only: bool = False) -> TrainedModel | None:
        """The clean (vanilla) detector of family ``arch`` from the zoo, shared by every notebook:
        the SSD is STD; another family starts from the backbone of the STD model of the same backbone
        and seed (our stand-in for the papers' ImageNet-pretrained backbones,
        :class:`~advlib.recipes.PretrainedBackbone`) and trains with the clean loss on the whole
        split with its schedule (:data:`advlib.profiles.FAMILY_SCHEDULES`)."""
        rc = self.clean_recipe(arch, backbone, seed, cached_only)
        if rc is None:
            return None
        return self.trained(rc[0], backbone, seed, cfg=rc[1], cached_only=cached_only, arch=arch)

    def model(self, *args, **kwargs) -> SSDDetector:
        """:meth:`trained`'s detector alone."""
        return self.trained(*args, **kwargs).model

    def finetune_config(self, epochs: int | None = None, seed: int | None = None) -> TrainConfig:
        """The profile's fine-tuning schedule (for recipes started from STD), with ``epochs``
        overriding ``profile.finetune_epochs`` (e.g. a notebook budget's ``recipe_epochs``)."""
        cfg = TrainConfig.from_profile(self.profile, seed=self.seed if seed is None else seed, finetune=True)
        if epochs is not None:
            if epochs < 1:
                raise ValueError(f"epochs must be >= 1, got {epochs}")
            cfg = dataclasses.replace(cfg, epochs=int(epochs))
        return cfg

    # ------------------------------------------------------------ evaluation
    def detect(self, model: SSDDetector, images: Tensor, batch_size: int = 64) -> list[dict]:
        """Detections for ``images`` (moved to the model's device in batches), on the CPU."""
        return detect_all(model, images, batch_size)

    def evaluate(self, model: SSDDetector, images: Tensor | None = None, targets: list[dict] | None = None,
                 use_07_metric: bool = True) -> VOCResult:
        """VOC mAP@0.5 of ``model`` on ``images`` (default: the evaluation subset, clean, streamed)."""
        if images is None:
            images, targets = self.eval_set, self.eval_set.targets
        if targets is None:
            raise ValueError("targets are required when images are given")
        return mean_ap(model, images, targets, self.num_classes, use_07_metric, self.classes)

    def describe(self) -> str:
        """One paragraph on what this run uses (printed by :func:`setup`)."""
        p = self.profile
        lines = [f"profile {p.name}: {len(self.train_set)} train ({p.train_split}) / {len(self.test_set)} test "
                 f"({p.test_split}) images, {self.num_classes} classes, {p.image_size} px, backbone {p.backbone}, "
                 f"device {self.device}; data {display_path(self.params.data_root)}"]
        note = self.train_set.resize_note()
        if note:
            lines.append(f"note: {note}; pass image_size=... for a larger input")
        if self.params.user_data:
            lines.append(f"your data: results go to results/{self.output}/ and figures/{self.output}/; "
                         "the papers' columns are not comparable with these numbers")
        return "\n".join(lines)


def run_folder(params: RunParams) -> str:
    """:attr:`Experiment.output` of a run's parameters (``""`` for the reproduction)."""
    name = params.profile.name
    if not params.user_data:
        return "" if name == "default" else name
    root = params.data_root.expanduser().resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    folder = f"{root.name or 'data'}-{digest}"
    return folder if name == "default" else f"{folder}/{name}"


def setup(**params) -> Experiment:
    """A notebook's shared first step: build the :class:`Experiment` from the parameters cell,
    check the data (every image of both splits) and print what the run uses."""
    exp = Experiment(**params)
    exp.check_data()
    print(exp.describe())
    return exp


__all__ = ["Experiment", "TrainedModel", "run_folder", "setup"]
