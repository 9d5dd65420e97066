"""Choosing a cell's layer and strength on judged open answers to validation questions (`select_on="open-ended"`).

The default rule (`generalise.choose_setting`) reads the validation items' A/B letters. A vector can move free text
without moving letters (persona vectors barely move them for several behaviours), and then that rule falls to the
smallest strength and loses the effect the OOD test measures. This rule asks the OOD test's kind of question on data
the test does not use: the validation items' stems as open questions (`methods.persona.persona_questions`, no answer
choices), answered greedily at +r and -r and judged for the behaviour.

Per candidate layer, the strongest r whose perplexity ratio on the validation slice of the corpus stays within
MAX_PPL_RATIO at both signs (found by bisection over the sorted candidates: the cost grows with the push); then,
among those (layer, r), the largest mean judged score at +r minus the mean at -r. A layer with no r within the cap
is not a candidate; with none anywhere, the (layer, r) with the lowest ratio is taken, as in the default rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import SteerlabError
from ..generation import TextGenerator, generate
from ..vector import SteeringVector
from .goal import MAX_PPL_RATIO
from .judge import Judge, JudgeRequest
from .side_effects import CorpusWindows, measure_side_effects
from .stats import bootstrap_ci
from .sites import Site, as_site, site_layers, site_steering
from .strengths import residual_norms, steering_terms

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass(frozen=True)
class OpenCandidate:
    """One (layer, r) judged on the open validation questions.

    Attributes:
        layer, relative: the setting; val_ppl_ratio: its perplexity ratio on the validation corpus slice (the
            larger of the two signs).
        judge_plus, judge_minus: mean judged score of the answers at +r and -r.
        gap: judge_plus - judge_minus, with its 95% interval over questions (gap_low, gap_high).
        n: questions answered.
    """

    layer: Site
    relative: float
    val_ppl_ratio: float
    judge_plus: float
    judge_minus: float
    gap: float
    gap_low: float
    gap_high: float
    n: int


def strongest_within_cap(ratio: Callable[[float], float], strengths: Sequence[float],
                         cap: float) -> tuple[float | None, dict[float, float]]:
    """The largest of `strengths` whose `ratio(r)` is within `cap` (None: none is), by bisection over the sorted
    strengths, assuming the ratio grows with r; and every ratio it measured, by r."""
    rs = sorted(set(float(r) for r in strengths))
    seen: dict[float, float] = {}
    lo, hi, best = 0, len(rs) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        seen[rs[mid]] = ratio(rs[mid])
        if seen[rs[mid]] <= cap:
            best, lo = rs[mid], mid + 1
        else:
            hi = mid - 1
    return best, seen


def judged_answers(lm: LoadedModel, vec: SteeringVector, questions: Sequence[str], layer: Site, alpha: float,
                   judge: Judge, behaviour: str, *, max_new_tokens: int, generator: TextGenerator = generate,
                   batch_size: int = 8, positions: str = "answer", schedule: str = "constant") -> list[dict]:
    """Greedy answers to each question at +alpha and -alpha on `layer` steered at `positions` (both signs in the
    same batches), judged: one record per answer {question, sign, response, judge}."""
    rows = [(q, s) for q in questions for s in (1.0, -1.0)]
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        terms = [type(t)([vec] * len(chunk), [s * float(alpha) for _, s in chunk], t.layers, t.positions,
                         schedule=t.schedule)
                 for t in steering_terms(vec, layer, alpha, "yesno", positions, schedule)]
        texts += generator(lm, [q for q, _ in chunk], terms, max_new_tokens=max_new_tokens, batch_size=len(chunk))
    scores = judge.score([JudgeRequest(q, t, behaviour) for (q, _), t in zip(rows, texts)])
    if len(scores) != len(rows):
        raise SteerlabError(f"the judge returned {len(scores)} scores for {len(rows)} answers")
    return [{"question": q, "sign": "+" if s > 0 else "-", "response": t, "judge": float(j)}
            for (q, s), t, j in zip(rows, texts, scores)]


def choose_on_open_answers(lm: LoadedModel, vec: SteeringVector, val, questions: Sequence[str],
                           layers: Sequence[Site], strengths: Sequence[float], val_windows: CorpusWindows,
                           judge: Judge, behaviour: str, *, max_new_tokens: int = 48,
                           generator: TextGenerator = generate, positions: str = "answer",
                           schedule: str = "constant", log: Callable[[str], None] = lambda s: None) -> dict:
    """The (layer, r) the rule in the module docstring picks, as selection.json holds it: layer, relative, the
    candidates judged (`OpenCandidate`), every perplexity ratio measured, and the judged answers (generated steered
    at `positions`). A layer may be a band (`sites`)."""
    if not questions:
        raise SteerlabError("no open validation questions: the validation items' stems could not be read")
    norms = residual_norms(lm, val, sorted({l for site in layers for l in site_layers(site)}))
    measured: list[dict] = []
    candidates: list[OpenCandidate] = []
    answers: list[dict] = []
    for layer in layers:
        def ratio(r: float, layer: Site = layer) -> float:
            log(f"  validation perplexity at layer {layer}, r=±{r:g}")
            v, lay, alpha = site_steering(vec, layer, r, norms)
            side = measure_side_effects(lm, v, lay, [alpha, -alpha], val_windows, relative=[r, -r], schedule=schedule)
            return max(x.perplexity_ratio for x in side.rows if x.relative)

        best, seen = strongest_within_cap(ratio, strengths, MAX_PPL_RATIO)
        measured += [{"layer": as_site(layer), "relative": r, "val_ppl_ratio": v} for r, v in seen.items()]
        if best is None:
            continue
        log(f"  open answers to {len(questions)} validation questions at layer {layer}, r=±{best:g}")
        v, lay, alpha = site_steering(vec, layer, best, norms)
        recs = judged_answers(lm, v, questions, lay, alpha, judge, behaviour, max_new_tokens=max_new_tokens,
                              generator=generator, positions=positions, schedule=schedule)
        plus = np.array([r["judge"] for r in recs if r["sign"] == "+"])
        minus = np.array([r["judge"] for r in recs if r["sign"] == "-"])
        lo, hi = bootstrap_ci(plus - minus)
        candidates.append(OpenCandidate(as_site(layer), best, seen[best], float(plus.mean()), float(minus.mean()),
                                        float((plus - minus).mean()), lo, hi, len(plus)))
        answers += [{"layer": as_site(layer), "relative": best, **r} for r in recs]
    if candidates:
        win = max(candidates, key=lambda c: c.gap)
        layer, rel, within = win.layer, win.relative, True
    else:
        cheapest = min(measured, key=lambda m: m["val_ppl_ratio"])
        layer, rel, within = cheapest["layer"], cheapest["relative"], False
    return {"layer": layer, "relative": rel, "select_on": "open-ended", "max_ppl_ratio": MAX_PPL_RATIO,
            "within_ppl": within, "candidates": [asdict(c) for c in candidates], "val_ppl": measured,
            "val_corpus": {"start_token": val_windows.start_token, "n_tokens": val_windows.n_predicted},
            "answers": answers}
