"""Percentile bootstrap intervals of a mean: plain, and stratified with equal weight per group."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import SteerlabError


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Resamples are `numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))`, so a result is
    reproducible and checkable by hand. NaN values are an error (they would hide a failed item).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise SteerlabError("cannot bootstrap an empty set of values")
    if not np.all(np.isfinite(x)):
        raise SteerlabError("cannot bootstrap values containing NaN or inf")
    if not 0 < level < 1 or n_boot < 1:
        raise SteerlabError(f"bootstrap needs 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def balanced_bootstrap_ci(values: np.ndarray, groups: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float, float]:
    """(mean of the group means, interval low, high): a stratified percentile bootstrap.

    Each resample draws every group's items with replacement within the group
    (`default_rng(seed).integers(0, n_g, size=(n_boot, n_g))`, groups in sorted order) and averages
    the group means with equal weights.
    """
    x = np.asarray(values, dtype=np.float64)
    labels = sorted(set(np.asarray(groups).tolist()))
    if not labels:
        raise SteerlabError("cannot bootstrap an empty set of values")
    rng = np.random.default_rng(seed)
    point, boots = [], []
    for g in labels:
        xg = x[np.asarray(groups) == g]
        point.append(xg.mean())
        boots.append(xg[rng.integers(0, xg.size, size=(n_boot, xg.size))].mean(axis=1))
    means = np.mean(boots, axis=0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(np.mean(point)), float(lo), float(hi)
