"""Across-seed statistics for PAS: mean, 95% Student-t interval, one-sided t-test of Delta > 0.

The paper reports the test accuracy gain Delta as a mean over seeds with a 95% t-interval;
`summarize(deltas)` gives that and the one-sided p-value of H1: mean Delta > 0 (H0: mean <= 0).
Degenerate cases never divide by zero: one seed has no interval (NaN); seeds that all agree have a
zero-width interval and a p-value of 0 (mean > 0), 1 (mean < 0) or NaN (mean = 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from scipy import stats

from ..errors import SteerlabError


@dataclass(frozen=True)
class SeedSummary:
    """Mean of a per-seed quantity with its t-interval and one-sided test.

    Attributes:
        n: number of seeds; mean, std (sample, ddof=1), sem (std / sqrt(n)).
        ci_low / ci_high: the `confidence` two-sided Student-t interval of the mean.
        t: the t statistic mean / sem; p_greater: one-sided p-value of mean > 0.
    """

    n: int
    mean: float
    std: float
    sem: float
    ci_low: float
    ci_high: float
    t: float
    p_greater: float
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """e.g. '+3.2 [+0.4, +6.0]' (percentage points by default)."""
        if self.n == 0:
            return "n/a"
        m = f"{self.mean * scale:+.{digits}f}"
        if math.isnan(self.ci_low):
            return m
        return f"{m} [{self.ci_low * scale:+.{digits}f}, {self.ci_high * scale:+.{digits}f}]"


def summarize(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample std, t-interval and one-sided p-value (mean > 0) of per-seed values."""
    if not 0 < confidence < 1:
        raise SteerlabError(f"confidence must be in (0, 1), got {confidence}")
    xs = [float(v) for v in values]
    if any(math.isnan(v) or math.isinf(v) for v in xs):
        raise SteerlabError(f"per-seed values must be finite, got {xs}")
    n = len(xs)
    nan = float("nan")
    if n == 0:
        return SeedSummary(0, nan, nan, nan, nan, nan, nan, nan, confidence)
    mean = sum(xs) / n
    if n == 1:
        return SeedSummary(1, mean, nan, nan, nan, nan, nan, nan, confidence)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    sem = std / math.sqrt(n)
    if sem <= 1e-15 * max(1.0, abs(mean)):
        p = 0.0 if mean > 0 else (1.0 if mean < 0 else nan)
        t = math.copysign(math.inf, mean) if mean != 0 else nan
        return SeedSummary(n, mean, std, 0.0, mean, mean, t, p, confidence)
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    t = mean / sem
    p = float(stats.t.sf(t, n - 1))
    return SeedSummary(n, mean, std, sem, mean - q * sem, mean + q * sem, t, p, confidence)
