"""Multi-format CAA: one behaviour's MWE items asked as A/B, Yes/No and free text, one direction per
format, combined so that no format's answer tokens dominate.

A CAA vector read at the answer letter of A/B items partly encodes the letter (docs/findings.md);
one read at "Yes"/"No" partly encodes that word. Asking the same items in three formats and
combining their directions keeps what the formats share, the behaviour, and dilutes what is
particular to one format's answer tokens. Every item is reduced to (stem, matching text, other
text): an A/B item's question split into its stem and the two choice texts
(`data.mc_formats.split_ab_question`), a Yes/No item's question with the words "Yes"/"No".

Formats (each a CAA mean difference per layer):
    "ab"     the stem with both texts as choices, in both orders ("(A) m (B) o" and "(A) o (B) m"),
             answered "(A" / "(B"; read at the letter. Both orders of every item put the matching
             answer on A exactly as often as on B, so a pure letter direction cancels.
    "yesno"  A/B items: "would that be your answer?" asked of each choice text, answered Yes / No
             (matching text: Yes is the positive side; other text: No is), so the Yes-vs-No word
             direction cancels; Yes/No items: the MWE question as it is. Read at the answer word.
    "free"   A/B items: the stem answered with each choice text (paired); Yes/No items: the item's
             statement said as a first-person answer, unpaired (statements whose saying matches the
             behaviour vs those whose saying does not). Read as the mean over the response tokens.

Combination: each format's direction is divided by its norm, the unit directions are averaged, and
the average is scaled to the mean of the formats' norms:

    v_L = mean_f(d_f / |d_f|) * mean_f |d_f|

Why: the formats' raw norms differ by several times (a difference at one answer token is much larger
than a mean over a whole response, where most tokens differ little), so a plain average would be
mostly the largest format's direction, and with it its answer tokens. Unit-normalising gives each
format one equal vote on the direction; rescaling keeps the vector's size in the range of the
formats' own CAA vectors, so strengths (and CAE's relative strength r) mean what they mean for CAA.
The per-format norms and the cosines between formats are recorded in the vector's metadata.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from ..activations import capture
from ..data.mc_formats import split_ab_question
from ..data.records import BehaviourItem
from ..encoding import Prompt, format_prompt
from ..errors import DatasetError
from ..vector import SteeringVector, hash_texts
from .caa import mean_difference
from .common import make_meta
from .responses import response_activations

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

FORMATS: tuple[str, ...] = ("ab", "yesno", "free")

#: The user turn under which a Yes/No item's statement is said as a free-text answer.
STATEMENT_QUESTION = "Tell me what you think."


@dataclass(frozen=True)
class MultiformatConfig:
    """How multi-format CAA renders and reads the items.

    Attributes:
        formats: which formats to combine (a subset of `FORMATS`, at least one).
        batch_size: prompts per forward pass.
    """

    formats: tuple[str, ...] = FORMATS
    batch_size: int = 16

    def __post_init__(self) -> None:
        fmts = tuple(self.formats)
        object.__setattr__(self, "formats", fmts)
        bad = [f for f in fmts if f not in FORMATS]
        if bad or not fmts or len(set(fmts)) != len(fmts):
            raise DatasetError(f"formats must be distinct names among {', '.join(FORMATS)}; got {', '.join(fmts) or 'none'}")
        if self.batch_size < 1:
            raise DatasetError("batch_size must be at least 1")


@dataclass(frozen=True)
class ItemTexts:
    """An MWE item reduced to what every format needs.

    Attributes:
        stem: the question without its choices (A/B) or the whole question (Yes/No).
        matching, other: the matching and the other answer's text ("Yes"/"No" for Yes/No items).
        kind: the item's kind ("ab" or "yesno").
        statement: a Yes/No item's statement ("" for A/B items).
    """

    stem: str
    matching: str
    other: str
    kind: str
    statement: str = ""


def item_texts(item: BehaviourItem) -> ItemTexts | None:
    """`item` as `ItemTexts`; None for an A/B item whose choices cannot be found in its question."""
    if item.kind == "yesno":
        statement = item.question.split("\n", 1)[-1].strip().strip('"').strip()
        return ItemTexts(item.question, item.matching, item.not_matching, "yesno", statement)
    parts = split_ab_question(item.question)
    if parts is None:
        return None
    stem, texts, letters = parts
    if item.matching not in letters or item.not_matching not in letters:
        return None
    return ItemTexts(stem, texts[letters.index(item.matching)], texts[letters.index(item.not_matching)], "ab")


def _answer_prompt(lm: LoadedModel, user: str, answer: str) -> Prompt:
    """`answer` opening the assistant turn (a raw model gets an "Answer:" line, as the CAE prompts do)."""
    if getattr(lm, "use_chat_template", False):
        return format_prompt(lm, user, answer)
    return format_prompt(lm, user + "\n\nAnswer: ", answer, chat_template=False)


def ab_question(stem: str, first: str, second: str) -> str:
    """The MWE A/B layout with two choice texts."""
    return f"{stem}\n\nChoices:\n (A) {first}\n (B) {second}"


def yesno_question(stem: str, text: str) -> str:
    """An A/B item's stem with one choice text, asked as a Yes/No question."""
    return f"{stem}\n\nSuppose you answered: \"{text}\"\nWould that be your answer? Answer Yes or No."


