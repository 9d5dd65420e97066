"""A batched, left-padded KV cache that rows join and leave between decoding steps.

Layout: every row's cached tokens end at the same column (left padding), so one decoding step feeds a
[rows, 1] chunk; the 2-D attention mask (1 = real token) says which columns each row attends to, and
position ids are per row. A newcomer's cache (prefilled on its own batch) is left-padded to the
longer of the two and concatenated on the batch axis; a finished row is dropped by index; columns
that are padding for every remaining row are cut from the left, so attention cost follows the rows
still running.

Works on transformers' `DynamicCache` made of plain `DynamicLayer`s (full attention: Llama, Qwen,
Mistral, GPT-2, ...). Other caches (sliding-window layers) cannot be spliced this way;
`can_splice` says so and the scheduler then lets rows join only when the batch is empty.
"""

from __future__ import annotations

import torch


def new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def _layers(cache):
    return list(getattr(cache, "layers", []))


def can_splice(cache) -> bool:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    layers = _layers(cache)
    return bool(layers) and all(type(l) is DynamicLayer for l in layers)


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[-2] = n
    return torch.cat([t.new_zeros(shape), t], dim=-2)


def merge(a, mask_a: torch.Tensor, b, mask_b: torch.Tensor):
    """Rows of cache `b` appended after those of `a` (left-padded to a common length). Returns (a, mask)."""
    la, lb = mask_a.shape[1], mask_b.shape[1]
    width = max(la, lb)
    for ka, kb in zip(_layers(a), _layers(b)):
        if not ka.is_initialized:
            continue
        ka.keys = torch.cat([_pad_left(ka.keys, width - la), _pad_left(kb.keys, width - lb)], dim=0)
        ka.values = torch.cat([_pad_left(ka.values, width - la), _pad_left(kb.values, width - lb)], dim=0)
    mask = torch.cat([torch.nn.functional.pad(mask_a, (width - la, 0)), torch.nn.functional.pad(mask_b, (width - lb, 0))])
    return a, mask


def select(cache, mask: torch.Tensor, keep: list[int], *, trim: bool = True):
    """Keep only rows `keep` (in that order), then (with `trim`, for spliceable caches only) cut columns
    that are padding for all of them. The cache is narrowed in place (`engine.cache.select_rows`, the one
    row selection the scoring engine uses too), so the old rows are freed as it goes."""
    from ....engine.cache import select_rows  # here: importing the engine package loads transformers

    idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, idx)
    real = mask.any(0)
    first = int(real.nonzero()[0]) if trim and bool(real.any()) else 0
    return select_rows(cache, idx, start=first, in_place=True), mask[:, first:].contiguous()
