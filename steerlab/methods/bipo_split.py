"""What BiPO runs once per minibatch instead of at every step (see `steerlab.methods.bipo`).

A row's prompt, up to where steering can first reach it, is run once and kept as its attention keys and values
(`split_rows`, `prompt_pass`; once per distinct prompt part, spread over the rows that share it for each pass:
`KeptPrompt`, `spread`); block L's unsteered output over the rest of the row is recorded once and replayed
(`replaying`), so a step runs only blocks L+1..end over the template's assistant header and the completion
(`rest_logprobs`). The unsteered pass that records it runs the +v rows only: unsteered, the -v rows are the same
(`reference_pass`). `steerlab.methods.bipo.completion_logprobs` is the plain computation these reproduce.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import last_logits_only, position_ids_for
from ..encoding import EncodedBatch
from ..forward_cache import output_cache, with_cache
from ..layers import block_hidden, with_block_hidden

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass
class CachedPrefix:
    """Block `layer`'s unsteered output over the rest of a minibatch's rows, to replay instead of running blocks 0..layer.

    Attributes:
        template: the block's output as it returned it (the residual stream [rows, width, hidden] itself, or a tuple
            whose first item it is), so that the stand-ins return what the model's own loop expects.
        repeat: how many times the rows repeat in the pass that replays it (2 for `reference_pass`'s: the -v rows
            are the +v rows again, and unsteered they are the same numbers, so they are kept once).
    """

    template: Any
    repeat: int = 1

    def replayed(self) -> Any:
        """The block output a replaying pass gets: the kept rows, `repeat` times."""
        if self.repeat == 1:
            return self.template
        # a copy per step, of one block output: small beside the blocks the step runs, and it keeps the kept half
        hidden = block_hidden(self.template)
        tiled = hidden.repeat(self.repeat, *([1] * (hidden.dim() - 1)))
        return with_block_hidden(self.template, tiled, same_rows=False)


class _PassThrough(nn.Module):
    """Stands in for a block below the replayed one: its output is not used, so it returns its input."""

    def __init__(self, template: Any):
        super().__init__()
        self.template = template

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return with_block_hidden(self.template, hidden, same_rows=False)


class _Replay(nn.Module):
    """Stands in for block `layer`: returns its cached output (the steering hook then adds to it)."""

    def __init__(self, prefix: CachedPrefix):
        super().__init__()
        self.prefix = prefix

    def forward(self, *args, **kwargs):
        return self.prefix.replayed()


@contextlib.contextmanager
def replaying(lm: LoadedModel, layer: int, prefix: CachedPrefix):
    modules = lm.blocks.modules
    saved = [modules[i] for i in range(layer + 1)]
    try:
        for i in range(layer):
            modules[i] = _PassThrough(prefix.template)
        modules[layer] = _Replay(prefix)
        yield
    finally:
        for i, block in enumerate(saved):
            modules[i] = block


def add_vector(lm: LoadedModel, layer: int, vector: torch.Tensor, coef: torch.Tensor):
    """Hook adding coef[row, col] * vector to block `layer`'s output; returns the handle."""
    def hook(module, args, output):
        h = block_hidden(output)
        return with_block_hidden(output, h + coef[:, :, None].to(h.dtype) * vector.to(h.dtype))

    return lm.blocks[layer].register_forward_hook(hook)


