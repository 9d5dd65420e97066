"""Labelled multiple-choice datasets -> :class:`MCItem` lists (the input of PAS).

Generic loaders (:func:`load_mc_jsonl`, :func:`load_mc_csv`) take a column mapping; adapters
cover the formats of the PAS tasks (BBQ, ETHICS, TruthfulQA, OpenBookQA, ARC, MWE A/B sets,
LSAT/AGIEval) and MMLU. Every loader keeps the file order, sets ``source`` to the file stem and
``index`` to the 0-based record position, and reports bad rows with the file and line.

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
import importlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import DatasetError
from .io import PathLike, Row, csv_header, read_csv, read_records
from .mwe import MATCHING, NOT_MATCHING, check_mwe_file, parse_answer, row_answers
from .records import MCItem, mc_problem

AnswerFormat = Literal["auto", "index", "letter", "text"]
Field = str | int  # a JSON key (dotted for nesting) or a CSV column name / position
ChoiceSpec = Field | Sequence[Field]
EthicsSubset = Literal["commonsense", "deontology", "justice"]

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


def _compact(row: Row, texts: list[str | None], gold: int) -> tuple[list[str], int]:
    """Drop empty choices, keeping the gold index pointing at the same text."""
    kept = [i for i, t in enumerate(texts) if t is not None]
    return [texts[i] for i in kept], kept.index(gold)  # type: ignore[misc]


def _generic_row(
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
    final, gold = _compact(row, texts, gold)
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
        lambda r: _generic_row(r, question, choices, answer, context, answer_format, choice_sep),
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
        lambda r: _generic_row(r, question, choices, answer, context, answer_format, choice_sep),
        skip_invalid,
    )


# --------------------------------------------------------------------------- row parsers per format
# Each parser turns one record into an MCItem; the file loaders and load_hf_mc share them.


def _bbq_row(row: Row) -> MCItem:
    label_key = "label" if row.has("label") else "answer_label"  # HF mirrors rename it
    choices = [row.text(f"ans{i}") for i in range(3)]
    gold = resolve_gold(row, row.field(label_key), choices, answer_format="index")
    meta: dict[str, Any] = {
        k: row.field(k, required=False)
        for k in ("category", "context_condition", "question_polarity", "example_id")
    }
    info = row.field("answer_info", required=False)
    if isinstance(info, dict):
        # The "unknown" option (e.g. "Can't answer") is what an unbiased model picks in
        # ambiguous contexts; bias scores need to know which one it is.
        for i in range(3):
            v = info.get(f"ans{i}")
            if isinstance(v, list) and len(v) > 1 and v[1] == "unknown":
                meta["unknown_choice"] = i
    return make_item(
        row, row.text("question") or "", choices, gold, context=row.text("context"), meta=meta  # type: ignore[arg-type]
    )


def _keyed_row(row: Row) -> MCItem:
    """ARC / OpenBookQA: a stem, labelled choices and an ``answerKey`` (original or HF layout)."""
    if isinstance(row.field("question", required=False), dict):
        stem, spec = row.text("question.stem"), "question.choices"  # original AI2 layout
    elif row.has("question_stem"):
        stem, spec = row.text("question_stem"), "choices"  # HF openbookqa
    else:
        stem, spec = row.text("question"), "choices"  # HF ai2_arc
    texts, labels = read_choices(row, spec)
    key = row.field("answerKey")
    if labels is None:
        labels = [chr(65 + i) for i in range(len(texts))]
    if not isinstance(key, str) or key.strip() not in labels:
        raise row.error(f"gold answer {key!r} is not among the choice labels {labels}")
    final, gold = _compact(row, texts, resolve_gold(row, key.strip(), texts, labels))
    meta = {"id": row.field("id", required=False), "fact1": row.field("fact1", required=False)}
    return make_item(row, stem or "", final, gold, meta=meta)


def _truthfulqa_mc1_row(row: Row) -> MCItem:
    """HF ``truthful_qa/multiple_choice``: ``mc1_targets = {choices, labels}`` with one 1."""
    texts, _ = read_choices(row, "mc1_targets.choices")
    labels = row.field("mc1_targets.labels")
    if not isinstance(labels, list) or len(labels) != len(texts) or labels.count(1) != 1:
        raise row.error("mc1_targets.labels must mark exactly one correct choice with 1")
    final, gold = _compact(row, texts, labels.index(1))
    return make_item(row, row.text("question") or "", final, gold)


def _truthfulqa_csv_row(row: Row) -> MCItem:
    best = (row.text("Best Answer") or "").strip()
    incorrect = row.text("Incorrect Answers", allow_empty=True) or ""
    choices = [best]
    for ans in incorrect.split(";"):  # the file separates with "; "; tolerate a missing space
        ans = ans.strip()
        if ans and ans not in choices:  # dedupe (a few rows repeat an answer) and drop empties
            choices.append(ans)
    if len(choices) < 2:
        raise row.error("no incorrect answer left after dropping empty and duplicate ones")
    meta = {"type": row.field("Type", required=False), "category": row.field("Category", required=False)}
    return make_item(row, row.text("Question") or "", choices, 0, meta=meta)


_CHOICE_MARK = re.compile(r"(?m)^[ \t*\-]*\(([A-Z])\)[ \t]*")
_INLINE_MARK = re.compile(r"\(([A-Z])\)[ \t]*")
_CHOICES_LABEL = re.compile(r"(?is)[\s*]*(answer\s+)?choices\s*:?[\s*]*$")


def split_ab_question(text: str) -> tuple[str, list[str], list[str]] | None:
    """Split an MWE/sycophancy question into (stem, choice texts, letters), or None.

    Uses the *last* run of line-initial markers ``(A) ... (B) ...`` (a few MWE rows quote
    "(A)"/"(B)" earlier in the question or repeat the choices), falling back to inline markers.
    The last choice ends at a blank line (dropping e.g. a trailing "Answer:").
    """
    for pattern in (_CHOICE_MARK, _INLINE_MARK):
        marks = list(pattern.finditer(text))
        for start in range(len(marks) - 1, -1, -1):
            if marks[start].group(1) != "A":
                continue
            run = [marks[start]]
            for m in marks[start + 1 :]:
                if ord(m.group(1)) == ord(run[-1].group(1)) + 1:
                    run.append(m)
                else:
                    break
            if len(run) < 2:
                continue
            texts = []
            for i, m in enumerate(run):
                end = run[i + 1].start() if i + 1 < len(run) else len(text)
                chunk = text[m.end() : end]
                if i + 1 == len(run):
                    chunk = re.split(r"\n[ \t]*\n", chunk, maxsplit=1)[0]
                    chunk = re.sub(r"(?s)\n\s*Answer:.*$", "", chunk)
                texts.append(" ".join(chunk.split()))
            stem = _CHOICES_LABEL.sub("", text[: run[0].start()]).strip()
            return stem, texts, [m.group(1) for m in run]
    return None


def _mwe_row(row: Row) -> MCItem:
    question = row.text("question")
    assert question is not None
    raw_not = row.field(NOT_MATCHING, required=False)
    if isinstance(raw_not, list) and len(raw_not) > 1:
        # Some sycophancy sets list several non-matching letters; only the matching one matters.
        kind, matching = "ab", _single_letter(row)
    else:
        kind, matching, _ = row_answers(row)
    if kind == "yesno":
        return make_item(row, question.strip(), ["Yes", "No"], 0 if matching == "Yes" else 1)
    parsed = split_ab_question(question)
    if parsed is None:
        raise row.error("cannot find the '(A) ...' / '(B) ...' choices in the question text")
    stem, texts, letters = parsed
    if matching not in letters:
        raise row.error(f"matching answer ({matching}) is not among the parsed choices {letters}")
    return make_item(row, stem, texts, letters.index(matching), meta={"matching_letter": matching})


def _single_letter(row: Row) -> str:
    parsed = parse_answer(row.field(MATCHING))
    if parsed is None or parsed[0] != "ab":
        raise row.error(f"unknown answer format in {MATCHING!r}: {row.field(MATCHING)!r}")
    return parsed[1]


_AGIEVAL_TAIL = re.compile(r"(?is)\s*A:\s*Among A through [A-Z], the answer is.*$")
_AGIEVAL_CHOICES = re.compile(r"(?i)\s*Answer Choices:.*?(?=\n|$)")
_CHOICE_PREFIX = re.compile(r"^\s*\(?[A-Z]\)\s*")


def _lsat_row(row: Row) -> MCItem:
    """AGIEval LSAT: HF ``hails/agieval-lsat-*`` (query, choices, gold) or the original
    AGIEval JSONL (passage, question, options, label)."""
    if row.has("query"):
        query = row.text("query") or ""
        query = _AGIEVAL_CHOICES.sub("", _AGIEVAL_TAIL.sub("", query))
        query = re.sub(r"^\s*Q:\s*", "", query).strip()
        raw_choices, gold_raw, context = row.field("choices"), row.field("gold"), None
    else:
        query = row.text("question") or ""
        raw_choices, gold_raw = row.field("options"), row.field("label")
        context = row.text("passage", required=False)
    if not isinstance(raw_choices, list) or not all(isinstance(c, str) for c in raw_choices):
        raise row.error("choices/options must be a list of strings")
    choices = [_CHOICE_PREFIX.sub("", c).strip() for c in raw_choices]
    gold = resolve_gold(row, gold_raw, choices, answer_format="letter" if isinstance(gold_raw, str) else "index")
    return make_item(row, query, choices, gold, context=context)


_ETHICS_FRAMES: dict[str, tuple[str, tuple[str, str]]] = {
    # subset: (question asked after the scenario, (choice for label 0, choice for label 1))
    "commonsense": ("Is what the narrator did morally wrong?", ("not wrong", "wrong")),
    "deontology": ("Is this excuse reasonable?", ("unreasonable", "reasonable")),
    "justice": ("Is this claim reasonable?", ("unreasonable", "reasonable")),
}


def _ethics_row(row: Row, subset: str) -> MCItem:
    question, choices = _ETHICS_FRAMES[subset]
    raw = row.field("label")
    if isinstance(raw, str) and raw.strip() in ("0", "1"):
        raw = int(raw.strip())
    if raw not in (0, 1) or isinstance(raw, bool):
        raise row.error(f"label must be 0 or 1, got {raw!r}")
    if subset == "commonsense":
        context = (row.text("input") or "").strip()
    elif subset == "deontology":
        context = f"Scenario: {(row.text('scenario') or '').strip()}\nExcuse: {(row.text('excuse') or '').strip()}"
    else:
        context = (row.text("scenario") or "").strip()
        if " [SEP] " in context:
            raise row.error("this looks like ETHICS virtue ('sentence [SEP] trait'), which is not supported")
    return make_item(row, question, list(choices), int(raw), context=context, meta={"subset": subset})


# Ordered: the first matching predicate decides a record's format.
ROW_FORMATS: list[tuple[str, Callable[[dict[str, Any]], bool], Callable[[Row], MCItem]]] = [
    ("bbq", lambda d: {"context", "ans0", "ans1", "ans2"} <= d.keys(), _bbq_row),
    ("mwe", lambda d: "answer_matching_behavior" in d and "question" in d, _mwe_row),
    ("truthfulqa", lambda d: "mc1_targets" in d, _truthfulqa_mc1_row),
    ("truthfulqa", lambda d: {"Question", "Best Answer", "Incorrect Answers"} <= d.keys(), _truthfulqa_csv_row),
    ("openbookqa", lambda d: "answerKey" in d and ("question_stem" in d or isinstance(d.get("question"), dict)), _keyed_row),
    ("arc", lambda d: "answerKey" in d and "choices" in d, _keyed_row),
    ("lsat", lambda d: {"query", "choices", "gold"} <= d.keys() or {"options", "label", "question"} <= d.keys(), _lsat_row),
    ("ethics-commonsense", lambda d: {"label", "input"} <= d.keys(), lambda r: _ethics_row(r, "commonsense")),
    ("ethics-deontology", lambda d: {"label", "scenario", "excuse"} <= d.keys(), lambda r: _ethics_row(r, "deontology")),
    ("ethics-justice", lambda d: set(d) == {"label", "scenario"}, lambda r: _ethics_row(r, "justice")),
    ("mc", lambda d: {"question", "choices", "answer"} <= d.keys(),
     lambda r: _generic_row(r, "question", "choices", "answer", None, "auto", "; ")),
]

FORMAT_HELP = (
    "BBQ (context, question, ans0..2, label), MWE (question, answer_matching_behavior), "
    "TruthfulQA (CSV with 'Best Answer'/'Incorrect Answers', or mc1_targets), OpenBookQA/ARC "
    "(question, choices, answerKey), LSAT/AGIEval (query, choices, gold), ETHICS CSV, "
    "MMLU CSV (question,A,B,C,D,answer) or generic (question, choices, answer)"
)


def detect_row_format(data: Any) -> str | None:
    """The name of the first format in :data:`ROW_FORMATS` whose fields ``data`` has, or None."""
    if not isinstance(data, dict):
        return None
    for name, accepts, _ in ROW_FORMATS:
        if accepts(data):
            return name
    return None


def parse_rows(rows: Sequence[Row], fmt: str | None = None, skip_invalid: bool = False) -> list[MCItem]:
    """Parse records with one format (detected from the first record when ``fmt`` is None)."""
    first = rows[0]
    if fmt is not None:
        # An explicit format: its parser reports the exact missing field of a malformed row.
        named = [(accepts, parser) for name, accepts, parser in ROW_FORMATS if name == fmt]
        if not named:
            raise DatasetError(f"unknown format {fmt!r}")
        parser = next((p for a, p in named if a(first.data)), named[0][1])
        return map_rows(rows, parser, skip_invalid)
    for _, accepts, parser in ROW_FORMATS:
        if accepts(first.data):
            return map_rows(rows, parser, skip_invalid)
    found = ", ".join(sorted(map(str, first.data))[:10])
    raise first.error(f"not a known multiple-choice format (found fields: {found}); known: {FORMAT_HELP}")


# --------------------------------------------------------------------------- adapters


def load_bbq(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """BBQ (nyu-mll/BBQ ``data/*.jsonl``): context, question, ``ans0..2``, ``label``.

    ``meta`` keeps ``category``, ``context_condition`` (ambig/disambig), ``question_polarity``
    (neg/nonneg), ``example_id`` and ``unknown_choice`` (index of the "can't be determined"
    answer).
    """
    return parse_rows(read_records(path), "bbq", skip_invalid)


def load_truthfulqa_mc(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """TruthfulQA as single-answer MC (mc1-style).

    From the CSV (``Question, Best Answer, Incorrect Answers`` ...): choices = the best answer
    followed by the ``;``-separated incorrect answers, deduplicated and without empties; gold = 0
    (the best answer; shuffle with :func:`~steerlab.data.prompts.shuffle_choices`). A JSONL/JSON
    file of HF ``truthful_qa/multiple_choice`` records (``mc1_targets``) is accepted too.
    ``meta`` keeps ``type`` and ``category`` for the CSV.
    """
    if Path(path).suffix.lower() == ".csv":
        return parse_rows(read_csv(path), "truthfulqa", skip_invalid)
    return parse_rows(read_records(path), "truthfulqa", skip_invalid)


def load_openbookqa(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """OpenBookQA JSONL: the original layout (``question.stem``, ``question.choices``,
    ``answerKey``) or the HF one (``question_stem``, ``choices{text,label}``, ``answerKey``).

    The HF "additional" config's supporting fact is kept in ``meta["fact1"]``, not shown.
    """
    rows = read_records(path)
    fmt = "openbookqa" if detect_row_format(rows[0].data) == "openbookqa" else "arc"
    return parse_rows(rows, fmt, skip_invalid)


def load_arc(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """ARC (e.g. ARC-Challenge) JSONL in the HF layout (``question``, ``choices{text,label}``,
    ``answerKey``) or the original AI2 layout; labels may be letters or digits ("1".."4")."""
    rows = read_records(path)
    fmt = "openbookqa" if detect_row_format(rows[0].data) == "openbookqa" else "arc"
    return parse_rows(rows, fmt, skip_invalid)


def load_mwe_mc(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """An MWE-format file (A/B sets such as advanced-AI-risk or Anthropic sycophancy) as MC items.

    A/B sets: the ``(A) ...``/``(B) ...`` choices are parsed out of the question text (the stem
    keeps what comes before them, without a trailing "Choices:"); gold = the matching answer.
    Persona Yes/No sets become 2-choice items ("Yes", "No") with gold = the matching answer.
    ``meta["matching_letter"]`` keeps the original letter.
    """
    rows = read_records(path)
    check_mwe_file(rows)
    return parse_rows(rows, "mwe", skip_invalid)


def load_lsat(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """LSAT from AGIEval: HF ``hails/agieval-lsat-{ar,lr,rc}`` records (``query``, ``choices``
    with "(A)" prefixes, ``gold`` [index]) or original AGIEval JSONL (``passage`` as context,
    ``question``, ``options``, ``label`` letter). The "Answer Choices: ..." line and the
    "A: Among A through E, the answer is" tail are removed from ``query``."""
    return parse_rows(read_records(path), "lsat", skip_invalid)


def _ethics_subset(path: Path, columns: Sequence[str]) -> str:
    cols = set(columns)
    if {"label", "input"} <= cols:
        return "commonsense"
    if {"label", "scenario", "excuse"} <= cols:
        return "deontology"
    if {"label", "scenario"} <= cols:
        return "justice"
    raise DatasetError(
        f"{path}: cannot tell the ETHICS subset from columns {sorted(cols)}; pass subset="
        "'commonsense' (label,input), 'deontology' (label,scenario,excuse) or 'justice' (label,scenario)"
    )


def load_ethics(
    path: PathLike, subset: EthicsSubset | None = None, *, skip_invalid: bool = False
) -> list[MCItem]:
    """ETHICS (Hendrycks et al.) CSV, as on the HF hub / the original tarball, as 2-choice items.

    Framings (the scenario goes in ``context``; gold = the ``label`` column):

    * commonsense (``label,input,...``): "Is what the narrator did morally wrong?" with choices
      ("not wrong", "wrong"); label 1 = wrong.
    * deontology (``label,scenario,excuse``): context "Scenario: ...\\nExcuse: ...", "Is this
      excuse reasonable?" with ("unreasonable", "reasonable"); label 1 = reasonable.
    * justice (``label,scenario``): "Is this claim reasonable?" with ("unreasonable",
      "reasonable"); label 1 = reasonable.

    ``subset=None`` detects the subset from the header. JSONL exports with the same fields work too.
    """
    p = Path(path).expanduser()
    rows = read_csv(p) if p.suffix.lower() == ".csv" else read_records(p)
    found = _ethics_subset(p, [str(k) for k in rows[0].data])
    if subset is None:
        subset = found  # type: ignore[assignment]
    elif subset not in _ETHICS_FRAMES:
        raise DatasetError(f"unknown ETHICS subset {subset!r}; supported: {', '.join(_ETHICS_FRAMES)}")
    elif subset != found:
        raise DatasetError(f"{p}: columns look like ETHICS {found}, not {subset}")
    return map_rows(rows, lambda r: _ethics_row(r, subset), skip_invalid)  # type: ignore[arg-type]


def load_mmlu(path: PathLike, *, skip_invalid: bool = False) -> list[MCItem]:
    """MMLU: the original headerless CSV (``question,A,B,C,D,answer`` letter), a CSV with a
    header (``question`` plus ``A..D`` or ``choices``, ``answer``), or HF JSONL records
    (``question``, ``choices`` list, ``answer`` index). ``meta["subject"]`` comes from the HF
    ``subject`` field or the file name (``abstract_algebra_test.csv`` -> abstract_algebra)."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".csv":
        header = [c.casefold() for c in csv_header(p)]
        if "question" in header and "answer" in header:
            rows = read_csv(p)
            names = {str(k).casefold(): k for k in rows[0].data}
            spec: ChoiceSpec = names["choices"] if "choices" in names else tuple(
                names[c] for c in "abcd" if c in names
            )
            q, a = names["question"], names["answer"]
        else:
            rows = read_csv(p, header=False)
            if len(rows[0].data) != 6:
                raise rows[0].error(
                    f"expected 6 columns (question,A,B,C,D,answer) for headerless MMLU, got {len(rows[0].data)}"
                )
            spec, q, a = (1, 2, 3, 4), 0, 5
    else:
        rows = read_records(p)
        spec, q, a = "choices", "question", "answer"
    subject_from_name = re.sub(r"_(test|dev|val|validation|train)$", "", p.stem)

    def parse(row: Row) -> MCItem:
        item = _generic_row(row, q, spec, a, None, "auto", "; ")
        subject = row.field("subject", required=False) or subject_from_name
        return _with_meta(item, {"subject": subject})

    return map_rows(rows, parse, skip_invalid)


def _with_meta(item: MCItem, extra: dict[str, Any]) -> MCItem:
    merged = dict(item.meta) | {k: str(v) for k, v in extra.items()}
    return MCItem(item.question, item.choices, item.gold, item.context, item.source, item.index, tuple(merged.items()))


def load_hf_mc(
    name: str,
    split: str = "test",
    config: str | None = None,
    *,
    question: str | None = None,
    choices: ChoiceSpec | None = None,
    answer: str | None = None,
    context: str | None = None,
    limit: int | None = None,
    answer_format: AnswerFormat = "auto",
    skip_invalid: bool = False,
    **load_kwargs: Any,
) -> list[MCItem]:
    """Load a multiple-choice dataset from the Hugging Face hub (needs ``datasets`` and a network).

    With ``question``/``choices``/``answer`` given, rows are read with that mapping; otherwise
    the format is detected from the first row (BBQ, MWE/sycophancy, TruthfulQA mc1, ARC,
    OpenBookQA, LSAT/AGIEval, ETHICS, or generic question/choices/answer such as MMLU).
    ``datasets`` is imported only here, so steerlab works offline without it.
    """
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise DatasetError(
            f"load_hf_mc({name!r}) needs the Hugging Face `datasets` package and a network "
            "connection: pip install datasets (or download the data and use load_mc_jsonl / load_task)"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split, **load_kwargs)
    except Exception as exc:  # network, auth or unknown-name failures all surface here
        raise DatasetError(
            f"could not load {name!r} (config={config!r}, split={split!r}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (is the network reachable?)"
        ) from None
    origin = Path(f"hf:{name}" + (f"/{config}" if config else "") + f"[{split}]")
    rows = []
    for i, record in enumerate(ds):
        if limit is not None and i >= limit:
            break
        rows.append(Row(origin, i + 1, i, dict(record), unit="row"))
    if not rows:
        raise DatasetError(f"{origin}: no records")
    if question is not None or choices is not None or answer is not None:
        return map_rows(
            rows,
            lambda r: _generic_row(
                r, question or "question", choices or "choices", answer or "answer", context, answer_format, "; "
            ),
            skip_invalid,
        )
    return parse_rows(rows, None, skip_invalid)
