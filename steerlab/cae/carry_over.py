"""What predicts whether a steering vector carries over to free text, across finished generalisation cells.

The issue's goal asks for the OOD open-ended effect; where no method reaches it, the table should say why. Two
candidate predictors are read per cell (`generalise_report.CellReport`), both known before the OOD effect is:
- the *in-distribution effect*, two-sided: (effect at +r − effect at −r) / 2 on the MWE test items, the kind of
  number the protocol chooses a cell's layer on;
- the *unsteered read-out* (`CellReport.readout_r`): Pearson r between the projection of the unsteered OOD
  responses on the cell's vector and their judged trait score: whether the direction points along the trait in the
  model's own free text. No steered response enters it, so the steering effect it is compared with cannot raise it
  (the monitoring correlation, over steered responses too, can).
The outcome is the OOD open-ended effect, two-sided the same way (positive: right-signed). Each predictor's
Spearman ρ with it is given with a 95 % interval that resamples *behaviours*: a behaviour's cells (its methods and
seeds) share prompts, judge and unsteered responses, so cells are not independent draws. Beside them, per method,
what bounds an effect from outside: the perplexity price at each sign and the width of the open-ended intervals.

`room_table` asks whether the judge's scale leaves room to move: per behaviour, where the unsteered open answers
score between the judge's means on the labelled texts that do and do not show the trait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr

from .goal import MAX_PPL_RATIO
from .generalise_report import METHODS, CellReport, Interval

MIN_BEHAVIOURS = 5  # fewer and resampling behaviours gives no interval worth printing: no ρ is given


def two_sided(plus: float, minus: float) -> float:
    """(effect at +r − effect at −r) / 2: positive when the push goes the right way on average over both signs."""
    return (plus - minus) / 2


def ood_two_sided(cell: CellReport) -> float:
    return two_sided(cell.ood["open-ended +r"][0], cell.ood["open-ended -r"][0])


def in_dist_two_sided(cell: CellReport) -> float:
    return two_sided(cell.in_plus[0], cell.in_minus[0])


def judged(cells: Sequence[CellReport]) -> list[CellReport]:
    """The cells a carry-over statement can be made about: a judge that can tell, both signs' open-ended effects."""
    return [c for c in cells if c.judge_can_tell and "open-ended +r" in c.ood and "open-ended -r" in c.ood]