def summed_logprobs(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of `targets` where `counted`; column j of `logits` predicts target j."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bfloat16 -> float32; float64 stays
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    tok_lp = logp.gather(-1, targets[:, :, None])[:, :, 0]
    return (tok_lp * counted).sum(1)


@dataclass
class SplitRows:
    """The rows of an `EncodedPairs` cut where steering can first reach them (the module docstring): an unsteered
    prompt part, left-padded so that every row's ends at column P, run once; and the rest, right-padded, run at
    every step against the prompt part's keys and values.

    Attributes:
        prompt_ids, prompt_mask: [rows, P] (P = 0: nothing to keep, as under the "all" policy).
        rest_ids, rest_mask: [rows, S]; rest_positions: their position ids.
        steer: [rows, S] 1 where the policy adds v.
        counted: [rows, keep - 1] 1 where a target is a completion token; keep: the last columns whose logits
            are needed.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    rest_ids: torch.Tensor
    rest_mask: torch.Tensor
    rest_positions: torch.Tensor
    steer: torch.Tensor
    counted: torch.Tensor
    keep: int

    @property
    def prompt_width(self) -> int:
        return self.prompt_ids.shape[1]


def split_rows(b: EncodedBatch, start: torch.Tensor, positions: str) -> SplitRows:
    """`b`'s rows cut where `positions` ("after_user" or "all") first steers, or before the first completion token
    (`start`, row-relative) if that comes earlier."""
    rows = b.input_ids.shape[0]
    pad, lengths = b.pad, b.lengths
    steer_from = b.user_end if positions == "after_user" else torch.zeros_like(lengths)
    # the token before the first completion token yields its logit, so it belongs to the rest too
    cut = torch.minimum(steer_from, start - 1).clamp_min(0)
    p_w, s_w = int(cut.max()), int((lengths - cut).max())
    prompt_ids = torch.zeros(rows, p_w, dtype=b.input_ids.dtype)
    prompt_mask = torch.zeros(rows, p_w, dtype=b.attention_mask.dtype)
    rest_ids = torch.zeros(rows, s_w, dtype=b.input_ids.dtype)
    rest_mask = torch.zeros(rows, s_w, dtype=b.attention_mask.dtype)
    for r in range(rows):
        real = b.input_ids[r, int(pad[r]):]
        c, n = int(cut[r]), int(lengths[r])
        prompt_ids[r, p_w - c:] = real[:c]
        prompt_mask[r, p_w - c:] = 1
        rest_ids[r, :n - c] = real[c:n]
        rest_mask[r, :n - c] = 1
    pos = cut[:, None] + torch.arange(s_w)[None, :]  # row-relative position of each rest column
    steer = ((pos >= steer_from[:, None]) & rest_mask.bool()).float()
    keep = s_w - int((start - cut).min()) + 1
    targets = pos[:, s_w - keep + 1:]
    counted = ((targets >= start[:, None]) & rest_mask[:, s_w - keep + 1:].bool()).float()
    return SplitRows(prompt_ids, prompt_mask, rest_ids, rest_mask, pos, steer, counted, keep)


def distinct_prompts(rows: SplitRows) -> tuple[torch.Tensor, torch.Tensor]:
    """One row index per distinct prompt part (tokens and padding), and for every row the number of its own among
    them. A pair's four rows share one prompt part."""
    key = torch.cat([rows.prompt_ids, rows.prompt_mask.to(rows.prompt_ids.dtype)], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.zeros(int(inverse.max()) + 1, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(inverse)), reduce="amin", include_self=False)
    return first, inverse


@dataclass
class KeptPrompt:
    """The prompt parts' keys and values, kept once per distinct prompt part (the model's cache object), and how
    they spread over the rows for a pass (`spread`).

    Attributes:
        cache: one batch row per distinct prompt part.
        of_row: [rows] the index in `cache` of each row's prompt part.
        first: [distinct] a row holding each prompt part, to gather the rows back to one per prompt part.
    """

    cache: Any
    of_row: torch.Tensor
    first: torch.Tensor

    @property
    def shared(self) -> bool:
        return len(self.first) < len(self.of_row)


@contextlib.contextmanager
def spread(kept: KeptPrompt, width: int, device):
    """`kept`'s cache with one prompt part per row for one forward pass (the batch gather of transformers' beam
    search, `reorder_cache`); afterwards cut back to the prompt part's `width` (detached: what the pass appended is
    part of its graph) and gathered back to one row per distinct prompt part."""
    if kept.shared:
        kept.cache.reorder_cache(kept.of_row.to(device))
    try:
        yield kept.cache
    finally:
        trim(kept.cache, width)
        if kept.shared:
            kept.cache.batch_select_indices(kept.first.to(device))


def _prompt_cache(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor):
    mask = mask.to(lm.device)
    out = lm.model(input_ids=ids.to(lm.device), attention_mask=mask, position_ids=position_ids_for(mask),
                   use_cache=True, **last_logits_only(lm.model, ids.shape[1], 1))
    return output_cache(out)


def prompt_pass(lm: LoadedModel, rows: SplitRows, share: bool = True) -> KeptPrompt | None:
    """The prompt parts' keys and values, or None when there is no prompt part. Each distinct prompt part runs once
    and is kept once; a cache that cannot gather its batch rows (`reorder_cache`, `batch_select_indices`), or
    `share=False` (for checks and timing comparisons), runs and keeps every row's."""
    if rows.prompt_width == 0:
        return None
    first, of_row = distinct_prompts(rows)
    if share and len(first) < len(of_row):
        cache = _prompt_cache(lm, rows.prompt_ids[first], rows.prompt_mask[first])
        if hasattr(cache, "reorder_cache") and hasattr(cache, "batch_select_indices"):
            return KeptPrompt(cache, of_row, first)
    every = torch.arange(len(of_row))
    return KeptPrompt(_prompt_cache(lm, rows.prompt_ids, rows.prompt_mask), every, every)


def trim(cache, length: int) -> None:
    """Back to the prompt part's keys and values after a forward pass appended the rest's (detached: the
    appended copy is part of that step's graph). A cache laid out otherwise is left as it is, and the check
    against the plain computation then fails."""
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-2] > length:
                setattr(layer, name, t[..., :length, :].detach())