@dataclass
class FormatData:
    """One format's contrast: prompts (answer-token formats) or (question, response) texts (free text).

    Attributes:
        name: the format.
        positive, negative: `Prompt`s read at their last token, or (question, response) pairs read over the
            response tokens (`reading` says which).
        paired: positive[i] and negative[i] come from the same item (mean of differences), else mean - mean.
        reading: "last" or "response".
    """

    name: str
    positive: list
    negative: list
    paired: bool
    reading: str


def render_formats(lm: LoadedModel, texts: Sequence[ItemTexts], formats: Sequence[str] = FORMATS) -> list[FormatData]:
    """Each format's contrast for these items (see the module docstring). DatasetError for an empty side."""
    out = []
    for name in formats:
        pos: list = []
        neg: list = []
        paired, reading = True, "last"
        if name == "ab":
            for t in texts:
                for first, second in ((t.matching, t.other), (t.other, t.matching)):
                    q = ab_question(t.stem, first, second)
                    m, o = ("A", "B") if first == t.matching else ("B", "A")
                    pos.append(_answer_prompt(lm, q, f"({m}"))
                    neg.append(_answer_prompt(lm, q, f"({o}"))
        elif name == "yesno":
            for t in texts:
                if t.kind == "yesno":
                    pos.append(_answer_prompt(lm, t.stem, t.matching))
                    neg.append(_answer_prompt(lm, t.stem, t.other))
                    continue
                for text, yes_matches in ((t.matching, True), (t.other, False)):
                    q = yesno_question(t.stem, text)
                    pos.append(_answer_prompt(lm, q, "Yes" if yes_matches else "No"))
                    neg.append(_answer_prompt(lm, q, "No" if yes_matches else "Yes"))
        else:
            reading = "response"
            ab = [t for t in texts if t.kind == "ab"]
            statements = [t for t in texts if t.kind == "yesno"]
            if ab and statements:
                raise DatasetError("free-text format: items mix A/B and Yes/No kinds")
            if ab:
                pos = [(t.stem, t.matching) for t in ab]
                neg = [(t.stem, t.other) for t in ab]
            else:
                paired = False
                pos = [(STATEMENT_QUESTION, t.statement) for t in statements if t.matching == "Yes"]
                neg = [(STATEMENT_QUESTION, t.statement) for t in statements if t.matching == "No"]
        if not pos or not neg:
            raise DatasetError(f"format {name!r} has no {'positive' if not pos else 'negative'} examples: the free-text "
                               "format of Yes/No items needs statements of both labels")
        out.append(FormatData(name, pos, neg, paired, reading))
    return out


def format_direction(positive: torch.Tensor, negative: torch.Tensor, paired: bool) -> torch.Tensor:
    """A format's CAA direction: mean of differences (paired) or difference of means (unpaired)."""
    if paired:
        return mean_difference(positive, negative)
    return (positive.double().mean(0) - negative.double().mean(0)).float()


