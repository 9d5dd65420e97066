"""Contrast-pair activations with the shared question run once: CAA vectors for every layer, fast.

`train_caa` runs `question + positive` and `question + negative` as two full sequences. They share
every token up to where the answers differ (for MWE A/B pairs: everything up to and including
"("), so here each pair's common token prefix is run once, batched and left-padded, with a KV
cache; then both differing tails (e.g. "A" and "B") run on a two-row copy of that cache, and the
block outputs are read at each tail's last token, at every requested layer in the same pass.
Both passes stop after the deepest requested block. The result equals `train_caa`'s within float
tolerance (tested to 1e-4).

Before that, the token prefix common to *every* sequence (with a chat template: the system turn and
the user-turn header, ~24 tokens for SmolLM2) is run once for the whole dataset, and its KV cache is
copied into every batch; each batch's prefixes then run left-padded *after* it (the padding sits
between the header and the question, masked out, with position ids counting real tokens only).

Token ids are exactly `train_caa`'s (each side tokenized as its full text); the shared prefix is
the longest common prefix of the two id lists, cut so that each side keeps at least one token.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from ..activations import position_ids_for, read_blocks
from ..data.records import ContrastPair
from ..encoding import common_prefix_len, pad_left, tokenize_prompts
from ..errors import DatasetError, SteerlabError
from ..methods.caa import caa_from_activations, mean_difference
from ..methods.common import pair_prompts
from ..vector import SteeringVector
from ..forward_cache import with_cache

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass
class PairActivations:
    """Activations of contrast pairs at the last token of prompt + answer.

    Attributes:
        pairs: the pairs, in order.
        layers: the layers read.
        positive / negative: {layer: [n_pairs, hidden]} (float32, CPU).
        info: extraction statistics (tokens run with and without prefix sharing).
    """

    pairs: list[ContrastPair]
    layers: tuple[int, ...]
    positive: dict[int, torch.Tensor]
    negative: dict[int, torch.Tensor]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def _index(self, subset: Sequence[int] | int | None) -> torch.Tensor:
        if subset is None:
            return torch.arange(len(self))
        if isinstance(subset, int):
            if not 1 <= subset <= len(self):
                raise DatasetError(f"cannot take the first {subset} of {len(self)} pairs")
            return torch.arange(subset)
        idx = torch.as_tensor(list(subset), dtype=torch.long)
        if idx.numel() == 0:
            raise DatasetError("an empty subset of pairs has no mean difference")
        if int(idx.min()) < 0 or int(idx.max()) >= len(self):
            raise DatasetError(f"pair indices out of range for {len(self)} pairs")
        return idx

    def differences(self, layer: int) -> torch.Tensor:
        """[n_pairs, hidden] positive minus negative at `layer`."""
        return self.positive[layer] - self.negative[layer]

    def mean_difference(self, layer: int, subset: Sequence[int] | int | None = None) -> torch.Tensor:
        """CAA direction at `layer` from all pairs, the first `subset` pairs (int), or given indices."""
        if layer not in self.positive:
            raise SteerlabError(f"layer {layer} was not extracted (have {list(self.layers)})")
        idx = self._index(subset)
        return mean_difference(self.positive[layer][idx], self.negative[layer][idx])

    def caa_vector(self, lm, subset: Sequence[int] | int | None = None,
                   layers: Sequence[int] | None = None) -> SteeringVector:
        """A CAA SteeringVector (metadata as `train_caa`) from all pairs or a subset."""
        idx = self._index(subset)
        layers = list(self.layers) if layers is None else list(layers)
        for l in layers:
            if l not in self.positive:
                raise SteerlabError(f"layer {l} was not extracted (have {list(self.layers)})")
        chosen = [self.pairs[int(i)] for i in idx]
        return caa_from_activations(lm, {l: self.positive[l][idx] for l in layers},
                                    {l: self.negative[l][idx] for l in layers}, chosen, position="last")


def extract_pair_activations(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> PairActivations:
    """Activations of every pair's positive and negative side at the last token, shared prefix run once.

    Args:
        pairs: CAA contrast pairs (prompt = user message, positive/negative = assistant-side answers).
        layers: layers to read (default: all). All are read in one pass per batch.
        batch_size: pairs per batch (the tail pass has twice as many rows).
    """
    pairs = list(pairs)
    layers = sorted({lm.blocks.check_layer(l) for l in (range(lm.n_layers) if layers is None else layers)})
    if not layers:
        raise SteerlabError("no layers requested")
    pos_prompts, neg_prompts = pair_prompts(lm, pairs)  # raises DatasetError on no pairs
    toks = tokenize_prompts(lm, pos_prompts + neg_prompts)
    n = len(pairs)
    pos_ids = [t[0] for t in toks[:n]]
    neg_ids = [t[0] for t in toks[n:]]
    for k in range(n):
        if not pos_ids[k] or not neg_ids[k]:
            raise DatasetError(f"pair {k}: a side is empty after tokenization")
    shared = [common_prefix_len([p, q]) for p, q in zip(pos_ids, neg_ids)]
    deepest = layers[-1]
    head_len = common_prefix_len(pos_ids + neg_ids)  # <= every shared[k]: common to each pair too
    head_cache = None
    if head_len:
        head_cache = DynamicCache(config=lm.model.config)
        read_blocks(lm, [deepest], **with_cache(lm.model, head_cache, use_cache=True,
                                                input_ids=torch.tensor([pos_ids[0][:head_len]], device=lm.device),
                                                position_ids=torch.arange(head_len, device=lm.device)[None]))
    hidden = lm.hidden_size
    out_pos = {l: torch.empty(n, hidden) for l in layers}
    out_neg = {l: torch.empty(n, hidden) for l in layers}
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = lm.device
    order = sorted(range(n), key=lambda k: (shared[k], len(pos_ids[k]) + len(neg_ids[k])))
    bar = tqdm(total=n, desc="extracting pairs", unit="pair", disable=not progress)
    tokens_run = head_len
    for b0 in range(0, n, batch_size):
        idx = order[b0:b0 + batch_size]
        prefixes = [pos_ids[k][head_len: shared[k]] for k in idx]
        tails = []
        for k in idx:
            tails += [pos_ids[k][shared[k]:], neg_ids[k][shared[k]:]]
        pre_ids, pre_mask = pad_left(prefixes, pad_id) if max(map(len, prefixes)) else (
            torch.zeros(len(idx), 0, dtype=torch.long), torch.zeros(len(idx), 0, dtype=torch.long))
        if head_cache is not None:
            cache = copy.deepcopy(head_cache)
            cache.batch_repeat_interleave(len(idx))
        else:
            cache = DynamicCache(config=lm.model.config)
        tokens_run += int(pre_mask.sum())
        # The header's columns count as real tokens in every mask from here on.
        pre_mask = torch.cat([torch.ones(len(idx), head_len, dtype=torch.long), pre_mask], dim=1)
        if pre_ids.shape[1]:
            read_blocks(lm, [deepest], **with_cache(lm.model, cache, use_cache=True, input_ids=pre_ids.to(device),
                                                    attention_mask=pre_mask.to(device),
                                                    position_ids=position_ids_for(pre_mask)[:, head_len:].to(device)))
        has_cache = pre_mask.shape[1] > 0
        if has_cache:
            cache.batch_repeat_interleave(2)  # rows (pair, side): 2k positive, 2k+1 negative
        width = max(map(len, tails))
        tail_ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
        tail_mask = torch.zeros((len(tails), width), dtype=torch.long)
        for r, t in enumerate(tails):
            tail_ids[r, : len(t)] = torch.tensor(t)
            tail_mask[r, : len(t)] = 1
        mask = torch.cat([pre_mask.repeat_interleave(2, 0), tail_mask], dim=1)
        tail = dict(input_ids=tail_ids.to(device), attention_mask=mask.to(device),
                    position_ids=position_ids_for(mask)[:, pre_mask.shape[1]:].to(device), use_cache=has_cache)
        grabbed = read_blocks(lm, layers, **(with_cache(lm.model, cache, **tail) if has_cache else tail))
        last = torch.tensor([len(t) - 1 for t in tails])
        rows = torch.arange(len(tails))
        for l in layers:
            h = grabbed[l].float().cpu()[rows, last]  # [2B, hidden]
            out_pos[l][idx] = h[0::2]
            out_neg[l][idx] = h[1::2]
        tokens_run += int(tail_mask.sum())
        bar.update(len(idx))
    bar.close()
    info = {"tokens_run": tokens_run, "shared_header_tokens": head_len, "tokens_full": sum(map(len, pos_ids)) + sum(map(len, neg_ids))}
    return PairActivations(pairs, tuple(layers), out_pos, out_neg, info)


def caa_vectors(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """CAA vectors for `layers` (default all) from `pairs`: `train_caa`'s result, with prefix sharing."""
    acts = extract_pair_activations(lm, pairs, layers, batch_size=batch_size, progress=progress)
    return acts.caa_vector(lm)
