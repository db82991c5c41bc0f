"""What a notebook works with: validated parameters, datasets, the model zoo, evaluation.

A notebook's parameters cell sets ``profile``, ``data_root``, ``data_format``, ``classes``,
``device``, ``seed``; ``Experiment(**those)`` validates them, generates the default dataset when
it is missing, and hands out trained models (from the cache when possible), evaluation tensors
and mAP. Nothing here is specific to one paper.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import cached_property

import torch
from torch import Tensor

from advlib.data import build_dataset, collate
from advlib.data.synthetic import SyntheticConfig, generate_voc
from advlib.evaluate import VOCResult
from advlib.models import SSDDetector, build_ssd
from advlib.profiles import RunParams, default_data_root, validate_params
from advlib.robustness import detect_all, mean_ap
from advlib.recipes import make_recipe
from advlib.train import Recipe, TrainConfig, train
from advlib.cache import ModelCache

log = logging.getLogger(__name__)

#: The generated dataset always uses this seed: the training seed varies, the data do not.
DATA_SEED = 0
#: Keep decoded images in memory when a split is smaller than this many bytes.
CACHE_BYTES = 3 * 2**30


class Experiment:
    """Datasets, models and evaluation for one set of notebook parameters.

    Args:
        profile, data_root, data_format, classes, device, seed: the notebook parameters
            (validated by :func:`advlib.profiles.validate_params`).
        zoo_root: model cache directory (default ``data/cache``).
        progress: tqdm bars for training.
        **overrides: profile fields to override (e.g. ``epochs=2``).
    """

    def __init__(self, profile: str = "default", data_root=None, data_format: str = "voc", classes=None,
                 device: str = "auto", seed: int = 0, zoo_root=None, progress: bool = True, **overrides) -> None:
        self.params: RunParams = validate_params(profile, data_root, data_format, classes, device, seed, **overrides)
        self.profile = self.params.profile
        self.device = self.params.device
        self.seed = self.params.seed
        self.zoo = ModelCache(zoo_root)
        self.progress = progress
        self.timings: dict[str, float] = {}
        if self.profile.data_format == "synthetic":
            self._generate()

    # ------------------------------------------------------------------ data
    @property
    def synthetic(self) -> bool:
        return self.profile.data_format == "synthetic"

    def synthetic_config(self) -> SyntheticConfig:
        p = self.profile
        return SyntheticConfig(n_trainval=p.n_trainval, n_test=p.n_test, image_size=p.image_size)

    def _generate(self) -> None:
        root = self.params.data_root
        if root == default_data_root(self.profile):
            t0 = time.perf_counter()
            generate_voc(root, seed=DATA_SEED, config=self.synthetic_config(), progress=self.progress)
            self.timings["generate_data"] = time.perf_counter() - t0

    def _dataset(self, split: str, classes=None):
        fmt = "voc" if self.synthetic else self.params.data_format
        size = self.profile.image_size
        ds = build_dataset(self.params.data_root, fmt, split, classes=classes, size=size)
        ds.cache_images = len(ds) * 3 * size * size < CACHE_BYTES
        return ds

    @cached_property
    def train_set(self):
        return self._dataset(self.profile.train_split, self.params.classes)

    @cached_property
    def test_set(self):
        return self._dataset(self.profile.test_split, self.classes)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.train_set.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

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
        """``(images [N, 3, H, W], targets)`` of the evaluation subset, loaded once."""
        images, targets = collate([self.test_set[i] for i in self.eval_indices()])
        return images, targets

    # ---------------------------------------------------------------- models
    def build(self, backbone: str | None = None, seed: int | None = None) -> SSDDetector:
        """A freshly initialised detector (seeded, so the same call builds the same weights)."""
        torch.manual_seed(self.seed if seed is None else seed)
        return build_ssd(backbone or self.profile.backbone, self.num_classes, self.profile.image_size,
                         pretrained_backbone=self.profile.pretrained_backbone).to(self.device)

    def model_spec(self, recipe: Recipe, cfg: TrainConfig, backbone: str, seed: int, parent: str | None) -> dict:
        return {"recipe": recipe.spec(), "train": cfg.to_dict(), "profile": self.profile.to_dict(),
                "backbone": backbone, "seed": seed, "parent": parent, "num_classes": self.num_classes,
                "dataset": self.train_set.identity()}

    def model(self, recipe: Recipe | str = "std", backbone: str | None = None, seed: int | None = None,
              parent: Recipe | str | None = None, cfg: TrainConfig | None = None,
              parent_cfg: TrainConfig | None = None) -> SSDDetector:
        """A trained detector from the zoo (trained and cached if missing).

        Args:
            recipe: a :class:`~advlib.train.Recipe` or a name (``std``, ``cls``, ``loc``, ``con``, ``mtd``).
            backbone: backbone name (default: the profile's).
            seed: training seed (default: the experiment's).
            parent: fine-tune from the model this recipe (or name) trains, same backbone and seed;
                ``None`` trains from scratch.
            cfg: schedule (default: the profile's STD schedule, or its fine-tuning schedule).
            parent_cfg: the parent's schedule (default: the profile's STD schedule).
        """
        recipe = make_recipe(recipe) if isinstance(recipe, str) else recipe
        backbone = backbone or self.profile.backbone
        seed = self.seed if seed is None else seed
        parent_model, parent_key = None, None
        if parent is not None:
            parent_model = self.model(parent, backbone, seed, cfg=parent_cfg)
            parent_key = self._last_key
        cfg = cfg or TrainConfig.from_profile(self.profile, seed=seed, finetune=parent is not None)
        spec = self.model_spec(recipe, cfg, backbone, seed, parent_key)

        def build() -> SSDDetector:
            m = self.build(backbone, seed)
            if parent_model is not None:
                m.load_state_dict(parent_model.state_dict())
            return m

        def fit(m: SSDDetector, ckpt_dir) -> dict:
            t0 = time.perf_counter()
            hist = train(m, self.train_set, recipe, cfg, self.device, ckpt_dir, self.progress,
                         desc=f"train {recipe.name} ({backbone}, seed {seed})")
            return {"history": hist, "train_seconds": time.perf_counter() - t0}

        model, meta = self.zoo.get(spec, build, fit)
        model.zoo_key = meta["key"]  # identifies it in transfer-set cache keys
        self._last_key = meta["key"]
        self.last_meta = meta
        return model.to(self.device).eval()

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
        """VOC mAP@0.5 of ``model`` on ``images`` (default: the evaluation subset, clean)."""
        if images is None:
            images, targets = self.eval_data
        if targets is None:
            raise ValueError("targets are required when images are given")
        return mean_ap(model, images, targets, self.num_classes, use_07_metric, self.classes)
