"""The prompt whose next token is a behaviour item's answer, and its two candidate answers.

A/B sets: the assistant turn is prefilled with "(" and the candidates are the letters; Yes/No sets: the
assistant turn is empty and the candidates are "Yes" / "No". A raw model (no chat template) gets an
"Answer:" line instead of an assistant turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..data.records import BehaviourItem
from ..encoding import Prompt, format_prompt
from ..engine import ScoringItem, tokenize_items
from ..errors import DatasetError

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def behaviour_prompt(lm: LoadedModel, item: BehaviourItem) -> Prompt:
    """The prompt whose next token is the answer (see the module docstring)."""
    if getattr(lm, "use_chat_template", False):
        return format_prompt(lm, item.question, "(" if item.kind == "ab" else "")
    # A raw model has no assistant turn: open an answer line instead.
    return format_prompt(lm, item.question, "\n\nAnswer: (" if item.kind == "ab" else "\n\nAnswer:")


def behaviour_candidates(lm: LoadedModel, item: BehaviourItem) -> tuple[str, str]:
    """(matching, not matching) continuations: letters after "(", Yes/No opening the assistant turn."""
    if item.kind == "yesno" and not getattr(lm, "use_chat_template", False):
        return " " + item.matching, " " + item.not_matching
    return item.matching, item.not_matching


def scoring_items(lm: LoadedModel,
                  items: Sequence[BehaviourItem], *, allow_multi_token: bool = False) -> list[ScoringItem]:
    """Engine items (matching answer first, target 0) for behaviour items, answers checked.

    Each answer must be one token after its prompt (the score reads one next-token distribution).
    A/B letters always must; Yes/No answers split into several tokens are scored as whole sequences
    (summed log-probabilities, via the engine) only with `allow_multi_token=True`. Otherwise a
    DatasetError names the item, the answer and how the tokenizer splits it.
    """
    if len(items) == 0:
        raise DatasetError("no behaviour items to score")
    out = [ScoringItem(behaviour_prompt(lm, it), behaviour_candidates(lm, it), target=0) for it in items]
    tokenized = tokenize_items(lm, out)
    for it, si, tok in zip(items, out, tokenized):
        for cand, ids in zip(si.candidates, tok.candidate_ids):
            if len(ids) == 1:
                continue
            if it.kind == "yesno" and allow_multi_token:
                continue
            pieces = [lm.tokenizer.decode([i]) for i in ids]
            hint = "" if it.kind == "ab" else " (pass allow_multi_token=True / --allow-multi-token to score whole answers)"
            raise DatasetError(
                f"{it.source} item {it.index}: answer {cand!r} is split by the tokenizer into {len(ids)} tokens "
                f"{pieces!r}; the behaviour score needs the answer as a single next token{hint}"
            )
    return out
