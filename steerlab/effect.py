"""Measure what a vector actually does on held-apart contrast pairs, instead of trusting its sign.

For each held-apart pair, the effect is the log-probability gap between the positive and the negative
completion (mean per token, teacher-forced after the pair's prompt), steered minus unsteered. A vector
"works as trained" when positive strengths raise the gap; on small models some vectors act against
their trained sign, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from .data.records import ContrastPair
from .errors import SteerlabError
from .steering import PositionPolicy, Steering
from .vector import SteeringVector

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from .models import LoadedModel


@dataclass
class EffectReport:
    """Effect of one vector at one set of layers across strengths.

    Attributes:
        strengths: the strengths measured (0 = unsteered is always included).
        gaps: per strength, the per-item gap log p(positive) − log p(negative) (mean per token).
        layers, positions: where the vector was applied.
    """

    layers: tuple[int, ...]
    positions: str
    strengths: list[float]
    gaps: dict[float, list[float]] = field(default_factory=dict)

    def mean_gap(self, strength: float) -> float:
        g = self.gaps[strength]
        return sum(g) / len(g)

    def shift(self, strength: float) -> float:
        """Mean change of the gap against the unsteered model."""
        return self.mean_gap(strength) - self.mean_gap(0.0)

    def shift_ci(self, strength: float) -> tuple[float, float]:
        """95% normal interval of the per-item change (items are paired with the unsteered run)."""
        d = [a - b for a, b in zip(self.gaps[strength], self.gaps[0.0])]
        n = len(d)
        m = sum(d) / n
        sd = math.sqrt(sum((x - m) ** 2 for x in d) / max(n - 1, 1))
        half = 1.96 * sd / math.sqrt(n)
        return m - half, m + half

    @property
    def direction(self) -> str:
        """"as trained" if the largest positive strength raises the gap and the most negative lowers it,
        "reversed" if the opposite, else "unclear"."""
        hi, lo = max(self.strengths), min(self.strengths)
        up = self.shift(hi) if hi > 0 else 0.0
        down = self.shift(lo) if lo < 0 else 0.0
        if up > 0 and down <= 0 and (hi <= 0 or self.shift_ci(hi)[0] > 0):
            return "as trained"
        if up < 0 and down >= 0 and (hi <= 0 or self.shift_ci(hi)[1] < 0):
            return "reversed"
        return "unclear"

    @property
    def monotonic(self) -> bool:
        """Whether the mean gap rises (or falls) monotonically with strength."""
        means = [self.mean_gap(s) for s in sorted(self.strengths)]
        diffs = [b - a for a, b in zip(means, means[1:])]
        return all(d >= 0 for d in diffs) or all(d <= 0 for d in diffs)

    def rows(self) -> list[dict]:
        out = []
        for s in sorted(self.strengths):
            lo, hi = self.shift_ci(s)
            out.append({"strength": s, "mean_gap": self.mean_gap(s), "shift": self.shift(s), "ci_low": lo, "ci_high": hi})
        return out

    @property
    def warning(self) -> str | None:
        """A one-line warning when the measured effect does not follow the vector's sign, else None.

        "reversed": the largest positive strength moves the gap against the trained sign (its 95%
        interval excludes 0) and the most negative strength does not. "sign-blind": the largest
        positive and the most negative strength both move the gap the same way, both intervals
        excluding 0, so the vector's sign does not set the direction of its effect. Yes/No CAA vectors
        do both on the models in docs/findings.md.
        """
        hi, lo = max(self.strengths), min(self.strengths)
        if hi <= 0:
            return None
        up, (up_lo, up_hi) = self.shift(hi), self.shift_ci(hi)
        if self.direction == "reversed":
            return (f"warning: this vector acts against its trained sign on these held-apart pairs: +{hi:g} shifts the "
                    f"gap by {up:+.3f} [{up_lo:+.3f}, {up_hi:+.3f}]; measure before you use its sign (docs/findings.md)")
        if lo < 0:
            down, (down_lo, down_hi) = self.shift(lo), self.shift_ci(lo)
            if (up_lo > 0 and down_lo > 0) or (up_hi < 0 and down_hi < 0):
                return (f"warning: +{hi:g} and {lo:g} move the gap the same way ({up:+.3f} and {down:+.3f}): the "
                        "vector's sign does not set the direction of its effect here (docs/findings.md)")
        return None

    def summary(self) -> str:
        hi = max(self.strengths)
        return (f"layers {list(self.layers)}: gap shift at +{hi:g} = {self.shift(hi):+.3f} nats/token, "
                f"direction {self.direction}, {'monotonic' if self.monotonic else 'not monotonic'}")


def measure_effect(
    lm: LoadedModel,
    vector: SteeringVector,
    pairs: Sequence[ContrastPair],
    *,
    layers: Sequence[int] | None = None,
    strengths: Sequence[float] = (-8.0, -4.0, 4.0, 8.0),
    positions: PositionPolicy = "after_user",
    batch_size: int = 16,
) -> EffectReport:
    """Log-probability gap of held-apart completions under the vector at several strengths.

    Uses the scoring engine, so all strengths share one pass over the prompts.
    """
    from .engine import ScoringItem, Setting, score

    if len(pairs) == 0:
        raise SteerlabError("no held-apart pairs to measure the effect on")
    layers = tuple(vector.layers if layers is None else layers)
    strengths = sorted({0.0, *[float(s) for s in strengths]})
    items = [ScoringItem(p.prompt, (p.positive, p.negative)) for p in pairs]
    settings = [Setting.unsteered() if s == 0 else Setting((Steering(vector, s, layers, positions),), label=f"{s:g}")
                for s in strengths]
    table = score(lm, items, settings, batch_size=batch_size)
    n_tokens = torch.tensor([[len(lm.tokenizer(c, add_special_tokens=False).input_ids) for c in it.candidates] for it in items],
                            dtype=torch.float32)
    per_token = table.logprobs[:, :, :2] / n_tokens[None]
    report = EffectReport(layers=layers, positions=positions, strengths=strengths)
    for k, s in enumerate(strengths):
        report.gaps[s] = (per_token[k, :, 0] - per_token[k, :, 1]).tolist()
    return report
