"""Immutable records that flow from the loaders to the steering methods.

All records are frozen (hashable) dataclasses and validate themselves cheaply on creation, so a
malformed item fails where it is built, with the source and index in the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import DatasetError

BehaviourKind = Literal["ab", "yesno"]


@dataclass(frozen=True)
class ContrastPair:
    """One CAA training pair: the same prompt with a behaviour-positive and -negative answer.

    ``prompt`` is the user message shared by both sides; it may be ``""`` for raw-text pairs
    (e.g. ActAdd's "Love" vs "Hate"). ``positive`` / ``negative`` are the assistant-side texts.
    """

    prompt: str
    positive: str
    negative: str

    def __post_init__(self) -> None:
        for name in ("prompt", "positive", "negative"):
            if not isinstance(getattr(self, name), str):
                raise DatasetError(
                    f"ContrastPair.{name} must be a string, got {type(getattr(self, name)).__name__}"
                )
        if not self.positive.strip() or not self.negative.strip():
            raise DatasetError("ContrastPair: positive and negative must be non-empty")
        if self.positive == self.negative:
            # Identical sides contribute an exactly-zero difference: almost surely a data bug.
            raise DatasetError(f"ContrastPair: positive and negative are identical ({self.positive!r:.60})")


@dataclass(frozen=True)
class BehaviourItem:
    """One Anthropic Model-Written-Evaluations question.

    ``matching`` / ``not_matching`` are normalised answers: a letter ("A", "B") for A/B sets
    (``kind="ab"``), "Yes" / "No" for persona statement sets (``kind="yesno"``). ``source`` is the
    file stem (the behaviour name) and ``index`` the 0-based record position in that file.
    """

    question: str
    matching: str
    not_matching: str
    kind: BehaviourKind
    source: str
    index: int

    def __post_init__(self) -> None:
        where = f"{self.source or 'BehaviourItem'} item {self.index}"
        if self.kind == "ab":
            for ans in (self.matching, self.not_matching):
                if not (isinstance(ans, str) and len(ans) == 1 and "A" <= ans <= "Z"):
                    raise DatasetError(f"{where}: A/B answer must be a single capital letter, got {ans!r}")
        elif self.kind == "yesno":
            if {self.matching, self.not_matching} != {"Yes", "No"}:
                raise DatasetError(
                    f"{where}: Yes/No answers must be 'Yes' and 'No', got {self.matching!r}/{self.not_matching!r}"
                )
        else:
            raise DatasetError(f"{where}: kind must be 'ab' or 'yesno', got {self.kind!r}")
        if self.matching == self.not_matching:
            raise DatasetError(f"{where}: matching and not-matching answers are both {self.matching!r}")

    def to_pair(self) -> ContrastPair:
        """The CAA contrast pair for this question.

        A/B: the assistant turn is prefilled with "(" and the letter, so positive = "(" +
        matching letter (e.g. "(A") and negative = "(" + the other letter — the activation is read
        at the letter token. Yes/No: positive = the matching word, negative = the other, with no
        leading space because the answer starts the assistant turn.
        """
        if self.kind == "ab":
            return ContrastPair(self.question, f"({self.matching}", f"({self.not_matching}")
        return ContrastPair(self.question, self.matching, self.not_matching)


def mc_problem(question: object, choices: Sequence[object], gold: object) -> str | None:
    """Why (question, choices, gold) is not a valid multiple-choice item, or None if it is.

    Shared by :class:`MCItem` and the loaders (which add the file and line to the message).
    """
    if not isinstance(question, str):
        return f"question must be a string, got {type(question).__name__}"
    if len(choices) < 2:
        return f"needs at least 2 choices, got {len(choices)}"
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            return f"choice {i} must be a string, got {type(c).__name__}"
        if not c.strip():
            return f"choice {i} is empty"
    seen: dict[str, int] = {}
    for i, c in enumerate(choices):
        key = c.strip()
        if key in seen:
            return f"duplicate choice {c!r} (choices {seen[key]} and {i})"
        seen[key] = i
    if isinstance(gold, bool) or not isinstance(gold, int):
        return f"gold must be an int index, got {type(gold).__name__}"
    if not 0 <= gold < len(choices):
        return f"gold index {gold} out of range for {len(choices)} choices"
    return None


@dataclass(frozen=True)
class MCItem:
    """A labelled multiple-choice item (the input of Painless Activation Steering).

    ``gold`` indexes ``choices``. ``context`` (e.g. a BBQ passage) is shown before the question.
    ``meta`` holds hashable extra information as (key, value) string pairs, e.g.
    ``(("context_condition", "ambig"), ("category", "Nationality"))``; see :meth:`meta_dict`.
    """

    question: str
    choices: tuple[str, ...]
    gold: int
    context: str | None = None
    source: str = ""
    index: int = 0
    meta: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.choices, tuple):
            # Lists would make the item unhashable; accept them and convert.
            object.__setattr__(self, "choices", tuple(self.choices))
        if not isinstance(self.meta, tuple):
            object.__setattr__(self, "meta", tuple((str(k), str(v)) for k, v in dict(self.meta).items()))
        problem = mc_problem(self.question, self.choices, self.gold)
        if problem is None and self.context is not None and not isinstance(self.context, str):
            problem = f"context must be a string or None, got {type(self.context).__name__}"
        if problem:
            raise DatasetError(f"{self.source or 'MCItem'} item {self.index}: {problem}")

    @property
    def gold_text(self) -> str:
        return self.choices[self.gold]

    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)


@dataclass(frozen=True)
class OODPrompt:
    """One out-of-distribution prompt (CAE paper): an open question, optionally with a rubric."""

    id: int
    prompt: str
    criteria: str | None
    source: str
