"""Notebook 06: every model of notebooks 00-04 against every attack, one attack spec per column, one
dataset, seed variance; the trade-off between clean and adversarial mAP; what each recipe costs to
train; and every notebook's claims in one scorecard.

The models come from :mod:`advlib.papers.catalogue` (the model cache only: nothing is trained
here, a model its notebook has not trained is a *missing* row). The cells go through
:func:`~advlib.robustness.robustness_table` with the same specs and images as notebooks 01-03's
tables, so the result cache shares every cell they computed.

Columns: white-box attacks on each row's own model (FGSM and PGD on the classification loss, PGD
on the localisation loss, MTD's MDA, CWAT's CWA, DAG, RAP), RAD crafted once on the surrogate
(notebook 05's SSD-VGG, the STD model of the experiment's seed: its own row is white-box; the set
is notebook 05's, :func:`rad_set`) and, for a
model with a pre-processing defence, the adaptive attack. MagNet's other cells are crafted on the
detector it protects (the paper's grey-box setting, :data:`ADAPTIVE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from advlib.attacks.presets import PRESETS, fgsm, preset
from advlib.papers import catalogue, rad
from advlib.profiles import get_budget
from advlib.results import mean_over
from advlib.robustness import Transfer, robustness_table

#: the transfer source of the RAD column (notebook 05's SSD surrogate: the STD model of the run's seed)
SURROGATE = "surrogate (STD)"
#: models behind a pre-processing defence: their white-box columns are crafted on the protected
#: detector (``.detector``); the ``adaptive`` column attacks through the whole model
ADAPTIVE = {"MagNet": "the column's PGD A_cls through the reformer (the rejection detector is not differentiated)"}
#: columns that are not attacks on the row's own detector
NOT_IN_MEAN = ("clean", "adaptive")


@dataclass(frozen=True)
class MatrixBudget:
    """Notebook 06's budget beyond the shared :class:`advlib.profiles.Budget` (whose
    ``table_images``, ``seeds``, ``dag_steps`` and ``rap_steps`` it uses, as notebooks 01-03 do).

    Attributes:
        cost_images, cost_epochs: the instrumented training-cost run (every recipe fine-tunes a
            copy of STD on this many training images for this many epochs, fast recipes
            ``cost_epochs / replays``), one recipe after the other in one process.
        images: evaluation images of the matrix (``None``: the shared budget's ``table_images``,
            which shares every cell with notebooks 01-03 through the result cache; the smoke
            profile takes fewer to stay within its minute).
    """

    cost_images: int
    cost_epochs: int
    images: int | None = None


BUDGETS = {"smoke": MatrixBudget(cost_images=8, cost_epochs=1, images=8),
           "default": MatrixBudget(cost_images=16, cost_epochs=4),
           "voc": MatrixBudget(cost_images=1024, cost_epochs=4),
           "coco": MatrixBudget(cost_images=1024, cost_epochs=4)}


def budget(profile_name: str) -> MatrixBudget:
    """The matrix budget of a profile (the default profile's for a profile it does not name)."""
    return BUDGETS.get(profile_name, BUDGETS["default"])


def attacks(exp) -> dict:
    """The matrix's columns: name -> ``None`` (clean), an AttackSpec (white-box on the row) or a
    :class:`~advlib.robustness.Transfer` (RAD from :data:`SURROGATE`). Specs equal notebooks
    01/02's (ε = 8/255, the profile's PGD steps, the budget's DAG and RAP steps, the run's seed),
    RAD notebook 05's Table 3 row (RAD with SI at 16/255)."""
    b, k, s = get_budget(exp.profile), exp.profile.attack_steps, exp.seed
    return {"clean": None, "FGSM A_cls": fgsm("cls", seed=s), f"PGD-{k} A_cls": preset("A_cls", steps=k, seed=s),
            f"PGD-{k} A_loc": preset("A_loc", steps=k, seed=s), "MDA": preset("MDA", steps=k, seed=s),
            "CWA": preset("CWA", steps=k, seed=s), "DAG": preset("DAG", steps=b.dag_steps, seed=s),
            "RAP": preset("RAP", steps=b.rap_steps, seed=s),
            "RAD": Transfer(SURROGATE, rad.budgeted(PRESETS["RAD-SI"], rad.budget(exp.profile.name)))}


def models(exp, seeds) -> tuple[dict, dict]:
    """``({seed: {name: TrainedModel}}, {name: why missing})`` for every catalogue entry: a row is
    missing when the experiment's seed lacks it (other seeds only add to its spread)."""
    entries = catalogue.entries(exp.profile.name)
    found = {s: catalogue.cached_models(exp, seed=s)[0] for s in dict.fromkeys([exp.seed, *seeds])}
    missing = {e.name: e.note or f"not in the model cache: run notebook {e.notebook} first"
               for e in entries if e.name not in found[exp.seed]}
    return {s: {n: tm for n, tm in f.items() if n not in missing} for s, f in found.items()}, missing


def _kind(row: str, col: str, atk, seed: int, exp_seed: int) -> str:
    if atk is None:
        return "clean"
    if col == "adaptive":
        return "adaptive"
    if isinstance(atk, Transfer) and atk.source != SURROGATE:
        return "crafted on the protected detector"
    if isinstance(atk, Transfer):
        return "white-box (surrogate)" if row == "STD" and seed == exp_seed else "transfer from the surrogate"
    return "white-box"


def rad_set(exp, surrogate, spec, n: int, progress: bool = False):
    """The RAD column's adversarial images: ``spec`` crafted once on ``surrogate`` from the first
    ``max(n, rad.budget(...).images)`` evaluation images, i.e. notebook 05's Table 3 set (same
    surrogate, spec and clean images, so the adversarial-set cache gives it to both notebooks), of
    which the matrix evaluates the first ``n`` (its own images)."""
    from advlib.robustness import transfer_set

    images, targets = exp.eval_data
    m = max(n, rad.budget(exp.profile.name).images)
    adv, _ = transfer_set(surrogate, spec, images[:m], targets[:m], exp.classes, data_id=exp.data_id,
                          source_name=SURROGATE, progress=progress)
    return adv[:n]


def compute(exp, per_seed: dict, images, targets, progress: bool = False) -> list[dict]:
    """Every cell of every seed's models on ``images``/``targets`` (the first evaluation images):
    rows ``seed, model, attack, map, kind, seconds, result_cached, spec`` (the spec's label;
    ``kind`` says white-box, transfer or adaptive; ``seconds`` the cell's time, ``result_cached``
    whether the result cache gave it). RAD needs the surrogate (STD of the experiment's seed):
    every row is evaluated on its set (:func:`rad_set`); without the surrogate the column is left out."""
    from advlib.imageset import set_length

    cols = attacks(exp)
    rad_cols = {c: a for c, a in cols.items() if isinstance(a, Transfer)}
    cols = {c: a for c, a in cols.items() if c not in rad_cols}
    surrogate = per_seed.get(exp.seed, {}).get("STD")
    rad_x = (None if surrogate is None else
             {c: rad_set(exp, surrogate.model, a.spec, set_length(images), progress) for c, a in rad_cols.items()})
    pgd_cls = f"PGD-{exp.profile.attack_steps} A_cls"
    rows = []
    for seed, found in per_seed.items():
        plain = {n: tm.model for n, tm in found.items() if n not in ADAPTIVE}
        tables = []  # (its columns, the table)
        if plain:
            tables.append((cols, robustness_table(plain, cols, images, targets, exp.classes, data_id=exp.data_id,
                                                  progress=progress)))
        for name in (n for n in found if n in ADAPTIVE):
            model = found[name].model
            mcols = {c: (a if a is None else Transfer("protected detector", a)) for c, a in cols.items()}
            mcols["adaptive"] = cols[pgd_cls]
            tables.append((mcols, robustness_table(
                {name: model}, mcols, images, targets, exp.classes, sources={"protected detector": model.detector},
                data_id=exp.data_id, progress=progress)))
        for c, adv in (rad_x or {}).items():  # every row (MagNet whole) on the surrogate's set
            tables.append(({c: rad_cols[c]}, robustness_table({n: tm.model for n, tm in found.items()}, {c: None},
                                                              adv, targets, exp.classes, progress=progress)))
        for used, tab in tables:
            for c in tab.cells:
                atk = used[c.attack]
                rows.append({"seed": seed, "model": c.model, "attack": c.attack, "map": c.map,
                             "kind": _kind(c.model, c.attack, atk, seed, exp.seed), "seconds": round(c.seconds, 2),
                             "result_cached": c.result_cached,
                             "spec": "clean" if atk is None else (atk.spec if isinstance(atk, Transfer) else atk).label()})
    return rows


def summary(rows: list[dict], order: list[str], columns: list[str]) -> dict[str, pd.DataFrame]:
    """``mean``, ``std`` (sample, over seeds; NaN with one seed) and ``n`` (seeds) as models ×
    attacks frames in the given order (models without cells are all-NaN rows), and ``text``: each
    cell ``mean ± std`` (``missing`` for a missing row, ``n/a`` where the column does not apply).
    The surrogate's own RAD cell (white-box) is left out of its row's transfer column: it is
    reported on its own (:func:`white_box_surrogate`)."""
    rows = [r for r in rows if r.get("kind") != "white-box (surrogate)"]
    df = pd.DataFrame(rows, columns=["seed", "model", "attack", "map"])
    g = df.groupby(["model", "attack"])["map"]
    stats = {"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}
    out = {k: (v.unstack() if len(df) else pd.DataFrame()).reindex(index=order, columns=columns)
           for k, v in stats.items()}
    present = set(df["model"])
    text = pd.DataFrame("", index=order, columns=columns)
    for m in order:
        for c in columns:
            mu, sd = out["mean"].loc[m, c], out["std"].loc[m, c]
            text.loc[m, c] = ("missing" if m not in present else "n/a" if pd.isna(mu)
                              else f"{mu:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}"))
    out["text"] = text
    return out


def white_box_surrogate(rows: list[dict]) -> dict | None:
    """The surrogate's own RAD cell (white-box on STD of the run's seed), or ``None``."""
    return next((r for r in rows if r.get("kind") == "white-box (surrogate)"), None)


def surrogate_kinship(rows: list[dict], exp_seed: int, column: str = "RAD") -> pd.DataFrame:
    """Every row of the run's seed is STD of that seed or fine-tuned from it, i.e. from the RAD
    surrogate itself: for the models with other seeds too (fine-tuned from other STD models), the
    transfer column on the run's seed against its mean on the other seeds (``seed <s>``,
    ``other seeds``, ``difference``)."""
    df = pd.DataFrame([r for r in rows if r["attack"] == column and r.get("kind") != "white-box (surrogate)"],
                      columns=["seed", "model", "map"])
    out = {}
    for m, g in df.groupby("model", sort=False):
        own, other = g[g["seed"] == exp_seed]["map"], g[g["seed"] != exp_seed]["map"]
        if len(own) and len(other):
            out[m] = {f"seed {exp_seed}": float(own.iloc[0]), "other seeds": float(other.mean()),
                      "difference": float(own.iloc[0] - other.mean())}
    return pd.DataFrame.from_dict(out, orient="index", columns=[f"seed {exp_seed}", "other seeds", "difference"])


def mean_adversarial(mean: pd.DataFrame) -> pd.Series:
    """Per row, the mean mAP over the attack columns (not clean, not adaptive); NaN when a row
    lacks one of them (its mean would not be comparable)."""
    return mean_over(mean, [c for c in mean.columns if c not in NOT_IN_MEAN])


def pareto_front(clean: pd.Series, adversarial: pd.Series, exclude=()) -> pd.Series:
    """True for the rows no other row beats in both clean and mean adversarial mAP (at least as
    good in both and better in one); NaN rows and ``exclude`` (e.g. the grey-box :data:`ADAPTIVE`
    rows, whose numbers are not white-box) are never on the front and beat no one."""
    ok = clean.notna() & adversarial.notna() & ~clean.index.isin(list(exclude))
    c, a = clean[ok].astype(float), adversarial[ok].astype(float)
    front = pd.Series(False, index=clean.index)
    for m in c.index:
        dominated = ((c >= c[m]) & (a >= a[m]) & ((c > c[m]) | (a > a[m]))).any()
        front[m] = not dominated
    return front


def training_cost(exp, mb: MatrixBudget, seed: int | None = None) -> pd.DataFrame:
    """Every catalogue recipe timed in one instrumented run (a short fine-tune of a copy of the
    cached STD model on the first ``mb.cost_images`` images of the data that recipe trains on, with
    its own schedule's optimiser and batch size, ``mb.cost_epochs`` epochs; fast recipes
    ``cost_epochs / replays``), kept in the result cache (a warm re-run shows the run that measured
    them, with its date). Rows: recipe name × ``epochs``, ``iterations``, ``seconds``,
    ``seconds_per_epoch``, ``seconds_per_iter``, ``forward_per_iter``, ``backward_per_iter``;
    ``attrs["skipped"]``: rows with no setup here and why."""
    import datetime

    from torch.utils.data import Subset

    from advlib.cache import ResultCache
    from advlib.papers.cwat import training_cost as timed

    seed = exp.seed if seed is None else seed
    std = exp.trained("std", seed=seed, cached_only=True)
    if std is None:
        raise ValueError("the training-cost run needs the cached STD model: run notebook 00 or 01 first")
    setups, skipped = {}, {}
    for e in catalogue.entries(exp.profile.name):
        s = e.training_setup(exp, seed)
        if s is None:
            skipped[e.name] = ("not a fine-tune of the detector (its reformer trains apart)" if e.setup is None
                               else f"its stage 1 is not cached: run notebook {e.notebook} first")
        else:
            setups[e.name] = s

    def compute() -> dict:
        rows = []
        for name, (recipe, cfg, data) in setups.items():
            sub = Subset(data, range(min(mb.cost_images, len(data))))
            rows.append(timed(std.model, sub, {name: recipe}, cfg, mb.cost_epochs, device=exp.device))
        return {"table": pd.concat(rows), "measured": datetime.date.today().isoformat()}

    value = ResultCache.resolve(None).cached(
        compute, kind="matrix-training-cost", model=std.key, images=mb.cost_images, epochs=mb.cost_epochs,
        recipes={n: [r.spec(), cfg.to_dict(), len(d)] for n, (r, cfg, d) in setups.items()}, device=str(exp.device))
    table = pd.DataFrame.from_dict(value["table"], orient="index")
    table["seconds_per_iter"] = table["seconds"] / table["iterations"]
    table.attrs.update(measured=value["measured"], images=mb.cost_images, skipped=skipped)
    return table


def paper_matrix(order: list[str], columns: list[str], profile_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The papers' numbers in the matrix's shape (VOC07; NaN where no paper reports the cell):
    MTD Table 2 (STD and the one-step rows), CWAT Table 1 (its rows), RobustDet Table 1 (its two
    rows; PGD-20 there). Returns ``(values, source)``: each cell's number and which table gave it
    (the first listed that has it)."""
    from advlib.papers import cwat, mtd, robustdet

    def col(c: str) -> str:  # "PGD-10 A_cls" -> "PGD A_cls" (the profile's steps)
        return re.sub(r"^PGD-\d+ ", "PGD ", c)
    ours_to_cwat = {ours: paper for ours, paper in cwat.paper_names(cwat.budget(profile_name)).items()}
    sources = [
        (mtd.TABLE2, {"STD": "STD", "CLS-1step": "CLS", "LOC-1step": "LOC", "CON-1step": "CON", "MTD-1step": "MTD"},
         {"clean": "clean", "PGD A_cls": "A_cls", "PGD A_loc": "A_loc", "DAG": "DAG", "RAP": "RAP"}),
        (cwat.TABLE1, {**ours_to_cwat, "STD": "STD", "CLS-1step": "CLS", "LOC-1step": "REG", "MTD-fast": "MTD-fast"},
         {"clean": "clean", "FGSM A_cls": "FGSM A_cls", "PGD A_cls": "PGD-10 A_cls", "PGD A_loc": "PGD-10 A_reg",
          "CWA": "CWA", "DAG": "DAG"}),
        (robustdet.TABLE1, {"STD": "SSD", "RobustDet": "RobustDet", "RobustDet*": "RobustDet*"},
         {"clean": "clean", "PGD A_cls": "A_cls", "PGD A_loc": "A_loc", "CWA": "CWA", "DAG": "DAG"}),
    ]
    values = pd.DataFrame(np.nan, index=order, columns=columns)
    source = pd.DataFrame("", index=order, columns=columns)
    for rep, rows, cols in sources:
        frame = rep.frame()
        for m in order:
            r = rows.get(m)
            if r is None or r not in frame.index:
                continue
            for c in columns:
                pc = cols.get(col(c))
                if pc is not None and pc in frame.columns and pd.isna(values.loc[m, c]) and pd.notna(frame.loc[r, pc]):
                    values.loc[m, c], source.loc[m, c] = float(frame.loc[r, pc]), rep.source
    return values, source
