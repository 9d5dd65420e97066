"""KV-cache plumbing for the engine: shared prompt prefixes, row expansion, and skipping low blocks.

Two tricks keep the engine exact while doing less work (see `scoring` for where they are used):

* **Prefix reuse.** Every setting sees the same prompt tokens before its first steered position, so
  their keys and values are computed once (the unsteered base pass) and copied into the rows of a
  steered run, which then only feeds the remaining tokens.
* **Skipping the blocks below the steered layer.** Blocks below the lowest steered layer L compute
  exactly what they compute unsteered, at every position. The engine replaces their `forward`
  (temporarily, on the instance) by a stub: block L-1's stub returns the unsteered output of block
  L-1 recorded in the base pass, the others return their input untouched, and each advances a
  `LengthOnlyLayer` in the cache, which holds no data but keeps the length transformers reads to
  build the attention mask. Blocks L and above run for real on the recorded stream.

Both need a cache made of plain `DynamicLayer`s (full attention, no sliding window or recurrent
state); skipping also needs blocks that return the hidden-state tensor itself (transformers 5
style). The engine checks both and otherwise falls back (see `engine.scoring`), always exactly.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Iterator

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ..errors import SteerlabError

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

_MISSING = object()


class LengthOnlyLayer(DynamicLayer):
    """The cache of a skipped block: a sequence length and nothing else.

    transformers sizes the attention mask from the cache's first full-attention layer; this layer
    reports the length the skipped block would have cached. Writing to it is a bug (the block it
    belongs to must not run), so `update` raises.
    """

    def __init__(self, length: int):
        super().__init__()
        self.length = int(length)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:  # pragma: no cover
        raise SteerlabError("internal error: a skipped block's cache was initialised")

    def update(self, key_states, value_states, *args, **kwargs):
        raise SteerlabError("internal error: a skipped block tried to use its KV cache")

    def get_seq_length(self) -> int:
        return self.length

    def advance(self, n: int) -> None:
        self.length += int(n)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        pass

    def batch_repeat_interleave(self, repeats: int) -> None:
        pass

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        pass

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self.length = max(0, self.length + tokens_to_remove)


def filled_layer(keys: torch.Tensor, values: torch.Tensor) -> DynamicLayer:
    """A DynamicLayer holding `keys` / `values` ([rows, heads, length, head_dim]) without copying them."""
    layer = DynamicLayer()
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    return layer


def cache_of(layers: list) -> DynamicCache:
    """A DynamicCache made of the given layer objects (no layers are added on the fly)."""
    cache = DynamicCache()
    cache.layers = list(layers)
    cache.layer_class_to_replicate = None
    return cache


def is_plain(cache: Cache | None, n_layers: int) -> bool:
    """Whether the cache is one plain DynamicLayer per block (what prefix slicing and skipping need)."""
    if cache is None or not hasattr(cache, "layers") or len(cache.layers) != n_layers:
        return False
    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


def _take(t: torch.Tensor, index: torch.Tensor, start: int) -> torch.Tensor:
    """Rows `index` of a [rows, heads, length, head_dim] tensor, cached positions `start`.. only."""
    t = t.index_select(0, index.to(t.device))
    return t[..., start:, :].contiguous() if start else t


def select_rows(cache: Cache, index: torch.Tensor, *, start: int = 0, in_place: bool = False) -> Cache:
    """A cache whose row r is row `index[r]` of `cache`, holding cached positions `start`.. only
    (what the engine keeps for its scoring rows, and the server's engine for the rows still running).

    By default a new cache, the input left untouched (the engine reuses its base cache for every
    setting): plain and length-only layers are rebuilt directly (one copy of the selected keys/values),
    any other cache type is deep-copied and narrowed with its own `batch_select_indices` (`start` 0 only).
    With `in_place`, `cache`'s own layers are narrowed, whatever their type, and `cache` is returned: a
    running batch that drops rows then frees the old keys/values layer by layer, so memory grows by one
    layer's copy rather than a whole cache's.
    """
    layers = getattr(cache, "layers", None)
    if in_place:
        for layer in layers or []:
            if isinstance(layer, LengthOnlyLayer):
                layer.length = max(0, layer.length - start)
            elif layer.is_initialized:
                layer.keys, layer.values = _take(layer.keys, index, start), _take(layer.values, index, start)
        return cache
    if layers is not None and all(type(l) in (DynamicLayer, PreallocLayer, LengthOnlyLayer) for l in layers):
        out = []
        for layer in layers:
            if isinstance(layer, LengthOnlyLayer):
                out.append(LengthOnlyLayer(max(0, layer.length - start)))
            else:
                out.append(filled_layer(_take(layer.keys, index, start), _take(layer.values, index, start)))
        return cache_of(out)
    if start:
        raise SteerlabError("internal error: cached positions can be cut only from a cache of plain layers")
    fresh = copy.deepcopy(cache)
    fresh.batch_select_indices(index)
    return fresh


class PreallocLayer(DynamicLayer):
    """A DynamicLayer that appends into a preallocated buffer instead of concatenating.

    The prompt prefix is copied into the buffer once (broadcast over settings); the steered
    tokens are then written in place, so each row's prefix is copied once, not twice (a plain
    DynamicLayer would copy it again in `torch.cat`). Grows by concatenation if it ever overflows.
    """

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, filled: int):
        super().__init__()
        self.lazy_initialization(key_buffer, value_buffer)
        self._kb, self._vb = key_buffer, value_buffer
        self._filled = int(filled)
        self.keys, self.values = key_buffer[:, :, :filled], value_buffer[:, :, :filled]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        end = self._filled + n
        if end > self._kb.shape[-2]:  # not expected: fall back to growing
            self._kb = torch.cat([self._kb[:, :, : self._filled], key_states], dim=-2)
            self._vb = torch.cat([self._vb[:, :, : self._filled], value_states], dim=-2)
        else:
            self._kb[:, :, self._filled:end] = key_states
            self._vb[:, :, self._filled:end] = value_states
        self._filled = end
        self.keys, self.values = self._kb[:, :, :end], self._vb[:, :, :end]
        return self.keys, self.values


class BufferPool:
    """Scratch memory reused by successive chunks' caches.

    A chunk's cache is hundreds of MB that live only until the next chunk; allocating it afresh
    each time costs more in page faults than the copy itself. Buffers are handed out by key and
    overwritten by the next chunk, so a cache built from the pool must be dropped before the next
    one is built (the engine builds and uses them strictly one after the other).
    """

    def __init__(self) -> None:
        self._buffers: dict = {}

    def take(self, key, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= int(d)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = like.new_empty(n)
            self._buffers[key] = buf
        return buf[:n].view(shape)


def prefix_cache(base: DynamicCache, columns: int, repeats: int, skip_below: int, room: int = 0,
                 pool: BufferPool | None = None) -> DynamicCache:
    """The first `columns` cached positions of a plain base cache, tiled `repeats` times over rows.

    Row r of the result is row r % B of `base` (rows ordered setting-major: (setting, item)).
    Layers below `skip_below` become LengthOnlyLayers (their blocks will be skipped); the others
    are PreallocLayers with `room` free positions for the tokens about to be fed, in buffers from
    `pool` when given.
    """
    out = []
    for l, layer in enumerate(base.layers):
        if l < skip_below:
            out.append(LengthOnlyLayer(columns))
            continue
        bufs = []
        for name, src in (("k", layer.keys), ("v", layer.values)):
            b, h, _, d = src.shape
            shape = (repeats * b, h, columns + room, d)
            buf = pool.take((l, name), shape, src) if pool is not None else src.new_empty(shape)
            tiles = buf.view(repeats, b, h, columns + room, d)
            for r in range(repeats):  # one plain copy per tile: faster than a stride-0 broadcast copy
                tiles[r, :, :, :columns] = src[:, :, :columns]
            bufs.append(buf)
        out.append(PreallocLayer(bufs[0], bufs[1], columns))
    return cache_of(out)


def _block_input(args, kwargs) -> torch.Tensor:
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise SteerlabError("internal error: a skipped block was called without its hidden states")
    return x


def _stub(index: int, below: int, cache: DynamicCache, hidden: torch.Tensor):
    def forward(*args, **kwargs):
        x = _block_input(args, kwargs)
        layer = cache.layers[index]
        if not isinstance(layer, LengthOnlyLayer):
            raise SteerlabError("internal error: a skipped block has a real cache layer")
        layer.advance(x.shape[1])
        if index == below - 1:
            if tuple(hidden.shape[:2]) != tuple(x.shape[:2]):
                raise SteerlabError(
                    f"internal error: recorded stream {tuple(hidden.shape)} does not fit the call {tuple(x.shape)}"
                )
            return hidden.to(x.device, x.dtype)
        return x

    return forward


@contextlib.contextmanager
def skip_blocks(lm: LoadedModel, below: int, cache: DynamicCache, hidden: torch.Tensor) -> Iterator[None]:
    """Within the block, blocks 0..below-1 do not compute: block below-1 outputs `hidden`.

    `cache.layers[l]` must be a LengthOnlyLayer for every skipped block. The original `forward`
    attributes are restored on exit, exceptions included.
    """
    if below <= 0:
        yield
        return
    blocks = [lm.blocks[l] for l in range(below)]
    saved = [blk.__dict__.get("forward", _MISSING) for blk in blocks]
    try:
        for l, blk in enumerate(blocks):
            blk.forward = _stub(l, below, cache, hidden)
        yield
    finally:
        for blk, old in zip(blocks, saved):
            if old is _MISSING:
                blk.__dict__.pop("forward", None)
            else:
                blk.forward = old
