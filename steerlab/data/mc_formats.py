"""Multiple-choice dataset formats -> :class:`MCItem` lists: one row parser per format, format detection,
and a file loader per format (BBQ, ETHICS, TruthfulQA, OpenBookQA, ARC, MWE A/B sets, LSAT/AGIEval,
MMLU) plus Hugging Face datasets (:func:`load_hf_mc`).

Built on the blocks of :mod:`steerlab.data.mc` (items, gold answers, choices); gold answers are read
as documented there.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import DatasetError
from .io import PathLike, Row, csv_header, read_csv, read_records
from .mc import (
    AnswerFormat,
    ChoiceSpec,
    compact_choices,
    generic_row,
    make_item,
    map_rows,
    read_choices,
    resolve_gold,
)
from .mwe import MATCHING, NOT_MATCHING, check_mwe_file, parse_answer, row_answers
from .records import MCItem

EthicsSubset = Literal["commonsense", "deontology", "justice"]

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
    final, gold = compact_choices(row, texts, resolve_gold(row, key.strip(), texts, labels))
    meta = {"id": row.field("id", required=False), "fact1": row.field("fact1", required=False)}
    return make_item(row, stem or "", final, gold, meta=meta)


def _truthfulqa_mc1_row(row: Row) -> MCItem:
    """HF ``truthful_qa/multiple_choice``: ``mc1_targets = {choices, labels}`` with one 1."""
    texts, _ = read_choices(row, "mc1_targets.choices")
    labels = row.field("mc1_targets.labels")
    if not isinstance(labels, list) or len(labels) != len(texts) or labels.count(1) != 1:
        raise row.error("mc1_targets.labels must mark exactly one correct choice with 1")
    final, gold = compact_choices(row, texts, labels.index(1))
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
     lambda r: generic_row(r, "question", "choices", "answer", None, "auto", "; ")),
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
        item = generic_row(row, q, spec, a, None, "auto", "; ")
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
            lambda r: generic_row(
                r, question or "question", choices or "choices", answer or "answer", context, answer_format, "; "
            ),
            skip_invalid,
        )
    return parse_rows(rows, None, skip_invalid)
