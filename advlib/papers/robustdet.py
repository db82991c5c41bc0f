"""RobustDet: Dong, Wei, Hu, Zhang & Li, "Adversarially-Aware Robust Object Detector", ECCV 2022.

Its training recipe (as the official code ``train_robust.py`` runs it, which the paper leaves
out), its reported tables as data, and (later) its analyses and claims. The model parts are in the
core: :class:`advlib.models.robustdet.RobustDetector` composes adversarially-aware convolutions
(:mod:`advlib.models.aaconv`), the discriminator (:mod:`advlib.models.aid`) and CFR
(:mod:`advlib.models.cfr`) onto a trained SSD.

**Training, as the official code.** Each update sees a fresh clean half-batch and an adversarial
half-batch. The adversarial half is an iterate of an MTD-style PGD-20 (ε = 8/255, step ε, no
random start; each iteration one signed step in each task domain from the current iterate, then
per image the one with the larger multibox loss: :func:`advlib.attacks.mda.two_domain_step`),
and the model trains on each of the 20 iterates in turn, so an update costs about one attack step;
after 20 updates the next minibatch's images become the new adversarial originals (the official
code draws them from a second loader; here they are the clean half of that update). The attack
runs in eval mode through the discriminator and the kernel mixing (as the official attacker).
A third group, the clean half-batch passed again with the adversarial half's (detached) mixing
weights, is trained too (official ``adc``). Loss (eq. 5):
``β·(L_det + a·L_aid) + b·L_re + c·L_kld`` with β = 0.75, a = 3 and the official code's effective
reconstruction weights: it adds ``(0.16·MSE + 5·KLD)/255`` with pixels in 0-255, which in our
``[0, 1]`` units is b ≈ 40.8 on the MSE and c = 5/255 ≈ 0.0196 on the KLD
(:data:`advlib.models.cfr.OFFICIAL_RECON_WEIGHTS`). L_det is our multibox loss averaged over
the 3 groups' images; L_aid the triplet loss on the clean and adversarial halves' mixing weights
(:func:`advlib.models.aid.triplet_loss`: mined by the official Jensen-Shannon distance, the loss
on squared L2 distances, averaged).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from advlib.attacks.mda import pick_larger_loss, two_domain_step
from advlib.attacks.objectives import OBJECTIVES, Objective, ground_truth_matching
from advlib.losses import REDUCERS, Matched, match_targets, multibox_terms, ssd_loss
from advlib.registry import check_params
from advlib.utils import eval_mode
from advlib.models.aid import triplet_loss
from advlib.models.cfr import OFFICIAL_RECON_WEIGHTS, cfr_losses
from advlib.models.robustdet import RobustDetector
from advlib.models.ssd import DenseOutput
from advlib.recipes import RECIPES
from advlib.papers.robustdet_claims import COLUMNS, TABLE1, TABLE2, TABLE3  # re-exported
from advlib.utils import targets_to

SOURCE = "RobustDet (Dong et al., ECCV 2022)"
EPS = 8 / 255


class RobustDetRecipe:
    """RobustDet's training (see the module docstring): ``prepare_model`` turns the parent SSD
    into a :class:`RobustDetector`; each call is one update on a clean half-batch (the loop's
    minibatch) and the current adversarial iterate.

    Args:
        name: recipe name (part of the model-cache key).
        K: kernels per convolution.
        cfr: RobustDet* (consistent features with reconstruction).
        aid_loss: train the discriminator with the triplet loss (``False``: the "w/o L_aid" ablation).
        recon_loss: with ``cfr``, the reconstruction loss L_re (``False``: "w/o L_re").
        steps, eps: the training attack (PGD-``steps``, step ε, as the official code).
        beta, a, b, c, margin: eq. 5's weights and the triplet margin γ.
        third_group: the official third group (clean images with the adversarial mixing).
        seed: seeds the triplet mining.
    """

    def __init__(self, name: str = "robustdet", K: int = 4, cfr: bool = False, aid_loss: bool = True,
                 recon_loss: bool = True, steps: int = 20, eps: float = EPS, beta: float = 0.75, a: float = 3.0,
                 b: float = OFFICIAL_RECON_WEIGHTS["b"], c: float = OFFICIAL_RECON_WEIGHTS["c"],
                 margin: float = 0.6, third_group: bool = True, seed: int = 0) -> None:
        if steps < 1 or eps < 0 or K < 1:
            raise ValueError(f"recipe {name!r}: steps and K must be >= 1 and eps >= 0, got {steps}, {K}, {eps}")
        self.name, self.K, self.cfr, self.aid_loss, self.recon_loss = name, int(K), bool(cfr), bool(aid_loss), bool(recon_loss)
        self.steps, self.eps, self.beta, self.a, self.b, self.c = int(steps), float(eps), float(beta), float(a), float(b), float(c)
        self.margin, self.third_group, self.seed = float(margin), bool(third_group), int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self.state: dict | None = None  # origin, adv, targets, t: the attack carried across updates

    def spec(self) -> dict:
        """Part of the model-cache key."""
        return {"recipe": self.name, "K": self.K, "cfr": self.cfr, "aid_loss": self.aid_loss,
                "recon_loss": self.recon_loss, "steps": self.steps, "eps": self.eps, "beta": self.beta,
                "a": self.a, "b": self.b, "c": self.c, "margin": self.margin, "third_group": self.third_group,
                "seed": self.seed}

    def prepare_model(self, ssd) -> RobustDetector:
        """The architecture this recipe trains, built from the parent SSD (its weights copied into
        every kernel)."""
        return RobustDetector(ssd, K=self.K, cfr=self.cfr)

    # ------------------------------------------------------------------ one update
    def _advance_attack(self, model: RobustDetector, images: Tensor, targets: list[dict]) -> None:
        """One iteration of the training attack; new originals every ``steps`` updates."""
        st = self.state
        if st is None or st["t"] >= self.steps or st["origin"].shape != images.shape:
            st = self.state = {"origin": images.detach().clone(), "adv": images.detach().clone(),
                               "targets": targets_to(images.device, targets), "t": 0}
        st["origin"], st["adv"] = st["origin"].to(images.device), st["adv"].to(images.device)
        if "matched" not in st:  # matched once per adversarial batch (also after a resume)
            st["targets"] = targets_to(images.device, st["targets"])
            st["matched"] = match_targets(model, st["targets"])
        x_cls, x_loc = two_domain_step(model, st["adv"], st["origin"], st["matched"], self.eps, self.eps)
        st["adv"] = pick_larger_loss(model, st["matched"], x_cls, x_loc)
        st["t"] += 1

    def __call__(self, model: RobustDetector, images: Tensor, targets: list[dict]) -> Tensor:
        if not isinstance(model, RobustDetector):
            raise ValueError(f"recipe {self.name!r} trains a RobustDetector (prepare_model), got {type(model).__name__}")
        b = images.shape[0]
        self._advance_attack(model, images, targets)
        st = self.state
        matched = match_targets(model, targets)
        model.train()
        out = model(torch.cat([images, st["adv"]]))  # clean half then adversarial half
        pi = model.last_mixing  # [2B, K]
        cfr1 = model.last_cfr
        recon1 = model.reconstruct() if self.cfr else None
        det = [ssd_loss(multibox_terms(DenseOutput(out.cls_logits[:b], out.box_deltas[:b]), matched)),
               ssd_loss(multibox_terms(DenseOutput(out.cls_logits[b:], out.box_deltas[b:]), st["matched"]))]
        if self.third_group:
            out3 = model(images, mixing=pi[b:].detach())  # clean images through the adversarial kernels
            det.append(ssd_loss(multibox_terms(out3, matched)))
        loss_det = torch.cat(det).mean()
        loss = loss_det
        if self.aid_loss:
            is_adv = torch.cat([torch.zeros(b), torch.ones(b)]).long()
            tri, _ = triplet_loss(pi, is_adv, self.margin, generator=self._gen)
            loss = loss + self.a * tri
        loss = self.beta * loss
        if self.cfr:
            recon, clean = [recon1], [images, st["origin"]]
            mus, logvars = [cfr1[1]], [cfr1[2]]
            if self.third_group:
                recon.append(model.reconstruct())
                clean.append(images)
                mus.append(model.last_cfr[1]), logvars.append(model.last_cfr[2])
            l_re, l_kld = cfr_losses(torch.cat(recon), torch.cat(clean), torch.cat(mus), torch.cat(logvars))
            loss = loss + (self.b * l_re if self.recon_loss else 0.0) + self.c * l_kld
        return loss

    def state_dict(self) -> dict:
        if self.state is None:
            return {"gen": self._gen.get_state()}
        st = {k: v for k, v in self.state.items() if k != "matched"}
        st["origin"], st["adv"] = st["origin"].cpu(), st["adv"].cpu()
        st["targets"] = targets_to("cpu", st["targets"])
        return {"attack": st, "gen": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.state = state.get("attack")
        if "gen" in state:
            self._gen.set_state(state["gen"])


@RECIPES.register("robustdet")
def robustdet_recipe(**params) -> RobustDetRecipe:
    """RobustDet (no CFR)."""
    return RobustDetRecipe("robustdet", **params)


@RECIPES.register("robustdet-cfr")
def robustdet_cfr_recipe(**params) -> RobustDetRecipe:
    """RobustDet* (with CFR)."""
    return RobustDetRecipe("robustdet-cfr", cfr=True, **params)


# ------------------------------------------------------------------ budgets and models
@dataclass(frozen=True)
class RobustDetBudget:
    """Notebook 03's budget beyond the shared :class:`advlib.profiles.Budget`.

    Attributes:
        train_images: RobustDet fine-tunes on this fixed subset of the training split (``None``:
            all of it; see :meth:`advlib.experiment.Experiment.train_subset`).
        epochs: fine-tuning epochs over it (the official code: 40,000 updates on VOC07+12).
        batch_size: the clean half-batch (the official code: 16 of its 32).
        steps: the training attack's PGD steps (the official code: 20).
        analysis_images: images per batch of the loss-change and entanglement analyses.
        loss_change_steps: SGD steps ``m`` of the loss-change analysis (Fig. 3).
        loss_change_lrs, loss_change_fall: its learning rate is the smallest of ``loss_change_lrs``
            at which ``m`` steps lower STD's own training-batch loss by ``loss_change_fall``
            (:func:`advlib.papers.robustdet_analysis.calibrate_loss_change`). This criterion was
            fixed after the first default run, whose setting (``first_loss_change``: 1 step of lr
            1e-3) moved losses by about 0.001 and could not separate the settings; that setting
            is still computed and shown beside.
        official_steps: steps of the official evaluation attack (PGD, step ε, no random start).
        long_epochs: a longer RobustDet fine-tune, shown when the model cache has it (trained
            outside the notebook's time budget; ``None``: not shown).
    """

    train_images: int | None
    epochs: int
    batch_size: int = 16
    steps: int = 20
    analysis_images: int = 16
    loss_change_steps: int = 5
    loss_change_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    loss_change_fall: float = 0.10
    first_loss_change: tuple[int, float] = (1, 1e-3)
    official_steps: int = 20
    long_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.steps < 1 or self.analysis_images < 2:
            raise ValueError(f"invalid RobustDet budget {self}")
        if self.loss_change_steps < 1 or not self.loss_change_lrs or min(self.loss_change_lrs) <= 0:
            raise ValueError(f"invalid loss-change setting in RobustDet budget {self}")
        if self.long_epochs is not None and self.long_epochs <= self.epochs:
            raise ValueError(f"long_epochs ({self.long_epochs}) must exceed epochs ({self.epochs})")


BUDGETS = {
    # CI plumbing: 4 updates of 8 clean images per variant
    "smoke": RobustDetBudget(train_images=32, epochs=1, batch_size=8, steps=2, analysis_images=4,
                             loss_change_steps=2, loss_change_lrs=(1e-2, 1e-1), official_steps=2),
    "default": RobustDetBudget(train_images=1024, epochs=2, long_epochs=8),
    "voc": RobustDetBudget(train_images=None, epochs=24),
}


def budget(profile_name: str) -> RobustDetBudget:
    """The RobustDet budget of a profile (the default profile's for a profile it does not name)."""
    return BUDGETS.get(profile_name, BUDGETS["default"])


#: row name -> recipe and its switches (Table 1's two configurations and Table 3's ablations)
VARIANTS = {"RobustDet": ("robustdet", {}), "RobustDet*": ("robustdet-cfr", {}),
            "RobustDet w/o L_aid": ("robustdet", {"aid_loss": False}),
            "RobustDet* w/o L_re": ("robustdet-cfr", {"recon_loss": False})}


def recipe_of(rb: RobustDetBudget, variant: str = "RobustDet"):
    """The recipe object of a RobustDet variant (:data:`VARIANTS`) under ``rb``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown RobustDet variant {variant!r}; expected one of {sorted(VARIANTS)}")
    name, switches = VARIANTS[variant]
    return RECIPES.build(name, steps=rb.steps, **switches)


def trained(exp, rb: RobustDetBudget, variant: str = "RobustDet", seed: int | None = None,
            epochs: int | None = None, cached_only: bool = False):
    """A RobustDet variant (:data:`VARIANTS`) from the model cache (trained if missing), built from
    and fine-tuned from the STD model of the same seed on ``rb.train_images`` training images for
    ``epochs`` (default ``rb.epochs``) epochs of ``rb.batch_size`` clean images (at most the
    split). With ``cached_only``, ``None`` when the cache lacks it (nothing is trained)."""
    recipe = recipe_of(rb, variant)
    cfg = dataclasses.replace(exp.finetune_config(rb.epochs if epochs is None else epochs, seed=seed),
                              batch_size=rb.batch_size)
    n = None if rb.train_images is None else min(rb.train_images, len(exp.train_set))
    return exp.trained(recipe, parent="std", seed=seed, cfg=cfg, train_images=n,
                       **({"cached_only": True} if cached_only else {}))


def long_name(rb: RobustDetBudget) -> str:
    """The row name of the longer RobustDet fine-tune (``rb.long_epochs``)."""
    return f"RobustDet ({rb.long_epochs} epochs)"


def trained_long(exp, rb: RobustDetBudget):
    """The longer RobustDet fine-tune (``rb.long_epochs`` epochs) when the model cache has it,
    else ``None`` (train it with ``trained(exp, rb, "RobustDet", epochs=rb.long_epochs)``)."""
    if rb.long_epochs is None:
        return None
    return trained(exp, rb, "RobustDet", epochs=rb.long_epochs, cached_only=True)


def reductions(exp, rb: RobustDetBudget, budget) -> str:
    """What this budget changes from the paper's training and evaluation, in one line."""
    n_train = len(exp.train_set)
    used = n_train if rb.train_images is None else min(rb.train_images, n_train)
    parts = [f"RobustDet fine-tuned {rb.epochs} epoch(s) of {rb.batch_size}-image clean half-batches on {used} of "
             f"{n_train} training images" + (" (a fixed subset)" if used < n_train else "") + " (official: 40,000 updates)",
             f"training attack PGD-{rb.steps}" + (" (official: 20)" if rb.steps != 20 else ""),
             f"DAG {budget.dag_steps} signed steps (paper: 150)",
             f"evaluated on {min(budget.table_images, len(exp.test_set))} of {len(exp.test_set)} test images"]
    return "Budget: " + "; ".join(parts)


def official_attack(task: str, steps: int = 20, eps: float = EPS):
    """The official evaluation's PGD: ``steps`` signed steps of size ε from the clean image (no
    random start) on the ``cls`` or ``loc`` loss."""
    from advlib.attacks import pgd

    return pgd(task, eps=eps, step_size=eps, steps=steps, random_start=False)


def premise_table(exp, models, names, images: Tensor, targets: list[dict], scratch=None):
    """The bottleneck premise: clean mAP of STD and of each adversarially trained model in
    ``names``, their drop against STD in points, beside the paper's drops (Table 1); with
    ``scratch`` (a :class:`advlib.papers.mtd.Protocol`) also its model when the cache has it.

    Returns:
        rows = models × ``clean``, ``drop (points)``, ``paper row``, ``paper drop (points)``.
    """
    import pandas as pd

    from advlib.robustness import robustness_table

    rows = {"STD": models["STD"], **{n: models[n] for n in names}}
    if scratch is not None:
        tm = scratch.train(exp, cached_only=True)
        if tm is not None:
            rows[scratch.label] = tm.model
    clean = robustness_table(rows, {"clean": None}, images, targets, exp.classes, data_id=exp.data_id,
                             progress=False).frame["clean"]
    paper = TABLE1.frame()["clean"]
    paper_row = {"STD": "SSD", "CLS-1step": "SSD-AT(A_cls)", "LOC-1step": "SSD-AT(A_loc)", "MTD-1step": "MTD",
                 "CWAT-1step": "CWAT(PGD-10)", "CWAT": "CWAT(PGD-10)"}
    if scratch is not None:
        paper_row[scratch.label] = "MTD"
    out = pd.DataFrame({"clean": clean, "drop (points)": (clean["STD"] - clean) * 100})
    out["paper row"] = [paper_row.get(r, "") for r in out.index]
    out["paper drop (points)"] = [(paper["SSD"] - paper[p]) * 100 if p else float("nan") for p in out["paper row"]]
    return out


# ------------------------------------------------------------ attacks beyond the paper
@dataclass
class MixingState:
    matched: Matched
    pi_clean: Tensor  # [B, K]: the discriminator's mixing weights on the clean images


class _MixingObjective(Objective):
    def __init__(self, reducer: str = "cls", **params) -> None:
        if reducer not in REDUCERS:
            raise ValueError(f"unknown reducer {reducer!r}; expected one of {sorted(REDUCERS)}")
        check_params(REDUCERS[reducer], params, f"attack objective {self.name!r}")
        self.reducer = functools.partial(REDUCERS[reducer], **params)

    def prepare(self, model, images, targets, spec=None, matched=None) -> MixingState:
        if not isinstance(model, RobustDetector):
            raise ValueError(f"objective {self.name!r} attacks a RobustDetector, got {type(model).__name__}")
        with eval_mode(model), torch.no_grad():
            pi = model.aid(images)
        return MixingState(ground_truth_matching(model, images, targets, matched, self.name), pi)


@OBJECTIVES.register("fixed-mixing")
class FixedMixingObjective(_MixingObjective):
    """The detector loss ``reducer`` with the kernels mixed as for the clean image (π held at
    D(x_clean), no gradient through the discriminator): attacks the clean kernels, and the
    examples are then evaluated through the full model (the discriminator sees them)."""

    name = "fixed-mixing"

    def loss(self, model, x: Tensor, state: MixingState) -> Tensor:
        return self.reducer(multibox_terms(model(x, mixing=state.pi_clean), state.matched))


@OBJECTIVES.register("aid-evasion")
class AIDEvasionObjective(_MixingObjective):
    """Attack the detector through the discriminator and the kernel mixing while pulling the
    discriminator's output toward the clean image's: ``reducer(x) − λ·‖D(x) − D(x_clean)‖²``
    (per image; λ = ``weight``), so the adversarial image is processed by the clean kernels."""

    name = "aid-evasion"

    def __init__(self, reducer: str = "cls", weight: float = 10.0, **params) -> None:
        super().__init__(reducer, **params)
        self.weight = float(weight)

    def loss(self, model, x: Tensor, state: MixingState) -> Tensor:
        terms = multibox_terms(model(x), state.matched)
        pull = (model.last_mixing - state.pi_clean).pow(2).sum(1)  # [B]
        return self.reducer(terms) - self.weight * pull


__all__ = ["AIDEvasionObjective", "BUDGETS", "COLUMNS", "EPS", "FixedMixingObjective", "RobustDetBudget",
           "RobustDetRecipe", "SOURCE", "TABLE1", "TABLE2", "TABLE3", "VARIANTS", "budget", "long_name",
           "official_attack", "premise_table", "reductions", "robustdet_cfr_recipe", "robustdet_recipe",
           "trained", "trained_long"]
