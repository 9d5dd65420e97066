"""Steered text generation (the functional entry point over `steer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from .activations import contiguous_head_input
from .encoding import Prompt, encode
from .errors import SteerlabError
from .steering import Steering, steer
from .vector import SteeringVector

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from .models import LoadedModel


class TextGenerator(Protocol):
    """What produces the texts of a study (`generate` below, or the vLLM engine's
    `steerlab.serve.engines.vllm.TextGenerator`): texts of `prompts` under `steering` (per-row vectors and
    strengths allowed), in order; greedy unless `do_sample` (greedy texts are the same whichever generates them). Studies take one so `--engine vllm` needs no change in them."""

    def __call__(self, lm: "LoadedModel", prompts: Sequence["str | Prompt"],
                 steering: "Steering | Sequence[Steering] | None" = None, *, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 16, progress: bool = False) -> list[str]: ...


def generate(
    lm: LoadedModel,
    prompts: Sequence["str | Prompt"],
    steering: Steering | Sequence[Steering] | None = None,
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Generate a completion for each prompt, optionally steered.

    Per-row vectors/strengths in `steering` are matched to `prompts` in order (and split across batches).
    Greedy by default, so steered and unsteered outputs differ only by the steering.
    """
    if len(prompts) == 0:
        raise SteerlabError("no prompts to generate from")
    if isinstance(steering, SteeringVector):
        raise SteerlabError("pass steering as steerlab.Steering(vector, strength), not a bare SteeringVector")
    terms = [] if steering is None else ([steering] if isinstance(steering, Steering) else list(steering))
    for t in terms:
        if not isinstance(t, Steering):
            raise SteerlabError(f"steering terms must be steerlab.Steering, got {type(t).__name__}")
    # Per-row lists are sliced per batch below; check them against all prompts so none is cut silently.
    terms = [t.normalized(lm, len(prompts)) for t in terms]
    if seed is not None:
        torch.manual_seed(seed)
    out: list[str] = []
    tok = lm.tokenizer
    n_batches = -(-len(prompts) // batch_size)
    bar = tqdm(total=n_batches * max_new_tokens, desc=f"generating ({len(prompts)} prompts)", disable=not progress,
               unit="tok")
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s:s + batch_size])
        batch = encode(lm, chunk, extra_tokens=max_new_tokens, indices=range(s, s + len(chunk)))
        rows = [t.rows(s, s + len(chunk)) for t in terms]
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
        if progress:
            kwargs["streamer"] = _StepTicker(bar)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        inputs = batch.to(lm.device)
        with torch.no_grad(), steer(lm, rows, batch=batch), contiguous_head_input(lm.model):
            ids = lm.model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, **kwargs)
        new = ids[:, batch.input_ids.shape[1]:]
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
        bar.update((s // batch_size + 1) * max_new_tokens - bar.n)  # a batch that stopped early (EOS)
    bar.close()
    return out


class _StepTicker:
    """A transformers streamer that only advances a progress bar by one per decoding step (the first
    `put` is the prompt)."""

    def __init__(self, bar):
        self.bar, self.prompt_seen = bar, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self) -> None:
        pass
