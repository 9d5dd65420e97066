"""Where an EPO sequence goes: target items (ids before and after the inserted sequence, the scored answer).

`behaviour_targets` rewards the not-matching answer of MWE behaviour items (reversing a behaviour),
`string_target` any string after a prompt; `split_prompt` cuts a formatted prompt where the sequence
goes and `insert_text` inserts a sequence as text (how a user would paste it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..data.records import BehaviourItem
from ..encoding import _char_to_token, format_prompt
from ..errors import SteerlabError

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

Placement = str  # "suffix" | "prefix"
PLACEMENTS: tuple[str, ...] = ("suffix", "prefix")
_MARK = "\ue000EPO\ue000"  # stands for the sequence while the template is applied; never tokenized


@dataclass(frozen=True)
class TargetItem:
    """One prompt an attack acts on, as token ids around the inserted sequence.

    The model sees `head_ids + sequence + tail_ids` as the prompt, then `answer_ids` (scored by
    teacher forcing).

    Attributes:
        head_ids: prompt ids before the sequence (template header, and the user's text for a suffix).
        tail_ids: prompt ids after the sequence, up to the end of the prompt (e.g. the end of the
            user turn, the assistant header and an assistant prefix such as "(").
        answer_ids: the continuation whose log-probability is the target (e.g. the not-matching letter).
        alternatives: first tokens of every answer option (e.g. the ids of "A" and "B"), used when the
            target is normalised; empty otherwise.
        user_start: token index (within the prompt) of the first token of the user's text.
        assistant_start: token index within `tail_ids` where the assistant turn starts
            (len(tail_ids) when the prompt ends exactly there).
        label: free text for reports (e.g. "power-seeking-inclination#17").
        user_end: token index within `tail_ids` of the first token after the user's text (the
            end-of-turn token with a chat template), where "after_user" steering starts; defaults
            to `assistant_start`.
    """

    head_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    alternatives: tuple[int, ...] = ()
    user_start: int = 0
    assistant_start: int = 0
    label: str = ""
    user_end: int | None = None

    def __post_init__(self) -> None:
        if self.user_end is None:
            object.__setattr__(self, "user_end", self.assistant_start)
        for name in ("head_ids", "tail_ids", "answer_ids", "alternatives"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(int(t) for t in value))
        if not self.answer_ids:
            raise SteerlabError(f"target item {self.label or ''}: the target continuation is empty".replace("  ", " "))
        if not self.head_ids:
            raise SteerlabError("target item: nothing precedes the sequence (the prompt needs at least one token before it)")
        if self.alternatives and self.answer_ids[0] not in self.alternatives:
            raise SteerlabError("target item: the answer's first token is not among the alternatives")
        if not 0 <= self.assistant_start <= len(self.tail_ids):
            raise SteerlabError(f"target item: assistant_start {self.assistant_start} outside the tail")
        if not 0 <= self.user_end <= self.assistant_start:
            raise SteerlabError(f"target item: user_end {self.user_end} outside the tail or after the assistant turn")

    def prompt_length(self, seq_len: int) -> int:
        """Tokens of the prompt with a sequence of `seq_len` tokens inserted."""
        return len(self.head_ids) + seq_len + len(self.tail_ids)

    def total_length(self, seq_len: int) -> int:
        """Tokens the model sees: the prompt plus the scored continuation."""
        return self.prompt_length(seq_len) + len(self.answer_ids)


@dataclass(frozen=True)
class PromptSplit:
    """A formatted prompt cut where the sequence goes: texts and ids on both sides."""

    head_text: str
    tail_text: str
    head_ids: tuple[int, ...]
    tail_ids: tuple[int, ...]
    user_start: int
    assistant_start: int
    user_end: int


def insert_text(question: str, sequence_text: str, placement: Placement = "suffix", separator: str = "\n") -> str:
    """The user text with a sequence inserted as text (how a user would paste it)."""
    if placement == "suffix":
        return question + separator + sequence_text
    if placement == "prefix":
        return sequence_text + separator + question
    raise SteerlabError(f"unknown placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")


def split_prompt(lm: LoadedModel, user: str, assistant_prefix: str = "", *, placement: Placement = "suffix",
                 separator: str = "\n") -> PromptSplit:
    """Format `user` for `lm` (chat template when it has one) and cut it where the sequence goes.

    The head is tokenized as the start of a text (BOS when the tokenizer adds one and no template is
    used), the tail without special tokens; the sequence's ids sit between them unchanged.
    """
    if placement not in PLACEMENTS:
        raise SteerlabError(f"unknown placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")
    if not isinstance(user, str) or not isinstance(assistant_prefix, str):
        raise SteerlabError("prompts must be strings")
    tok = lm.tokenizer
    p = format_prompt(lm, insert_text(user, _MARK, placement, separator), assistant_prefix)
    at = p.text.find(_MARK)
    if at < 0:  # pragma: no cover - a template that drops or rewrites the user text
        raise SteerlabError("the chat template rewrote the user text; cannot place the sequence")
    head_text, tail_text = p.text[:at], p.text[at + len(_MARK):]
    head = tok(head_text, add_special_tokens=not p.templated, return_offsets_mapping=True)
    tail = tok(tail_text, add_special_tokens=False, return_offsets_mapping=True)
    head_ids, tail_ids = tuple(head["input_ids"]), tuple(tail["input_ids"])
    user_char = p.user_start
    user_start = (_char_to_token(list(head["offset_mapping"]), user_char, len(head_ids))
                  if user_char < len(head_text) else len(head_ids))
    a_char = p.assistant_start - (at + len(_MARK))
    assistant_start = (_char_to_token(list(tail["offset_mapping"]), a_char, len(tail_ids))
                       if a_char < len(tail_text) else len(tail_ids))
    e_char = p.user_end - (at + len(_MARK))
    user_end = (_char_to_token(list(tail["offset_mapping"]), e_char, len(tail_ids))
                if 0 <= e_char < len(tail_text) else len(tail_ids))
    return PromptSplit(head_text, tail_text, head_ids, tail_ids, int(user_start), int(assistant_start),
                       int(min(user_end, assistant_start)))


def continuation_ids(lm: LoadedModel, prompt_text: str, continuation: str) -> tuple[int, ...]:
    """Ids of `continuation` after `prompt_text` (the extra ids of the joint tokenization when the
    prompt's ids are its prefix, else the continuation tokenized alone), as the scoring engine does."""
    tok = lm.tokenizer
    base = list(tok(prompt_text, add_special_tokens=False)["input_ids"])
    full = list(tok(prompt_text + continuation, add_special_tokens=False)["input_ids"])
    if len(full) > len(base) and full[: len(base)] == base:
        return tuple(full[len(base):])
    return tuple(tok(continuation, add_special_tokens=False)["input_ids"])


def behaviour_targets(lm: LoadedModel,
                      items: Sequence[BehaviourItem], *, placement: Placement = "suffix", separator: str = "\n",
                      assistant_prefix: str | None = None) -> list[TargetItem]:
    """Target items that reward the NOT-matching answer of MWE behaviour items (reversing the behaviour).

    A/B items are prompted as CAA does (`format_prompt(lm, question + sequence, "(")`, target the
    not-matching letter, alternatives the two letters); Yes/No items open the assistant turn with
    nothing and score "Yes"/"No".
    """
    if len(items) == 0:
        raise SteerlabError("no behaviour items to attack: the target is empty")
    out = []
    for k, it in enumerate(items):
        if not isinstance(it, BehaviourItem):
            raise SteerlabError(f"item {k} is a {type(it).__name__}, not a BehaviourItem")
        prefix = assistant_prefix if assistant_prefix is not None else ("(" if it.kind == "ab" else "")
        split = split_prompt(lm, it.question, prefix, placement=placement, separator=separator)
        answer = continuation_ids(lm, split.tail_text, it.not_matching)
        other = continuation_ids(lm, split.tail_text, it.matching)
        if answer[0] == other[0]:
            raise SteerlabError(f"{it.source} item {it.index}: both answers start with the same token")
        out.append(TargetItem(split.head_ids, split.tail_ids, answer, (answer[0], other[0]), split.user_start,
                              split.assistant_start, f"{it.source}#{it.index}", user_end=split.user_end))
    return out


def string_target(lm: LoadedModel,
                  prompt: str, target: str, *, assistant_prefix: str = "", placement: Placement = "suffix",
                  separator: str = "\n") -> TargetItem:
    """A target item: the log-probability of `target` as the start of the assistant's reply to `prompt`
    (the user message, with the sequence inserted)."""
    if not isinstance(target, str) or not target:
        raise SteerlabError("the target string is empty")
    if not isinstance(prompt, str):
        raise SteerlabError("the prompt must be a string (the user message)")
    split = split_prompt(lm, prompt, assistant_prefix, placement=placement, separator=separator)
    answer = continuation_ids(lm, split.tail_text, target)
    if not answer:
        raise SteerlabError(f"the target string {target!r} tokenizes to nothing")
    return TargetItem(split.head_ids, split.tail_ids, answer, (), split.user_start, split.assistant_start, "string",
                      user_end=split.user_end)
