"""Letter-bias control: does a PAS gain survive when the gold letter is uniform?

A steering vector added at the last prompt token can learn "answer B" rather than a behaviour; if the
test set's gold answers lean to B (as in the PAS reference code, where every question of one size
gets the same permutation), that shows up as a gain. steerlab shuffles every question independently,
and reports per run:

* **letter-balanced accuracy**: each test item weighted so that, within the items with the same
  number of choices, every gold letter present carries the same total weight (a test set with a
  uniform gold letter), and the groups keep their sizes. `balanced_delta` is the steered minus the
  unsteered balanced accuracy; `surviving` = balanced_delta / delta (how much of Delta survives).
* **majority-letter baselines**: accuracy of always answering the most frequent gold letter of the
  training split (`majority_train`), and the best any single letter could do on the test split
  (`majority_test`, an upper bound for a letter-only strategy).
* **prediction letter distributions** unsteered and steered, their total-variation distance and
  each letter's share; `top_letter_share_steered` near 1 means the vector mostly forces one letter.
* **accuracy per gold letter**, unsteered and steered: a letter-only vector helps one letter's
  items and hurts the others.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import SteerlabError


def balanced_weights(gold_letters: Sequence[str], n_choices: Sequence[int]) -> list[float]:
    """Per-item weights (summing to the number of items) that make the gold letter uniform within
    each number-of-choices group (over the letters present in that group)."""
    if len(gold_letters) != len(n_choices):
        raise SteerlabError(f"{len(gold_letters)} gold letters for {len(n_choices)} items")
    groups: dict[int, Counter] = {}
    for g, n in zip(gold_letters, n_choices):
        groups.setdefault(int(n), Counter())[g] += 1
    weights = []
    for g, n in zip(gold_letters, n_choices):
        counts = groups[int(n)]
        size = sum(counts.values())
        weights.append(size / (len(counts) * counts[g]))
    return weights


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    if total <= 0:
        raise SteerlabError("weights must have a positive sum")
    return sum(v * w for v, w in zip(values, weights)) / total


def distribution(letters: Sequence[str]) -> dict[str, float]:
    """Share of each letter, sorted by letter."""
    if not letters:
        return {}
    c = Counter(letters)
    return {k: c[k] / len(letters) for k in sorted(c)}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def accuracy_by_letter(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    out: dict[str, list[int]] = {}
    for g, p in zip(gold, pred):
        out.setdefault(g, []).append(int(g == p))
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


@dataclass(frozen=True)
class LetterBiasReport:
    """The letter-bias control of one run (see the module docstring)."""

    accuracy_unsteered: float
    accuracy_steered: float
    delta: float
    balanced_unsteered: float
    balanced_steered: float
    balanced_delta: float
    surviving: float | None
    majority_letter: str
    majority_train: float
    majority_test: float
    gold_distribution: dict[str, float]
    pred_unsteered: dict[str, float]
    pred_steered: dict[str, float]
    pred_shift: float
    top_letter_share_steered: float
    accuracy_by_letter_unsteered: dict[str, float]
    accuracy_by_letter_steered: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def letter_bias_report(gold: Sequence[str], pred_unsteered: Sequence[str], pred_steered: Sequence[str],
                       n_choices: Sequence[int], train_gold: Sequence[str]) -> LetterBiasReport:
    """The control for test gold letters, unsteered and steered predicted letters, and the training golds."""
    n = len(gold)
    if n == 0 or len(pred_unsteered) != n or len(pred_steered) != n or len(n_choices) != n:
        raise SteerlabError("letter-bias control: gold, predictions and choice counts must be non-empty and aligned")
    w = balanced_weights(gold, n_choices)
    ok_u = [float(g == p) for g, p in zip(gold, pred_unsteered)]
    ok_s = [float(g == p) for g, p in zip(gold, pred_steered)]
    acc_u, acc_s = sum(ok_u) / n, sum(ok_s) / n
    bal_u, bal_s = weighted_mean(ok_u, w), weighted_mean(ok_s, w)
    delta, bdelta = acc_s - acc_u, bal_s - bal_u
    surviving = bdelta / delta if abs(delta) > 1e-12 else None
    train_counts = Counter(train_gold)
    majority = min(train_counts, key=lambda k: (-train_counts[k], k)) if train_counts else "A"
    gold_counts = Counter(gold)
    dist_u, dist_s = distribution(pred_unsteered), distribution(pred_steered)
    return LetterBiasReport(
        accuracy_unsteered=acc_u, accuracy_steered=acc_s, delta=delta,
        balanced_unsteered=bal_u, balanced_steered=bal_s, balanced_delta=bdelta, surviving=surviving,
        majority_letter=majority, majority_train=gold_counts[majority] / n,
        majority_test=max(gold_counts.values()) / n,
        gold_distribution=distribution(gold), pred_unsteered=dist_u, pred_steered=dist_s,
        pred_shift=total_variation(dist_u, dist_s), top_letter_share_steered=max(dist_s.values()),
        accuracy_by_letter_unsteered=accuracy_by_letter(gold, pred_unsteered),
        accuracy_by_letter_steered=accuracy_by_letter(gold, pred_steered),
    )
