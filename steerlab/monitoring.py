"""Read-out: watch a vector's direction in the residual stream token by token, while the model writes.

For every token of the prompt and of the generation, the output of block `layer` is projected on the
vector's direction there: `raw` = h · v / ||v|| (in the stream's own units) and `cosine` = cos(h, v).
Generation is greedy and may be steered (the read-out sees the steered stream). A `StopRule` ends a
row's generation (`finish_reason` "content_filter") once the raw projection of its generated tokens has
stayed above a threshold for k tokens in a row, e.g. to cut off an answer drifting into a trait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import torch
from tqdm.auto import tqdm

from .activations import last_logits_only, position_ids_for
from .encoding import Prompt, encode
from .errors import SteerlabError, VectorError
from .forward_cache import with_cache
from .layers import block_hidden
from .steering import Steering, apply_steering
from .vector import SteeringVector

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from .models import LoadedModel

FinishReason = Literal["stop", "length", "content_filter"]


@dataclass(frozen=True)
class StopRule:
    """End a generation when the raw projection stays above `threshold` for `tokens` generated tokens."""

    threshold: float
    tokens: int = 1

    def __post_init__(self):
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise SteerlabError(f"a stop rule needs tokens >= 1, got {self.tokens!r}")
        if not float("-inf") < float(self.threshold) < float("inf"):
            raise SteerlabError(f"a stop rule needs a finite threshold, got {self.threshold!r}")


@dataclass
class Readout:
    """One prompt's read-out: per token (prompt tokens first, then generated ones) its projection."""

    prompt: str
    text: str  # the generated text
    tokens: list[str]  # token strings, prompt then generation
    n_prompt: int
    raw: list[float]
    cosine: list[float]
    finish_reason: FinishReason
    layer: int
    generated_ids: list[int] = field(default_factory=list)

    def mean(self, part: Literal["prompt", "generated", "all"] = "generated", kind: str = "raw") -> float:
        """Mean projection over the prompt, the generated tokens or both (NaN when empty)."""
        values = self.raw if kind == "raw" else self.cosine
        chosen = values[:self.n_prompt] if part == "prompt" else values[self.n_prompt:] if part == "generated" else values
        return float(sum(chosen) / len(chosen)) if chosen else float("nan")


def unit_direction(direction: torch.Tensor) -> torch.Tensor:
    """`direction` as a float32 unit vector (what every read-out projects on)."""
    d = direction.float()
    return d / d.norm()


