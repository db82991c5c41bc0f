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

import torch
from torch import Tensor

from advlib.attacks.mda import pick_larger_loss, two_domain_step
from advlib.losses import match_anchors, multibox_terms, ssd_loss
from advlib.models.aid import triplet_loss
from advlib.models.cfr import OFFICIAL_RECON_WEIGHTS, cfr_losses
from advlib.models.robustdet import RobustDetector
from advlib.models.ssd import DenseOutput
from advlib.recipes import RECIPES
from advlib.results import Reported
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
            st["matched"] = match_anchors(model.anchors, st["targets"], model.box_coder)
        x_cls, x_loc = two_domain_step(model, st["adv"], st["origin"], st["matched"], self.eps, self.eps)
        st["adv"] = pick_larger_loss(model, st["matched"], x_cls, x_loc)
        st["t"] += 1

    def __call__(self, model: RobustDetector, images: Tensor, targets: list[dict]) -> Tensor:
        if not isinstance(model, RobustDetector):
            raise ValueError(f"recipe {self.name!r} trains a RobustDetector (prepare_model), got {type(model).__name__}")
        b = images.shape[0]
        self._advance_attack(model, images, targets)
        st = self.state
        matched = match_anchors(model.anchors, targets, model.box_coder)
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


# ------------------------------------------------------------------ reported numbers (percent)
COLUMNS = ("clean", "A_cls", "A_loc", "CWA", "DAG")


def _rows(rows: dict) -> dict:
    return {r: {c: v for c, v in zip(COLUMNS, vals, strict=True) if v is not None} for r, vals in rows.items()}


TABLE1 = Reported("RobustDet Table 1", "VOC07 test, SSD300 VGG16 (no BN), ε = 8, PGD-20 step ε", "VOC07", _rows({
    "SSD": (77.5, 1.8, 4.5, 1.2, 4.9),
    "SSD-AT(A_cls)": (46.7, 21.8, 32.2, None, 28.0),
    "SSD-AT(A_loc)": (51.9, 23.7, 26.5, None, 17.2),
    "MTD": (48.0, 29.1, 31.9, 18.2, 28.5),
    "CWAT(PGD-10)": (51.3, 22.4, 36.7, 19.9, 50.3),
    "RobustDet": (75.4, 41.5, 45.2, 42.4, 52.0),
    "RobustDet*": (74.8, 45.9, 49.1, 48.0, 56.6)}), scale=100)
TABLE2 = Reported("RobustDet Table 2", "COCO 2017, SSD300 VGG16 (no BN), ε = 8", "COCO17", _rows({
    "SSD": (42.0, 0.4, 1.8, 0.1, 8.1),
    "MTD": (24.2, 13.0, 13.4, 7.7, None),
    "CWAT(PGD-10)": (23.7, 14.2, 15.5, 9.2, None),
    "RobustDet": (36.7, 20.6, 19.4, 20.5, 24.5),
    "RobustDet*": (36.0, 20.0, 19.0, 19.9, 16.5)}), scale=100)
TABLE3 = Reported("RobustDet Table 3", "VOC07 test, ablations", "VOC07", _rows({
    "RobustDet w/o L_aid": (74.9, 37.3, 44.9, 37.9, 51.8),
    "RobustDet* w/o L_re": (74.6, 27.5, 41.8, 28.6, 55.9),
    "RobustDet": (75.4, 41.5, 45.2, 42.4, 52.0),
    "RobustDet*": (74.8, 45.9, 49.1, 48.0, 56.6)}), scale=100)

__all__ = ["COLUMNS", "EPS", "RobustDetRecipe", "SOURCE", "TABLE1", "TABLE2", "TABLE3", "robustdet_cfr_recipe",
           "robustdet_recipe"]
