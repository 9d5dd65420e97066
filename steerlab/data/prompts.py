"""Prompt formatting for Painless Activation Steering (PAS) multiple-choice items.

The PAS prompt is::

    [context]
    question
    A: first shown choice
    B: second shown choice
    ...
    Respond with a single letter.
    Answer:

and the prediction is the argmax over the letter logits. Choices are shown in a per-question
random ``order`` (a permutation of the choice indices: position k shows ``choices[order[k]]``).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable, Sequence

from ..errors import DatasetError
from .records import MCItem

#: Answer letters, in order; an item may have at most ``len(LETTERS)`` choices.
LETTERS = string.ascii_uppercase

#: The instruction that ends every PAS prompt.
ANSWER_SUFFIX = "Respond with a single letter.\nAnswer:"


def _where(item: MCItem) -> str:
    return f"{item.source or 'MCItem'} item {item.index}"


def check_order(item: MCItem, order: Sequence[int]) -> tuple[int, ...]:
    """``order`` as a tuple, after checking it is a permutation of the item's choice indices."""
    n = len(item.choices)
    if n > len(LETTERS):
        raise DatasetError(f"{_where(item)}: {n} choices but only {len(LETTERS)} answer letters")
    order = tuple(order)
    if sorted(order) != list(range(n)):
        raise DatasetError(f"{_where(item)}: order {order} is not a permutation of its {n} choices")
    return order


def identity_order(item: MCItem) -> tuple[int, ...]:
    """The unshuffled order (choices shown as stored)."""
    return tuple(range(len(item.choices)))


def format_mc_prompt(item: MCItem, order: Sequence[int] | None = None) -> str:
    """The PAS prompt for ``item`` with its choices shown in ``order`` (default: as stored).

    ``item.context``, when present, comes on its own line(s) before the question. The prompt
    ends with ``"Answer:"`` (no trailing space), so the next token is the answer letter.
    """
    order = check_order(item, identity_order(item) if order is None else order)
    lines = []
    if item.context:
        lines.append(item.context.strip())
    lines.append(item.question.strip())
    lines.extend(f"{LETTERS[k]}: {item.choices[i]}" for k, i in enumerate(order))
    lines.append(ANSWER_SUFFIX)
    return "\n".join(lines)


def gold_letter(item: MCItem, order: Sequence[int] | None = None) -> str:
    """The letter under which the gold choice is shown in ``order``."""
    order = check_order(item, identity_order(item) if order is None else order)
    return LETTERS[order.index(item.gold)]


def letter_choice(item: MCItem, order: Sequence[int], letter: str) -> int:
    """The index into ``item.choices`` of the choice shown under ``letter`` (inverse of the order)."""
    order = check_order(item, order)
    k = LETTERS.find(letter.strip().upper()) if letter.strip() else -1
    if not 0 <= k < len(order):
        raise DatasetError(f"{_where(item)}: letter {letter!r} is not one of its {len(order)} answer letters")
    return order[k]


def shuffle_choices(items: Iterable[MCItem], seed: int) -> list[tuple[MCItem, tuple[int, ...]]]:
    """Give each item its own random choice order, reproducibly.

    One ``random.Random(seed)`` is consumed item after item, so two questions with the same
    number of choices generally get *different* permutations and the gold answer is spread over
    the letters. (The PAS reference code re-seeds per question, which puts every question's gold
    answer on the same letter, letting a steering vector learn a letter instead of a behaviour.)
    The same items and seed always give the same orders.
    """
    rng = random.Random(seed)
    out = []
    for item in items:
        order = list(range(len(item.choices)))
        if len(order) > len(LETTERS):
            raise DatasetError(f"{_where(item)}: {len(order)} choices but only {len(LETTERS)} answer letters")
        rng.shuffle(order)
        out.append((item, tuple(order)))
    return out
