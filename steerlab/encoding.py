"""Prompts → token batches that remember where the user text and the assistant turn start.

Steering and capture need token positions (the start of the user prompt for ActAdd, the end of the
user's message for CAA's "after_user", the start of the assistant turn's content, the last prompt
token for PAS). We format with the chat template when the
model uses one, keep character offsets of those boundaries, and map them to token indices with the
tokenizer's offset mapping, so no template-specific marker tokens are hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .errors import PromptTooLongError, SteerlabError

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from .models import LoadedModel


@dataclass(frozen=True)
class Prompt:
    """A prompt as the model sees it.

    Attributes:
        text: the full text fed to the tokenizer (template applied if any).
        user_start: character offset where the user's own text starts.
        assistant_start: character offset where the assistant turn's content starts (the end of the
            template's generation prompt); equals len(text) when there is no assistant prefix.
        templated: whether the chat template was applied (then the text carries its own special tokens).
        user_end: character offset just after the user's text (where the template's end-of-turn and
            assistant header begin); "after_user" steering starts at the token holding this character.
            Defaults to `assistant_start` (right for raw text, where the assistant prefix follows the
            user's text directly).
    """

    text: str
    user_start: int
    assistant_start: int
    templated: bool
    user_end: int | None = None

    def __post_init__(self):
        if self.user_end is None:
            object.__setattr__(self, "user_end", self.assistant_start)


def format_prompt(lm_or_tokenizer, user: str, assistant_prefix: str = "", *, chat_template: bool | None = None) -> Prompt:
    """Wrap `user` as a user turn and open the assistant turn with `assistant_prefix`.

    Without a chat template the text is `user + assistant_prefix` (the caller chooses separators).
    """
    tokenizer = getattr(lm_or_tokenizer, "tokenizer", lm_or_tokenizer)
    if chat_template is None:
        chat_template = bool(getattr(lm_or_tokenizer, "use_chat_template", getattr(tokenizer, "chat_template", None)))
    if not isinstance(user, str) or not isinstance(assistant_prefix, str):
        raise SteerlabError("prompts must be strings")
    if not chat_template:
        return Prompt(user + assistant_prefix, 0, len(user), templated=False)
    head = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    user_start = head.rfind(user) if user else len(head)
    user_end = user_start + len(user)
    if user_start < 0:  # a template that rewrites the content; fall back to the turn boundary only
        user_start, user_end = 0, len(head)
    return Prompt(head + assistant_prefix, user_start, len(head), templated=True, user_end=user_end)


def as_prompt(lm: LoadedModel, prompt: "str | Prompt") -> Prompt:
    """Accept a ready Prompt or a plain user message (formatted for `lm`)."""
    return prompt if isinstance(prompt, Prompt) else format_prompt(lm, prompt)


@dataclass
class EncodedBatch:
    """A left-padded batch with per-row token boundaries (row-relative: 0 = first real token).

    Attributes:
        input_ids, attention_mask: [batch, columns], pads on the left.
        lengths: real tokens per row.
        user_start: token index of the first token of the user's text.
        assistant_start: token index of the first token of the assistant turn's content (== length with
            no prefix), after the template's assistant header.
        user_end: token index of the first token after the user's text (the template's end-of-turn
            token with a chat template; == assistant_start for raw text). Defaults to assistant_start.
            `after_user_start` is where "after_user" steering starts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    user_start: torch.Tensor
    assistant_start: torch.Tensor
    user_end: torch.Tensor | None = None

    def __post_init__(self):
        if self.user_end is None:
            self.user_end = self.assistant_start

    @property
    def after_user_start(self) -> torch.Tensor:
        """First position "after_user" steers, per row: see `after_user_start`."""
        return after_user_start(self.user_end, self.lengths)

    @property
    def pad(self) -> torch.Tensor:
        """Left-pad count per row."""
        return self.input_ids.shape[1] - self.lengths

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device) -> "EncodedBatch":
        return EncodedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.lengths, self.user_start,
                                                      self.assistant_start, self.user_end)))