def rest_logprobs(lm: LoadedModel, rows: SplitRows, kept: KeptPrompt | None, signs: torch.Tensor,
                  vector: torch.Tensor | None, layer: int, *, prefix: CachedPrefix | None = None,
                  capture: dict[int, CachedPrefix] | None = None, capture_layers: Sequence[int] = ()) -> torch.Tensor:
    """`completion_logprobs` from the split rows: only the rest runs, against the prompt parts' keys and values
    (`kept`, left as found); `prefix`: block `layer`'s output over the rest, replayed instead of blocks 0..layer;
    `capture`: receives the blocks' outputs over the rest (an unsteered pass) for `layer` and `capture_layers`."""
    ids = rows.rest_ids.to(lm.device)
    mask = torch.cat([rows.prompt_mask, rows.rest_mask], dim=1).to(lm.device)
    s_w = ids.shape[1]
    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(spread(kept, rows.prompt_width, lm.device)) if kept is not None else None
        if prefix is not None:
            stack.enter_context(replaying(lm, layer, prefix))
        if vector is not None:
            coef = signs.to(lm.device)[:, None] * rows.steer.to(lm.device)
            stack.callback(add_vector(lm, layer, vector, coef).remove)
        elif capture is not None:
            for at in dict.fromkeys((layer, *capture_layers)):
                def record(module, args, output, at=at):
                    capture[at] = CachedPrefix(output)

                stack.callback(lm.blocks[at].register_forward_hook(record).remove)
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=rows.rest_positions.to(lm.device),
                       use_cache=cache is not None, **with_cache(lm.model, cache, **last_logits_only(lm.model, s_w, rows.keep)))
    return summed_logprobs(out.logits[:, -rows.keep:, :], ids[:, s_w - rows.keep + 1:], rows.counted.to(lm.device))


def head_rows(rows: SplitRows, n: int) -> SplitRows:
    """The first `n` of `rows`."""
    return SplitRows(rows.prompt_ids[:n], rows.prompt_mask[:n], rows.rest_ids[:n], rows.rest_mask[:n],
                     rows.rest_positions[:n], rows.steer[:n], rows.counted[:n], rows.keep)


def reference_pass(lm: LoadedModel, rows: SplitRows, kept: KeptPrompt | None, layers: Sequence[int]
                   ) -> tuple[torch.Tensor, dict[int, CachedPrefix]]:
    """The unsteered log-probs of an `EncodedPairs`' split rows, and each of `layers`' block output over the rest to
    replay. The rows' second half (for -v) repeats the first (for +v) and unsteered they are the same numbers, so
    the first half runs and is kept once (`CachedPrefix.repeat`); a cache kept per row runs every row."""
    half = rows.prompt_ids.shape[0] // 2
    captured: dict[int, CachedPrefix] = {}
    if kept is not None and not kept.shared:
        ref = rest_logprobs(lm, rows, kept, torch.ones(2 * half), None, layers[0], capture=captured,
                            capture_layers=layers)
        return ref, captured
    # every distinct prompt part has a row in the first half, so `first` gathers the cache back from it as well
    view = None if kept is None else KeptPrompt(kept.cache, kept.of_row[:half], kept.first)
    ref = rest_logprobs(lm, head_rows(rows, half), view, torch.ones(half), None, layers[0], capture=captured,
                        capture_layers=layers)
    return ref.repeat(2), {l: CachedPrefix(c.template, repeat=2) for l, c in captured.items()}


def kept_bytes(lm: LoadedModel, rows: Sequence[SplitRows], n_layers: int) -> int:
    """What keeping `rows`' distinct prompt parts' keys/values and `n_layers` block outputs over their rest (the
    first half's: `reference_pass`) takes."""
    per_rest_token = lm.hidden_size * lm.dtype.itemsize * n_layers
    return sum(len(distinct_prompts(r)[0]) * r.prompt_width * lm.kv_bytes_per_token if r.prompt_width else 0
               for r in rows) + sum(r.rest_ids[:r.rest_ids.shape[0] // 2].numel() * per_rest_token for r in rows)