def project(h: torch.Tensor, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The read-out of hidden states `h` [..., hidden] on `unit` (`unit_direction`): (raw, cosine), each
    [...]: raw = h · unit, cosine = raw / ||h||. The one definition, for `readout` and the server."""
    h = h.float()
    raw = h @ unit.to(h.device)
    return raw, raw / h.norm(dim=-1).clamp_min(1e-12)


class ReadoutHook:
    """Projections of block `layer`'s output on `direction`, per forward call ([rows, cols] each).

    Registered after any steering hook on the block, so it reads the steered stream."""

    def __init__(self, lm, direction: torch.Tensor, layer: int):
        self.unit = unit_direction(direction).to(lm.device)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handle = lm.blocks[layer].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        raw, cos = project(block_hidden(output), self.unit)
        self.calls.append((raw.detach().cpu(), cos.detach().cpu()))

    def remove(self) -> None:
        self._handle.remove()


def _eos_ids(lm: LoadedModel) -> set[int]:
    eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def readout(
    lm: LoadedModel,
    prompts: Sequence["str | Prompt"],
    vector: SteeringVector,
    *,
    layer: int | None = None,
    steering: Steering | Sequence[Steering] | None = None,
    max_new_tokens: int = 32,
    stop: StopRule | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Readout]:
    """Generate greedily from each prompt (optionally steered) and read `vector`'s projection per token.

    Args:
        layer: the layer to read (default: the vector's selected layer, else its only or middle layer).
        stop: end a row early when its projection stays above the rule's threshold.
    """
    if len(prompts) == 0:
        raise SteerlabError("no prompts to read out")
    if max_new_tokens < 0:
        raise SteerlabError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    vector.check_compatible(lm, allow_other_family=True)
    layer = _read_layer(lm, vector, layer)
    direction = vector.directions[layer]
    if direction.dim() != 1:
        raise VectorError("read-out needs a one-direction-per-layer vector (not an ActAdd per-position vector)")
    terms = [] if steering is None else ([steering] if isinstance(steering, Steering) else list(steering))
    terms = [t.normalized(lm, len(prompts)) for t in terms]
    out: list[Readout] = []
    bar = tqdm(total=len(prompts), desc="reading out", disable=not progress, unit="prompt")
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s:s + batch_size])
        rows = [t.rows(s, s + len(chunk)) for t in terms]
        out.extend(_readout_batch(lm, chunk, range(s, s + len(chunk)), direction, layer, rows, max_new_tokens, stop))
        bar.update(len(chunk))
    bar.close()
    return out


def default_layer(vector: SteeringVector) -> int:
    """The layer a read-out uses when not told: the vector's selected layer, else its only one (of several,
    the middle one)."""
    chosen = vector.meta.selected_layers or vector.layers
    return int(chosen[len(chosen) // 2] if len(chosen) > 1 else chosen[0])


def _read_layer(lm: LoadedModel, vector: SteeringVector, layer: int | None) -> int:
    layer = lm.blocks.check_layer(default_layer(vector) if layer is None else layer)
    if layer not in vector.directions:
        raise VectorError(f"the vector has no direction at layer {layer} (it has {list(vector.layers)})")
    return layer


@torch.no_grad()
def _readout_batch(lm: LoadedModel, chunk, indices, direction, layer, terms, max_new_tokens, stop) -> list[Readout]:
    batch = encode(lm, chunk, extra_tokens=max_new_tokens, indices=indices)
    rows, width = batch.input_ids.shape
    device = lm.device
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    eos = _eos_ids(lm)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    generated: list[list[int]] = [[] for _ in range(rows)]
    finish: list[FinishReason | None] = [None] * rows
    above = [0] * rows
    handle = apply_steering(lm, terms, batch=batch) if terms else None
    hook = ReadoutHook(lm, direction, layer)
    try:
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), use_cache=True,
                       **last_logits_only(lm.model, width))
        cache = out.get("cache", out.get("past_key_values"))  # by transformers version; updated in place later
        logits = out.logits[:, -1, :]
        for step in range(max_new_tokens + 1):
            if step > 0:  # the projections of the tokens fed in this step (generated at step - 1)
                raw_step = hook.calls[-1][0][:, -1]
                for i in range(rows):
                    if stop is not None and finish[i] is None:
                        above[i] = above[i] + 1 if float(raw_step[i]) > stop.threshold else 0
                        if above[i] >= stop.tokens:
                            finish[i] = "content_filter"
            if step == max_new_tokens or all(f is not None for f in finish):
                break
            nxt = torch.argmax(logits, dim=-1)
            for i in range(rows):
                if finish[i] is not None:
                    nxt[i] = pad_id
                    continue
                tok = int(nxt[i])
                generated[i].append(tok)
                if tok in eos:
                    finish[i] = "stop"
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=device)], dim=1)
            pos = (mask.long().sum(1, keepdim=True) - 1)
            out = lm.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                           **with_cache(lm.model, cache))
            logits = out.logits[:, -1, :]
    finally:
        hook.remove()
        if handle is not None:
            handle.remove()
    results = []
    prefill_raw, prefill_cos = hook.calls[0]
    steps = hook.calls[1:]
    tok = lm.tokenizer
    for i in range(rows):
        pad = int(batch.pad[i])
        n_gen = len(generated[i])
        raw = prefill_raw[i, pad:].tolist() + [float(steps[t][0][i, -1]) for t in range(min(n_gen, len(steps)))]
        cos = prefill_cos[i, pad:].tolist() + [float(steps[t][1][i, -1]) for t in range(min(n_gen, len(steps)))]
        prompt_ids = batch.input_ids[i, pad:].tolist()
        all_ids = prompt_ids + generated[i]
        text_ids = [t for t in generated[i] if t not in eos]
        p = chunk[i]
        results.append(Readout(
            prompt=p.text if isinstance(p, Prompt) else p,
            text=tok.decode(text_ids, skip_special_tokens=True),
            tokens=[tok.decode([t]) for t in all_ids][:len(raw)],
            n_prompt=len(prompt_ids), raw=raw, cosine=cos,
            finish_reason=finish[i] or "length", layer=layer, generated_ids=list(generated[i])))
    return results


__all__ = ["readout", "Readout", "StopRule", "ReadoutHook", "default_layer", "unit_direction", "project"]
