"""Does a vector move held-apart items the way it was trained? Sign verdicts from effects at +r and -r."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..data.records import BehaviourItem
from ..errors import SteerlabError
from ..vector import SteeringVector
from .scoring import score_behaviour
from .sites import Site, site_layers, site_steering
from .strengths import behaviour_setting, residual_norms

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def sign_verdict(plus_low: float, plus_high: float, minus_effect: float, minus_low: float, minus_high: float) -> str:
    """How a vector acts, from its effects at +r (95% interval) and -r: "as trained" (+r raises the score,
    interval above 0, and -r lowers it), "reversed" (+r lowers it, interval below 0, and -r raises it),
    "sign-blind" (both raise or both lower it, both intervals excluding 0), else "unclear"."""
    if plus_low > 0 and minus_effect < 0:
        return "as trained"
    if plus_high < 0 and minus_effect > 0:
        return "reversed"
    if (plus_low > 0 and minus_low > 0) or (plus_high < 0 and minus_high < 0):
        return "sign-blind"
    return "unclear"


def sign_check(lm: LoadedModel,
               vector: SteeringVector, items: Sequence[BehaviourItem], layers: Sequence[Site] | None = None, *,
               strength: float | Sequence[float] = 0.5, positions: str = "answer", schedule: str = "constant",
               n_boot: int = 1000) -> list[dict]:
    """Does +strength move held-apart items the way the vector was trained? One row per layer and strength.

    Each layer is steered alone at relative strengths +strength and -strength (alpha * ||v_L|| =
    r * mean ||h_L|| at the answer-predicting token of `items`), every setting in one engine call; `strength`
    may list several (rows layer-major). Row fields: layer, relative (the positive r), effect_plus/low/high,
    effect_minus/low/high, and verdict: "as trained" (+r raises the behaviour score, interval above 0, and -r
    lowers it), "reversed" (+r lowers it, interval below 0, and -r raises it), "sign-blind" (both raise or both
    lower it, both intervals excluding 0) or "unclear". A layer may be a band (a tuple of layers, `sites`):
    steered at all of them at once, each at r / k of its own residual norm. `schedule` weighs the steered positions
    (`steerlab.schedules`).
    """
    layers = list(vector.layers if layers is None else layers)
    strengths = [float(strength)] if isinstance(strength, (int, float)) else [float(s) for s in strength]
    if not strengths or any(not s > 0 for s in strengths):
        raise SteerlabError(f"sign_check needs positive strengths, got {strengths}")
    norms = residual_norms(lm, items[:64], sorted({l for site in layers for l in site_layers(site)}))
    settings, meta = [], []
    for l in layers:
        for s in strengths:
            for r in (s, -s):
                vec, lay, alpha = site_steering(vector, l, r, norms)
                settings.append(behaviour_setting(vec, lay, alpha, items[0].kind, positions, label=f"L{l} r={r:+g}",
                                                  schedule=schedule))
                meta.append({"layer": l, "relative": r})
    res = score_behaviour(lm, items, settings, meta, n_boot=n_boot)
    rows = []
    for l in layers:
        for s in strengths:
            plus = next(x for x in res.scores if x.meta.get("layer") == l and x.meta["relative"] == s)
            minus = next(x for x in res.scores if x.meta.get("layer") == l and x.meta["relative"] == -s)
            verdict = sign_verdict(plus.effect_low, plus.effect_high, minus.effect, minus.effect_low, minus.effect_high)
            rows.append({"layer": l, "relative": s, "effect_plus": plus.effect, "plus_low": plus.effect_low,
                         "plus_high": plus.effect_high, "effect_minus": minus.effect, "minus_low": minus.effect_low,
                         "minus_high": minus.effect_high, "verdict": verdict, "unsteered": res.unsteered().score,
                         "n_items": len(items)})
    return rows