def combine_directions(directions: Sequence[torch.Tensor]) -> torch.Tensor:
    """mean_f(d_f / |d_f|) * mean_f |d_f| (see the module docstring). DatasetError for a zero direction."""
    norms = [float(d.double().norm()) for d in directions]
    if any(n == 0.0 for n in norms):
        raise DatasetError("a format's direction is exactly zero (its two sides read identical activations)")
    unit = torch.stack([d.double() / n for d, n in zip(directions, norms)]).mean(0)
    return (unit * (sum(norms) / len(norms))).float()


def _activations(lm: LoadedModel, data: FormatData, layers: Sequence[int], batch_size: int, progress: bool):
    if data.reading == "response":
        pos = response_activations(lm, data.positive, layers, batch_size=batch_size, progress=progress)
        neg = response_activations(lm, data.negative, layers, batch_size=batch_size, progress=progress)
        return pos, neg
    acts = capture(lm, data.positive + data.negative, layers, "last", batch_size=batch_size, progress=progress)
    n = len(data.positive)
    return {l: a[:n] for l, a in acts.items()}, {l: a[n:] for l, a in acts.items()}


@dataclass
class MultiformatResult:
    """The combined vector and each format's own direction ({format: {layer: [hidden]}})."""

    vector: SteeringVector
    directions: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)


def train_multiformat_detailed(lm: LoadedModel, items: Sequence[BehaviourItem], layers: Sequence[int] | None = None,
                               config: MultiformatConfig | None = None, *, progress: bool = False) -> MultiformatResult:
    """`train_multiformat`, also returning each format's direction."""
    config = config or MultiformatConfig()
    if len(items) == 0:
        raise DatasetError("no behaviour items given: the training set is empty")
    texts = [item_texts(it) for it in items]
    kept = [t for t in texts if t is not None]
    if not kept:
        raise DatasetError(f"{items[0].source}: no item's choices could be read from its question")
    layers = list(range(lm.n_layers)) if layers is None else [lm.blocks.check_layer(l) for l in layers]
    per_format: dict[str, dict[int, torch.Tensor]] = {}
    counts = {}
    for data in render_formats(lm, kept, config.formats):
        pos, neg = _activations(lm, data, layers, config.batch_size, progress)
        per_format[data.name] = {l: format_direction(pos[l], neg[l], data.paired) for l in layers}
        counts[data.name] = [len(data.positive), len(data.negative)]
    directions = {l: combine_directions([per_format[f][l] for f in config.formats]) for l in layers}
    norms = {f: {str(l): round(float(d[l].norm()), 5) for l in layers} for f, d in per_format.items()}
    cosines = {f"{a}~{b}": {str(l): round(float(torch.nn.functional.cosine_similarity(per_format[a][l], per_format[b][l], dim=0)), 4)
                            for l in layers}
               for a, b in itertools.combinations(config.formats, 2)}
    data_hash = hash_texts(x for t in kept for x in (t.stem, t.matching, t.other))
    meta = make_meta(lm, method="multiformat", layers=layers, position="multiformat", data_hash=data_hash,
                     n_train=len(kept), formats=list(config.formats), format_counts=counts,
                     skipped_items=len(items) - len(kept), format_norms=norms, format_cosines=cosines,
                     combination="mean of unit per-format directions, scaled to the mean per-format norm")
    return MultiformatResult(SteeringVector(directions, meta), per_format)


def train_multiformat(lm: LoadedModel, items: Sequence[BehaviourItem], layers: Sequence[int] | None = None,
                      config: MultiformatConfig | None = None, *, progress: bool = False) -> SteeringVector:
    """A multi-format CAA vector from MWE behaviour items (see the module docstring).

    Args:
        items: the behaviour's training items (A/B or Yes/No; A/B items whose choices cannot be read from
            the question are skipped and counted in the metadata's `skipped_items`).
        layers: layers to build directions for (default: every layer).
        config: formats and batch size.
    """
    return train_multiformat_detailed(lm, items, layers, config, progress=progress).vector
