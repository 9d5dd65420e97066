"""PAS data splits: shuffle, cap, 60/20/20 train/validation/test, choice orders per question.

`make_splits(items, seed)` shuffles the items with `seed`, keeps the first `cap` (4000 in the paper),
cuts them into train/validation/test by `fractions`, and gives every question its own random
choice order (`steerlab.data.shuffle_choices`: one generator consumed question after question, so
the gold answer is spread over the letters).

`choice_shuffle="per-size"` reproduces the PAS reference code's fault instead (re-seeding for every
question, so all questions with the same number of choices get the same permutation and the gold
answer sits on one letter). It exists only to show what the letter-bias control catches; never use
it for results.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, Sequence

from ..data.prompts import LETTERS, gold_letter, shuffle_choices
from ..data.records import MCItem, mc_problem
from ..errors import DatasetError

ChoiceShuffle = Literal["independent", "per-size", "none"]
CHOICE_SHUFFLES: tuple[str, ...] = ("independent", "per-size", "none")
DEFAULT_CAP = 4000
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)

Shown = tuple[MCItem, tuple[int, ...]]  # an item and the order its choices are shown in


def check_items(items: Sequence[MCItem], dataset: str = "") -> None:
    """Refuse items PAS cannot prompt: not an MCItem, invalid (gold not among the choices, duplicate
    or empty choices), or more choices than answer letters. The message names the dataset and item."""
    for k, it in enumerate(items):
        if not isinstance(it, MCItem):
            raise DatasetError(f"{dataset or 'dataset'} item {k}: expected a steerlab.data.MCItem, got {type(it).__name__}")
        where = f"{dataset or it.source or 'dataset'} item {it.index}"
        problem = mc_problem(it.question, it.choices, it.gold)
        if problem:
            raise DatasetError(f"{where}: {problem}")
        if len(it.choices) > len(LETTERS):
            raise DatasetError(f"{where}: {len(it.choices)} choices but only {len(LETTERS)} answer letters")


def split_sizes(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """(train, validation, test) counts for n items: validation and test rounded down, train the rest."""
    if len(fractions) != 3 or any(not (f > 0) for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DatasetError(f"split fractions must be three positive numbers summing to 1, got {tuple(fractions)}")
    n_val = int(n * fractions[1])
    n_test = int(n * fractions[2])
    return n - n_val - n_test, n_val, n_test


def choice_orders(items: Sequence[MCItem], seed: int, mode: ChoiceShuffle = "independent") -> list[tuple[int, ...]]:
    """One shown order per item (see the module docstring for the modes)."""
    if mode == "independent":
        return [order for _, order in shuffle_choices(items, seed)]
    if mode == "per-size":  # the reference code's re-seeding, for the letter-bias demonstration only
        out = []
        for it in items:
            order = list(range(len(it.choices)))
            random.Random(seed).shuffle(order)
            out.append(tuple(order))
        return out
    if mode == "none":
        return [tuple(range(len(it.choices))) for it in items]
    raise DatasetError(f"unknown choice shuffle {mode!r}: choose one of {', '.join(CHOICE_SHUFFLES)}")


@dataclass(frozen=True)
class PASSplits:
    """Train, validation and test items of one seed, each with its shown choice order."""

    seed: int
    train: tuple[Shown, ...]
    val: tuple[Shown, ...]
    test: tuple[Shown, ...]
    dataset: str = ""
    n_available: int = 0
    choice_shuffle: str = "independent"

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def gold_letters(self, part: str) -> list[str]:
        return [gold_letter(it, o) for it, o in getattr(self, part)]


def make_splits(items: Sequence[MCItem], seed: int, *, cap: int | None = DEFAULT_CAP,
                fractions: Sequence[float] = DEFAULT_FRACTIONS, choice_shuffle: ChoiceShuffle = "independent",
                choice_seed: int | None = None, dataset: str = "",
                min_sizes: tuple[int, int, int] = (2, 1, 1)) -> PASSplits:
    """Shuffle `items` with `seed`, cap, split 60/20/20 and give each question a choice order.

    Choice orders are drawn over the whole item list (in its given order) from `choice_seed`, or
    from `seed` when it is None; a fixed `choice_seed` keeps every question's order across seeds
    (only the split changes), so prompts repeat and their model outputs can be reused.
    Raises DatasetError naming `dataset` for invalid items or too few items for the splits.
    """
    items = list(items)
    name = dataset or (items[0].source if items and isinstance(items[0], MCItem) else "") or "dataset"
    check_items(items, name)
    if cap is not None and cap < 1:
        raise DatasetError(f"the item cap must be positive, got {cap}")
    order = list(range(len(items)))
    random.Random(f"split-{seed}").shuffle(order)
    kept = [items[i] for i in order[: cap if cap is not None else len(order)]]
    sizes = split_sizes(len(kept), fractions)
    if any(s < m for s, m in zip(sizes, min_sizes)):
        need = next(n for n in range(1, 10**6) if all(s >= m for s, m in zip(split_sizes(n, fractions), min_sizes)))
        raise DatasetError(
            f"{name}: {len(kept)} items give train/validation/test splits of {sizes[0]}/{sizes[1]}/{sizes[2]}; "
            f"PAS needs at least {min_sizes[0]}/{min_sizes[1]}/{min_sizes[2]}, i.e. {need} items with fractions "
            f"{'/'.join(f'{f:g}' for f in fractions)}"
        )
    all_orders = choice_orders(items, seed if choice_seed is None else choice_seed, choice_shuffle)
    shown = [(items[i], all_orders[i]) for i in order[: len(kept)]]
    a, b = sizes[0], sizes[0] + sizes[1]
    return PASSplits(seed, tuple(shown[:a]), tuple(shown[a:b]), tuple(shown[b:]), name, len(items), choice_shuffle)
