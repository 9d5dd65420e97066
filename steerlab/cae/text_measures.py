"""Measures of generated text itself (no model): how repetitive it is."""

from __future__ import annotations

from typing import Sequence


def distinct_ngrams(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams of a text (1: no repetition; looping text is low). A text shorter
    than n words has no n-grams and counts as 0, with the degenerate."""
    w = text.split()
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def mean_distinct(texts: Sequence[str], n: int = 2) -> float | None:
    """The mean of `distinct_ngrams` over texts (None for no texts)."""
    return sum(distinct_ngrams(t, n) for t in texts) / len(texts) if texts else None
