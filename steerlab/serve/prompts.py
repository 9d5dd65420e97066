"""Request text → a one-row `EncodedBatch` → the seam's `EngineRequest`, on a worker thread (never the
engine's). `lm` here is the engine's `ModelInfo` (a tokenizer of its own, no weights) or a `LoadedModel`.

A chat request with one user message is formatted exactly as `steerlab.generate` formats a plain
prompt (`format_prompt`), so its output can equal `steerlab.generate` for that prompt; a longer
conversation goes through the chat template with the user text boundaries (start, end) at the last
user message, so "after_user" steering starts where that message ends, as for a single message.
A completion request is a raw prompt (no template). Length is checked against the context with
`max_tokens` still to come (`PromptTooLongError` → 400) before the request is queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..encoding import EncodedBatch, Prompt, encode, format_prompt
from ..errors import PromptTooLongError, SteerlabError

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


class PromptError(SteerlabError):
    """The messages cannot be made into a prompt for this model (answered with 400)."""


def _check_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PromptError("the prompt contains invalid Unicode (a lone surrogate \\ud800-\\udfff)") from None
    return text


def chat_prompt(lm: LoadedModel, messages: list) -> Prompt:
    """`messages`: ChatMessage models (role, text())."""
    for m in messages:
        _check_text(m.text())
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise PromptError("messages need at least one message with role 'user'")
    if len(messages) == 1:
        return format_prompt(lm, users[0].text())
    if not lm.use_chat_template:
        raise PromptError("this model has no chat template: send one user message, or use /v1/completions")
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    try:
        text = lm.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # templates raise on role orders they do not support
        raise PromptError(f"the model's chat template refused these messages: {e}") from None
    last = users[-1].text()
    user_start = text.rfind(last) if last else -1
    user_end = user_start + len(last)
    if user_start < 0:  # as format_prompt: a template that rewrites the content falls back to the turn boundary
        user_start, user_end = 0, len(text)
    return Prompt(text, user_start, len(text), templated=True, user_end=user_end)


def completion_prompt(lm: LoadedModel, text: str) -> Prompt:
    return format_prompt(lm, _check_text(text), chat_template=False)


_MAX_TOKEN_CHARS: dict[int, int] = {}


def max_token_chars(tokenizer) -> int:
    """The most characters one token of `tokenizer` decodes to (computed once per tokenizer)."""
    key = id(tokenizer)
    if key not in _MAX_TOKEN_CHARS:
        try:
            vocab = tokenizer.get_vocab()
            _MAX_TOKEN_CHARS[key] = max(len(tokenizer.convert_tokens_to_string([t])) for t in vocab) or 1
        except Exception:  # a tokenizer without these methods: no early bound
            _MAX_TOKEN_CHARS[key] = 0
    return _MAX_TOKEN_CHARS[key]


def encode_one(lm: LoadedModel, prompt: Prompt, max_new_tokens: int) -> EncodedBatch:
    """Tokenize, refuse what does not fit the context with `max_new_tokens` to come, return one row.

    A text too long to fit even if every token were the vocabulary's longest is refused before it is
    tokenized (a 1 MB prompt costs ~2.6 s to tokenize on a loaded 2-core machine; this check, nothing)."""
    limit, per_token = lm.max_context, max_token_chars(lm.tokenizer)
    if limit is not None and per_token and len(prompt.text) > (limit - max_new_tokens) * per_token:
        raise PromptTooLongError(f"the prompt has {len(prompt.text)} characters, at least "
                                 f"{len(prompt.text) // per_token} tokens plus {max_new_tokens} new tokens, more "
                                 f"than the model's context window of {limit}")
    return encode(lm, [prompt], extra_tokens=max_new_tokens)
