"""Activations of the response part of (question, response) texts: averaged over its tokens, or at its last.

A response is read as the assistant turn of a chat (the question as the user turn, no system prompt),
or as `question + separator + response` for a model without a chat template. The mean ("mean", the
default) runs over the tokens of the response only: the question's tokens are excluded, so what differs
between two sides is what the responses say, not how long the shared question is. "last" reads the
response's last token alone (the position CAA reads its answer letter at). Used by the persona method (the
model's own answers) and by multi-format CAA's free-text format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ..activations import capture
from ..encoding import Prompt, format_prompt, tokenize_prompts
from ..errors import DatasetError

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

#: What separates the question from the response for a model without a chat template.
RAW_SEPARATOR = "\n\nAnswer: "

#: How a response is read: the mean over its tokens, or its last token.
READINGS: tuple[str, ...] = ("mean", "last")


def response_prompt(lm: LoadedModel, question: str, response: str) -> Prompt:
    """The text whose assistant part is `response` (see the module docstring)."""
    if getattr(lm, "use_chat_template", False):
        return format_prompt(lm, question, response)
    return format_prompt(lm, question + RAW_SEPARATOR, response, chat_template=False)


def response_activations(lm: LoadedModel, texts: Sequence[tuple[str, str]], layers: Sequence[int], *,
                         reading: str = "mean", batch_size: int = 16, progress: bool = False) -> dict[int, torch.Tensor]:
    """{layer: [n, hidden]}: row i is `texts[i]`'s response read at the output of each block in `layers`
    ((question, response) pairs): the mean over its response tokens, or (reading="last") its last token.

    Raises DatasetError naming the text when a response has no token of its own, or for an unknown reading.
    """
    if reading not in READINGS:
        raise DatasetError(f"a response is read as one of {', '.join(READINGS)}, not {reading!r}")
    if len(texts) == 0:
        raise DatasetError("no responses to read")
    prompts = [response_prompt(lm, q, r) for q, r in texts]
    starts = []
    for i, (ids, _, a, _) in enumerate(tokenize_prompts(lm, prompts)):
        if a >= len(ids):
            raise DatasetError(f"response {i} ({texts[i][1][:40]!r}) has no tokens after the question")
        starts.append(a)
    # "all" gives each row from its first real token, so the row-relative assistant start indexes it directly.
    acts = capture(lm, prompts, layers, "all", batch_size=batch_size, progress=progress)
    if reading == "last":
        return {l: torch.stack([row[-1] for row in rows]) for l, rows in acts.items()}
    return {l: torch.stack([rows[i][starts[i]:].mean(0) for i in range(len(rows))]) for l, rows in acts.items()}
