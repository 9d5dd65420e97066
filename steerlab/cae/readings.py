"""Contrast-pair activations of behaviour items for training, read where `READINGS` says."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..data.mwe import recast_ab
from ..data.records import BehaviourItem, ContrastPair
from ..encoding import format_prompt
from ..engine import PairActivations, extract_pair_activations
from ..errors import SteerlabError
from .strengths import pair_residual_norms

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

#: How a contrast pair's activations are read for training (`reading_activations`):
#: "answer"  the answer token itself ("Yes"/"No" opening the assistant turn; "A"/"B" after "(");
#: "turn"    the mean over the answer turn as the chat template closes it (the answer token and the
#:           end-of-turn token; the header tokens before it are the same on both sides);
#: "end"     the end-of-turn token after the answer (it has read the answer but is not its token);
#: "ab"      Yes/No items recast as CAA's A/B format (`data.mwe.recast_ab`), read at the letter.
#: (The token *before* the answer is not offered: a causal model has not seen the answer there, so
#: both sides are identical and the difference is exactly zero; tests/test_yesno_hand.py.)
READINGS: tuple[str, ...] = ("answer", "turn", "end", "ab")

#: The reading used for Yes/No sets when none is asked for (chosen from the comparison in
#: docs/findings.md, "Yes/No behaviours: which reading steers as trained").
DEFAULT_YESNO_READING = "answer"


def default_reading(kind: str) -> str:
    """The training reading for items of `kind` when none is given: A/B sets are read at the letter."""
    return DEFAULT_YESNO_READING if kind == "yesno" else "answer"


def closing_text(lm: LoadedModel, answer: str = "Yes") -> str:
    """What the chat template writes after an assistant message (e.g. "<|im_end|>"), trailing space cut.

    "" for a model without a chat template (the answer then simply ends the text).
    """
    if not getattr(lm, "use_chat_template", False):
        return ""
    head = format_prompt(lm, "Q?", "").text
    full = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}],
                                            tokenize=False)
    at = full.find(answer, len(head) - 1 if full.startswith(head) else 0)
    if at < 0:
        raise SteerlabError("cannot find where the chat template closes an assistant turn")
    return full[at + len(answer):].rstrip()


def reading_items(items: Sequence[BehaviourItem], reading: str, seed: int = 0) -> list[BehaviourItem]:
    """The items in the format a reading trains and scores on: A/B recast for "ab", unchanged otherwise."""
    if reading not in READINGS:
        raise SteerlabError(f"unknown reading '{reading}': choose one of {', '.join(READINGS)}")
    return recast_ab(items, seed) if reading == "ab" else list(items)


def train_activations(lm: LoadedModel, train: Sequence[BehaviourItem], layers: Sequence[int], *, batch_size: int = 16,
                      progress: bool = False) -> PairActivations:
    """Contrast-pair activations of the training items at `layers`, read at the answer (prefix-shared extraction)."""
    return extract_pair_activations(lm, [it.to_pair() for it in train], list(layers), batch_size=batch_size,
                                    progress=progress)


def reading_activations(lm: LoadedModel,
                        items: Sequence[BehaviourItem], layers: Sequence[int], reading: str | None = None, *,
                        seed: int = 0, batch_size: int = 16, progress: bool = False):
    """(pair activations at `reading`, residual norms) of the training items (see `READINGS`).

    `reading=None` takes `default_reading` of the items' kind.
    The norms, for relative strengths, are always the mean ||h_L|| at the answer token of the items'
    own format (the "answer" reading), so a relative strength means the same push whatever the reading.
    "turn" and "end" need Yes/No items (A/B answers already carry the letter's meaning).
    """
    if reading is None:
        reading = default_reading(items[0].kind if items else "yesno")
    train = reading_items(items, reading, seed)
    answer = train_activations(lm, train, layers, batch_size=batch_size, progress=progress)
    norms = pair_residual_norms(answer)
    if reading in ("answer", "ab"):
        return answer, norms
    if any(it.kind != "yesno" for it in train):
        raise SteerlabError(f"reading '{reading}' is for Yes/No items; A/B items are read at the letter ('answer')")
    close = closing_text(lm)
    if not close:
        raise SteerlabError(f"reading '{reading}' needs a chat template that closes the assistant turn")
    pairs = [ContrastPair(it.question, it.matching + close, it.not_matching + close) for it in train]
    end = extract_pair_activations(lm, pairs, list(layers), batch_size=batch_size, progress=progress)
    if reading == "end":
        return end, norms
    mean = {side: {l: (getattr(answer, side)[l] + getattr(end, side)[l]) / 2 for l in answer.layers}
            for side in ("positive", "negative")}
    return PairActivations(answer.pairs, answer.layers, mean["positive"], mean["negative"],
                           {"reading": "turn", "answer": answer.info, "end": end.info}), norms
