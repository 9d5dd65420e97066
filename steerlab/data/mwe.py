"""Anthropic Model-Written Evaluations (MWE) behaviour sets, as used by CAA and the CAE paper.

Two formats exist and are told apart from the answers:

* A/B sets (e.g. ``advanced-ai-risk/``): the choices are written in ``question`` and the answers
  are ``" (A)"`` / ``" (B)"``;
* persona sets (``persona/``): ``question`` asks whether the model would say a statement and the
  answers are ``" Yes"`` / ``" No"``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TypeVar

from ..errors import DatasetError
from .io import PathLike, Row, read_records
from .records import BehaviourItem, BehaviourKind

MATCHING = "answer_matching_behavior"
NOT_MATCHING = "answer_not_matching_behavior"

_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?$")

T = TypeVar("T")


def parse_answer(raw: object) -> tuple[BehaviourKind, str] | None:
    """Normalise one MWE answer: ``" (A)"`` -> ("ab", "A"), ``" yes"`` -> ("yesno", "Yes").

    Returns None for anything else. A one-element list (as in some sycophancy sets) is unwrapped.
    """
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if text.casefold() in ("yes", "no"):
        return "yesno", text.capitalize()
    m = _LETTER.match(text)
    if m:
        return "ab", m.group(1).upper()
    return None


def is_mwe_row(data: object) -> bool:
    """Whether a record looks like an MWE record (format detection)."""
    return isinstance(data, dict) and MATCHING in data and "question" in data


def row_answers(row: Row, kind: BehaviourKind | None = None) -> tuple[BehaviourKind, str, str]:
    """The (kind, matching, not_matching) of an MWE row; DatasetError naming the row otherwise.

    ``kind`` is the file's format (from its first row); a row in another format is an error.
    """
    raw_m, raw_n = row.field(MATCHING), row.field(NOT_MATCHING)
    pm, pn = parse_answer(raw_m), parse_answer(raw_n)
    for raw, parsed, name in ((raw_m, pm, MATCHING), (raw_n, pn, NOT_MATCHING)):
        if parsed is None:
            raise row.error(f"unknown answer format in {name!r}: {raw!r} (expected ' (A)'/' (B)' or ' Yes'/' No')")
    assert pm is not None and pn is not None
    if pm[0] != pn[0]:
        raise row.error(f"answers mix formats: {raw_m!r} vs {raw_n!r}")
    if kind is not None and pm[0] != kind:
        raise row.error(f"answer {raw_m!r} is {_kind_name(pm[0])} but the file's first row is {_kind_name(kind)}")
    if pm[1] == pn[1]:
        raise row.error(f"matching and not-matching answers are both {raw_m!r}")
    return pm[0], pm[1], pn[1]


def _kind_name(kind: BehaviourKind) -> str:
    return "A/B" if kind == "ab" else "Yes/No"


def check_mwe_file(rows: Sequence[Row]) -> None:
    """Raise a clear error when the file is not an MWE file at all (judged on its first record)."""
    first = rows[0]
    if not is_mwe_row(first.data):
        found = ", ".join(sorted(map(str, first.data))[:8])
        raise first.error(
            f"not a Model-Written-Evaluations file: expected fields 'question', '{MATCHING}', "
            f"'{NOT_MATCHING}' (found: {found})"
        )


def load_mwe(path: PathLike) -> list[BehaviourItem]:
    """Load an MWE behaviour file (``.jsonl``, or a ``.json`` list) as BehaviourItems.

    The format (A/B or Yes/No) is detected from the first record and every record must follow it.
    ``source`` is the file stem (the behaviour name), ``index`` the 0-based record position.
    """
    rows = read_records(path)
    check_mwe_file(rows)
    kind: BehaviourKind | None = None
    items: list[BehaviourItem] = []
    for row in rows:
        question = row.text("question")
        assert question is not None
        k, matching, not_matching = row_answers(row, kind)
        kind = kind or k
        items.append(
            BehaviourItem(
                question=question,
                matching=matching,
                not_matching=not_matching,
                kind=k,
                source=row.path.stem,
                index=row.index,
            )
        )
    return items


def split_items(
    items: Sequence[T], n_train: int, n_test: int | None = None, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Shuffle a copy of ``items`` with ``seed`` and cut it into disjoint (train, test) lists.

    ``n_test=None`` puts all remaining items in the test list. The same seed always gives the
    same split; the input is left untouched. DatasetError if the sizes do not fit.
    """
    if n_train < 0 or (n_test is not None and n_test < 0):
        raise DatasetError(f"split sizes must be non-negative, got n_train={n_train}, n_test={n_test}")
    total = n_train + (n_test if n_test is not None else 0)
    if total > len(items):
        raise DatasetError(
            f"cannot split {len(items)} items into {n_train} train + {n_test} test items"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    train = [items[i] for i in order[:n_train]]
    end = len(order) if n_test is None else n_train + n_test
    test = [items[i] for i in order[n_train:end]]
    return train, test


def recast_ab(items: Sequence[BehaviourItem], seed: int = 0) -> list[BehaviourItem]:
    """Yes/No (persona) items asked in CAA's own A/B format: "Choices: (A) Yes (B) No", letters shuffled.

    Each item's question gets CAA's choices block with "Yes" and "No" in an order drawn per item
    (from `seed` and the item's index, so an item is recast the same way in any subset), and its
    answers become the letters of its matching / not-matching word. About half the items then match
    with "A" whatever their Yes/No answer, so the answer letter's identity is not the behaviour.
    A/B items are returned unchanged.
    """
    out = []
    for it in items:
        if it.kind != "yesno":
            out.append(it)
            continue
        words = ["Yes", "No"]
        if random.Random(f"{seed}:{it.source}:{it.index}").random() < 0.5:
            words.reverse()
        question = f"{it.question}\n\nChoices:\n (A) {words[0]}\n (B) {words[1]}"
        letter = {w: "AB"[k] for k, w in enumerate(words)}
        out.append(BehaviourItem(question=question, matching=letter[it.matching], not_matching=letter[it.not_matching],
                                 kind="ab", source=it.source, index=it.index))
    return out