def after_user_start(user_end, n_prompt):
    """The first position the "after_user" policy steers: the first token after the user's message
    (`user_end`: with a chat template the end-of-turn token, so the assistant header is steered), and
    never later than the last prompt token (`n_prompt - 1`), which predicts the first answer or
    generated token (raw prompts with no assistant prefix end with the user's text). Works on ints
    and on tensors."""
    if isinstance(user_end, torch.Tensor) or isinstance(n_prompt, torch.Tensor):
        return torch.minimum(torch.as_tensor(user_end), torch.as_tensor(n_prompt) - 1)
    return min(int(user_end), int(n_prompt) - 1)


def _char_to_token(offsets: Sequence[tuple[int, int]], char: int, n_tokens: int) -> int:
    """Index of the first token that ends after `char` (n_tokens if none)."""
    for i, (s, e) in enumerate(offsets):
        if e > char and not (s == e == 0 and i > 0):
            return i
    return n_tokens


def tokenize_prompts(lm: LoadedModel, prompts: Sequence["str | Prompt"]) -> list[tuple[list[int], int, int, int]]:
    """Token ids of each prompt with its (user_start, assistant_start, user_end) token indices."""
    tokenizer = lm.tokenizer
    out = []
    for p in prompts:
        p = as_prompt(lm, p)
        enc = tokenizer(p.text, add_special_tokens=not p.templated, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        n = len(ids)
        # Special tokens added by the tokenizer (BOS) have (0, 0) offsets; they precede the user text.
        u = _char_to_token(offsets, p.user_start, n) if p.user_start < len(p.text) else n
        a = _char_to_token(offsets, p.assistant_start, n) if p.assistant_start < len(p.text) else n
        e = _char_to_token(offsets, p.user_end, n) if p.user_end < len(p.text) else n
        out.append((ids, u, a, min(e, a)))
    return out


def check_lengths(lm: LoadedModel,
                  lengths: Sequence[int], extra_tokens: int = 0, indices: Sequence[int] | None = None) -> None:
    """Refuse prompts that do not fit the context window (with `extra_tokens` still to generate).

    `indices` are the prompts' positions in the caller's list, named in the error (default 0, 1, ...).
    """
    limit = lm.max_context
    if limit is None:
        return
    for k, n in enumerate(lengths):
        i = indices[k] if indices is not None else k
        if n + extra_tokens > limit:
            more = f" plus {extra_tokens} new tokens" if extra_tokens else ""
            raise PromptTooLongError(f"prompt {i} has {n} tokens{more}, more than the model's context window of {limit}")


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix shared by all `rows`, leaving every row at least one token of its own
    (the last token is where a continuation is read or scored, so it is never shared)."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    k = 0
    while k < n and all(r[k] == first[k] for r in rows):
        k += 1
    return max(k, 0)


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows to one tensor and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def encode(lm: LoadedModel, prompts: Sequence["str | Prompt"], *, extra_tokens: int = 0,
           indices: Sequence[int] | None = None) -> EncodedBatch:
    """Tokenize and left-pad prompts (plain strings are formatted as user messages for `lm`).

    `indices`: the prompts' positions in the caller's full list (for batched callers), named in errors.
    """
    if len(prompts) == 0:
        raise SteerlabError("no prompts given")
    rows = tokenize_prompts(lm, prompts)
    for k, (ids, *_) in enumerate(rows):
        if not ids:
            raise SteerlabError(f"prompt {indices[k] if indices is not None else k} is empty after tokenization")
    check_lengths(lm, [len(r[0]) for r in rows], extra_tokens, indices)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids, mask = pad_left([r[0] for r in rows], pad_id)
    lengths = mask.sum(1)
    return EncodedBatch(
        input_ids=ids,
        attention_mask=mask,
        lengths=lengths,
        user_start=torch.tensor([r[1] for r in rows]),
        assistant_start=torch.tensor([r[2] for r in rows]),
        user_end=torch.tensor([r[3] for r in rows]),
    )
