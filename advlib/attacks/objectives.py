"""Attack objectives: per-image losses to maximise, built from the one loss decomposition.

Every objective has ``prepare(model, images, targets) -> state`` (run once per attack: anchor
matching happens here, never per step) and ``loss(model, x, state) -> [B]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from advlib.losses import Matched, Terms, cls_loss, loc_loss, match_anchors, multibox_terms, ssd_loss


@dataclass
class TaskState:
    matched: Matched


class TaskObjective:
    """A reducer of the multibox terms against the ground truth (MTD's task losses).

    ``cls`` = A_cls (classification loss, positives + hard negatives), ``loc`` = A_loc
    (smooth-L1 on positives), ``multibox`` = their sum (MTD's CON / the SSD loss).
    """

    REDUCERS = {"cls": cls_loss, "loc": loc_loss, "multibox": ssd_loss}

    def __init__(self, name: str, reducer=None) -> None:
        if reducer is None and name not in self.REDUCERS:
            raise ValueError(f"unknown task objective {name!r}; expected one of {sorted(self.REDUCERS)}")
        self.name = name
        self.reducer = reducer if reducer is not None else self.REDUCERS[name]

    def prepare(self, model, images: Tensor, targets: list[dict]) -> TaskState:
        if targets is None or len(targets) != images.shape[0]:
            raise ValueError(f"objective {self.name!r} needs one target per image")
        return TaskState(match_anchors(model.anchors, targets, model.box_coder))

    def terms(self, model, x: Tensor, state: TaskState) -> Terms:
        return multibox_terms(model(x), state.matched)

    def loss(self, model, x: Tensor, state: TaskState) -> Tensor:
        return self.reducer(self.terms(model, x, state))
