"""Labelled multiple-choice datasets -> :class:`MCItem` lists (the input of PAS).

Generic loaders (:func:`load_mc_jsonl`, :func:`load_mc_csv`) take a column mapping; the adapters
of :mod:`steerlab.data.mc_formats` cover the formats of the PAS tasks (BBQ, ETHICS, TruthfulQA,
OpenBookQA, ARC, MWE A/B sets, LSAT/AGIEval) and MMLU with the building blocks here. Every loader
keeps the file order, sets ``source`` to the file stem and ``index`` to the 0-based record
position, and reports bad rows with the file and line.

Gold answers (generic loaders, ``answer_format="auto"``) may be given as, tried in this order:

1. an ``int`` -> 0-based index into the choices;
2. a string equal to one of the choice *labels* when the choices carry labels
   (ARC/OpenBookQA ``{"text": [...], "label": ["A", ...]}`` or ``["1", ...]``);
3. a string equal to one choice's *text* (after stripping; then case-insensitively);
4. a single letter, optionally in parentheses (``"B"``, ``"(b)"``) -> A = 0, B = 1, ...;
5. a string of digits -> 0-based index.

Anything else, or an index/letter beyond the choices, is a DatasetError naming the row. Pass
``answer_format="index" | "letter" | "text"`` to force one reading when the auto order could be
ambiguous (e.g. choices that are themselves letters or numbers).
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..errors import DatasetError
from .io import PathLike, Row, read_csv, read_records
from .records import MCItem, mc_problem

AnswerFormat = Literal["auto", "index", "letter", "text"]
Field = str | int  # a JSON key (dotted for nesting) or a CSV column name / position
ChoiceSpec = Field | Sequence[Field]

_LETTER_ANSWER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?[.:]?$")


# --------------------------------------------------------------------------- building blocks


def make_item(
    row: Row,
    question: str,
    choices: Sequence[str],
    gold: int,
    *,
    context: str | None = None,
    source: str | None = None,
    meta: dict[str, Any] | None = None,
) -> MCItem:
    """Build an MCItem, reporting an invalid one with the file and line instead of the index."""
    problem = mc_problem(question, choices, gold)
    if problem:
        raise row.error(problem)
    pairs = tuple((str(k), str(v)) for k, v in (meta or {}).items() if v is not None)
    return MCItem(
        question=question,
        choices=tuple(choices),
        gold=gold,
        context=context,
        source=row.path.stem if source is None else source,
        index=row.index,
        meta=pairs,
    )


def resolve_gold(
    row: Row,
    raw: Any,
    choices: Sequence[str | None],
    labels: Sequence[str] | None = None,
    answer_format: AnswerFormat = "auto",
) -> int:
    """The 0-based gold index for answer ``raw`` (see the module docstring for the rules).

    ``choices`` may contain None for empty cells: an answer pointing at one is an error.
    """
    n = len(choices)
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]  # e.g. AGIEval's gold: [2]
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # CSV/pandas exports write 2.0

    def by_index(i: int) -> int:
        if not 0 <= i < n:
            raise row.error(f"gold answer {raw!r} is out of range for {n} choices")
        return i

    def result(i: int) -> int:
        if choices[i] is None:
            raise row.error(f"gold answer {raw!r} points at an empty choice")
        return i

    if isinstance(raw, bool) or raw is None or not isinstance(raw, (int, str)):
        raise row.error(f"gold answer must be an index, a letter or a choice text, got {raw!r}")
    if isinstance(raw, int):
        if answer_format not in ("auto", "index"):
            raise row.error(f"gold answer {raw!r} is a number but answer_format={answer_format!r}")
        return result(by_index(raw))

    text = raw.strip()
    if answer_format == "auto" and labels is not None and text in labels:
        return result(labels.index(text))
    if answer_format in ("auto", "text"):
        exact = [i for i, c in enumerate(choices) if c is not None and c.strip() == text]
        if exact:
            return exact[0]
        folded = [i for i, c in enumerate(choices) if c is not None and c.strip().casefold() == text.casefold()]
        if len(folded) == 1:
            return folded[0]
    if answer_format in ("auto", "letter"):
        m = _LETTER_ANSWER.match(text)
        if m and ord(m.group(1).upper()) - ord("A") < n:
            return result(ord(m.group(1).upper()) - ord("A"))
    if answer_format in ("auto", "index") and text.isascii() and text.isdigit() and int(text) < n:
        return result(int(text))
    shown = "; ".join(repr(c) for c in choices if c is not None)
    raise row.error(
        f"gold answer {raw!r} is not among the choices ({shown[:200]}) as an index, a letter "
        f"(A-{chr(64 + min(n, 26))}) or a choice text"
    )


def _parse_list_cell(row: Row, key: Field, value: str, sep: str) -> list[str]:
    """A choices cell: a JSON / Python list literal, or ``sep``-separated texts."""
    s = value.strip()
    if s.startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(s)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return [str(x) for x in parsed]
        raise row.error(f"field {key!r} looks like a list but cannot be parsed: {s[:60]!r}")
    return s.split(sep)


def read_choices(row: Row, spec: ChoiceSpec, sep: str = "; ") -> tuple[list[str | None], list[str] | None]:
    """Choice texts (None for an empty cell) and, when the data carries them, their labels.

    ``spec`` is one field holding a list (of strings, of ``{"text", "label"}`` objects, or a
    ``{"text": [...], "label": [...]}`` object, or a string with a list literal or ``sep``-separated
    choices), or a sequence of fields holding one choice each.
    """
    if isinstance(spec, (str, int)):
        value = row.field(spec)
        labels: list[str] | None = None
        if isinstance(value, str):
            value = _parse_list_cell(row, spec, value, sep)
        if isinstance(value, dict):
            if "text" not in value:
                raise row.error(f"field {spec!r} is an object without 'text'")
            labels = value.get("label")
            value = value["text"]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if not all("text" in v for v in value):
                raise row.error(f"field {spec!r}: every choice object needs a 'text'")
            labels = [v["label"] for v in value] if all("label" in v for v in value) else None
            value = [v["text"] for v in value]
        if not isinstance(value, list):
            raise row.error(f"field {spec!r} must be a list of choices, got {type(value).__name__}")
        texts: list[str | None] = []
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise row.error(f"field {spec!r}: choice {i} must be a string, got {type(v).__name__}")
            texts.append(v.strip() or None)
        if labels is not None:
            if not isinstance(labels, list) or len(labels) != len(texts):
                raise row.error(f"field {spec!r}: labels do not match the choices one to one")
            labels = [str(x).strip() for x in labels]
        return texts, labels
    texts = []
    for key in spec:
        v = row.field(key)
        if v is None:
            texts.append(None)
            continue
        if not isinstance(v, str):
            raise row.error(f"field {key!r} must be a string, got {type(v).__name__}")
        texts.append(v.strip() or None)
    return texts, None


def compact_choices(row: Row, texts: list[str | None], gold: int) -> tuple[list[str], int]:
    """Drop empty choices, keeping the gold index pointing at the same text."""
    kept = [i for i, t in enumerate(texts) if t is not None]
    return [texts[i] for i in kept], kept.index(gold)  # type: ignore[misc]


def generic_row(
    row: Row,
    question: Field,
    choices: ChoiceSpec,
    answer: Field,
    context: Field | None,
    answer_format: AnswerFormat,
    sep: str,
) -> MCItem:
    q = row.text(question)
    texts, labels = read_choices(row, choices, sep)
    gold = resolve_gold(row, row.field(answer), texts, labels, answer_format)
    ctx = row.text(context, required=False) if context is not None else None
    final, gold = compact_choices(row, texts, gold)
    assert q is not None
    return make_item(row, q, final, gold, context=ctx)


def map_rows(rows: Sequence[Row], parser: Callable[[Row], MCItem], skip_invalid: bool = False) -> list[MCItem]:
    """Apply ``parser`` to every record.

    With ``skip_invalid=False`` the first bad record raises its DatasetError; with True bad
    records are skipped with one warning listing their lines (upstream files such as MWE
    ``coordinate-other-ais`` contain a few unfilled template rows).
    """
    items: list[MCItem] = []
    skipped: list[Row] = []
    for row in rows:
        try:
            items.append(parser(row))
        except DatasetError as exc:
            if not skip_invalid:
                raise DatasetError(f"{exc} (pass skip_invalid=True to skip invalid rows)") from None
            skipped.append(row)
    if skipped:
        shown = ", ".join(str(r.number) for r in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        warnings.warn(
            f"{rows[0].path}: skipped {len(skipped)} invalid record(s) ({skipped[0].unit} {shown})",
            stacklevel=3,
        )
    if not items:
        raise DatasetError(f"{rows[0].path}: no valid records")
    return items


# --------------------------------------------------------------------------- generic loaders


def load_mc_jsonl(
    path: PathLike,
    question: str = "question",
    choices: ChoiceSpec = "choices",
    answer: str = "answer",
    context: str | None = None,
    *,
    answer_format: AnswerFormat = "auto",
    choice_sep: str = "; ",
    skip_invalid: bool = False,
) -> list[MCItem]:
    """Load a JSONL (or JSON-list) file with a field mapping.

    ``question``/``answer``/``context`` name fields (dotted names reach nested objects, e.g.
    ``"question.stem"``). ``choices`` names one list field (strings, ``{"text","label"}`` objects,
    or ``{"text": [...], "label": [...]}``) or a sequence of fields with one choice each.
    ``answer`` may be an index, a label, a letter or the choice text (module docstring).
    """
    return map_rows(
        read_records(path),
        lambda r: generic_row(r, question, choices, answer, context, answer_format, choice_sep),
        skip_invalid,
    )


def load_mc_csv(
    path: PathLike,
    question: Field = "question",
    choices: ChoiceSpec = ("A", "B", "C", "D"),
    answer: Field = "answer",
    context: Field | None = None,
    *,
    header: bool = True,
    answer_format: AnswerFormat = "auto",
    choice_sep: str = "; ",
    skip_invalid: bool = False,
) -> list[MCItem]:
    """Load a CSV file with a column mapping.

    Columns are named by header (``header=True``) or by 0-based position (``header=False``).
    ``choices`` is a sequence of columns with one choice each (empty cells are dropped; letter and
    index answers refer to the column order) or one column holding a list literal or
    ``choice_sep``-separated choices.
    """
    return map_rows(
        read_csv(path, header=header),
        lambda r: generic_row(r, question, choices, answer, context, answer_format, choice_sep),
        skip_invalid,
    )