def spearman_by_behaviour(behaviours: Sequence[str], x: Sequence[float], y: Sequence[float], *,
                          n_boot: int = 2000, seed: int = 0) -> Interval | None:
    """Spearman ρ of x and y with a 95 % percentile interval from resampling behaviours (all of a behaviour's
    points together); None with fewer than `MIN_BEHAVIOURS` behaviours or a constant side."""
    b, x, y = np.asarray(behaviours), np.asarray(x, float), np.asarray(y, float)
    names = sorted(set(b.tolist()))
    if len(names) < MIN_BEHAVIOURS or x.std() == 0 or y.std() == 0:
        return None
    rho = float(spearmanr(x, y)[0])
    members = [np.flatnonzero(b == n) for n in names]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        if x[idx].std() > 0 and y[idx].std() > 0:
            boots.append(spearmanr(x[idx], y[idx])[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return rho, float(lo), float(hi)


@dataclass
class CarryOverRow:
    """One method's judged cells (or every method's, `method == "all"`).

    Attributes:
        cells, behaviours: how many cells and behaviours.
        in_dist, ood: mean two-sided in-distribution and OOD open-ended effects.
        right_plus, right_minus: cells whose open-ended interval is clear of 0 the right way at +r / at −r.
        reversed_plus, reversed_minus: cells whose interval is clear of 0 the wrong way.
        rho_in_dist: Spearman ρ (low, high) of the in-distribution and the OOD two-sided effects.
        readout: mean unsteered read-out r over the readout_cells that have one; readout_positive: how many are > 0.
        rho_readout: Spearman ρ (low, high) of the unsteered read-out and the OOD two-sided effect.
        ppl_plus, ppl_minus: mean perplexity ratio at +r / −r; over_cap_plus, over_cap_minus: cells over the cap.
        half_width: the median half-width of the open-ended 95 % intervals (both signs).
    """

    method: str
    cells: int
    behaviours: int
    in_dist: float
    ood: float
    right_plus: int
    right_minus: int
    reversed_plus: int
    reversed_minus: int
    rho_in_dist: Interval | None
    readout: float | None
    readout_cells: int
    readout_positive: int
    rho_readout: Interval | None
    ppl_plus: float
    ppl_minus: float
    over_cap_plus: int
    over_cap_minus: int
    half_width: float


def carry_over_row(method: str, cells: Sequence[CellReport]) -> CarryOverRow:
    """`cells` (judged ones, see `judged`) summarised as one `CarryOverRow`."""
    plus = [c.ood["open-ended +r"] for c in cells]
    minus = [c.ood["open-ended -r"] for c in cells]
    behaviours = [c.behaviour for c in cells]
    ood = [ood_two_sided(c) for c in cells]
    in_dist = [in_dist_two_sided(c) for c in cells]
    with_readout = [(c.behaviour, c.readout_r, o) for c, o in zip(cells, ood) if c.readout_r is not None]
    readouts = [r for _, r, _ in with_readout]
    return CarryOverRow(
        method, len(cells), len(set(behaviours)), float(np.mean(in_dist)),
        float(np.mean(ood)), sum(p[1] > 0 for p in plus), sum(m[2] < 0 for m in minus),
        sum(p[2] < 0 for p in plus), sum(m[1] > 0 for m in minus),
        spearman_by_behaviour(behaviours, in_dist, ood),
        float(np.mean(readouts)) if readouts else None, len(readouts), sum(r > 0 for r in readouts),
        spearman_by_behaviour(*zip(*with_readout)) if len(with_readout) >= 2 else None,
        float(np.mean([c.ppl_plus for c in cells])), float(np.mean([c.ppl_minus for c in cells])),
        sum(c.ppl_plus > MAX_PPL_RATIO for c in cells), sum(c.ppl_minus > MAX_PPL_RATIO for c in cells),
        float(np.median([(hi - lo) / 2 for _, lo, hi in plus + minus])))


def carry_over_rows(reports: Sequence[CellReport]) -> list[CarryOverRow]:
    """One row per method with judged cells (in the table's method order), then one for all of them together."""
    cells = judged(reports)
    methods = [m for m in METHODS if any(c.method == m for c in cells)]
    methods += sorted({c.method for c in cells} - set(methods))
    rows = [carry_over_row(m, [c for c in cells if c.method == m]) for m in methods]
    return rows + [carry_over_row("all", cells)] if cells else rows


def _rho(v: Interval | None) -> str:
    return "–" if v is None else f"{v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}]"


def carry_over_table(reports: Sequence[CellReport]) -> str:
    """The `carry_over_rows` as a markdown table."""
    head = ("| method | cells (behaviours) | in-dist effect | OOD open-ended effect | clear of 0 right / wrong, +r · −r | "
            "ρ(in-dist, OOD) | unsteered read-out r (> 0) | ρ(read-out, OOD) | ppl +r / −r (over ×1.5) | "
            "interval ± (median) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in carry_over_rows(reports):
        readout = "–" if r.readout is None else f"{r.readout:+.2f} ({r.readout_positive} of {r.readout_cells})"
        lines.append(f"| {r.method} | {r.cells} ({r.behaviours}) | {r.in_dist:+.3f} | {r.ood:+.3f} | "
                     f"{r.right_plus} / {r.reversed_plus} · {r.right_minus} / {r.reversed_minus} | {_rho(r.rho_in_dist)} | "
                     f"{readout} | {_rho(r.rho_readout)} | ×{r.ppl_plus:.2f} / {r.ppl_minus:.2f} "
                     f"({r.over_cap_plus} / {r.over_cap_minus}) | {r.half_width:.3f} |")
    return "\n".join(lines)


@dataclass
class Room:
    """Where a behaviour's unsteered open answers sit on the judge's scale.

    Attributes:
        behaviour: the behaviour; judge_auc: the judge's AUC on its labelled texts.
        not_matching, matching: the judge's mean score on labelled texts without / with the trait.
        unsteered: the mean judged score of the unsteered open-ended answers (mean over the run directories).
    """

    behaviour: str
    judge_auc: float
    not_matching: float
    unsteered: float
    matching: float


def rooms(reports: Sequence[CellReport]) -> list[Room]:
    """One `Room` per judged behaviour whose cells know both the labelled means and the unsteered score."""
    told = judged(reports)
    out = []
    for b in sorted({c.behaviour for c in told}):
        cells = [c for c in told if c.behaviour == b and c.labelled and c.unsteered_open is not None]
        if cells:
            matching, not_matching = (float(np.mean(v)) for v in zip(*{c.labelled for c in cells}))
            out.append(Room(b, float(np.mean([c.judge_auc for c in cells])), not_matching,
                            float(np.mean(sorted({c.unsteered_open for c in cells}))), matching))
    return out


def room_table(reports: Sequence[CellReport]) -> str:
    """The `rooms` as a markdown table, with the room below and above the unsteered score."""
    head = ("| behaviour | judge AUC | labelled without the trait | unsteered open answers | labelled with it | "
            "room down / up |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rooms(reports):
        lines.append(f"| {r.behaviour} | {r.judge_auc:.2f} | {r.not_matching:.2f} | {r.unsteered:.2f} | "
                     f"{r.matching:.2f} | {r.unsteered - r.not_matching:+.2f} / {r.matching - r.unsteered:+.2f} |")
    return "\n".join(lines)
