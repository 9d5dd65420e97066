"""One forward step's steering, laid out so the add is the same tensor program every step.

Per decoder layer L there is a persistent per-token index `slots[L, :T]` (0 = not steered) into a
persistent table `table[L]` whose row 0 is zeros and whose rows 1.. hold this step's per-request deltas.
The add at block L is `residual + table[L][slots[L, :T]] * scale[L, :T, None]`: no data-dependent shapes or
Python branches, so it can sit inside a torch.compile'd graph (and a captured CUDA graph) while the buffers'
contents change between steps. `scale` is a strength schedule's weight of each token (`steerlab.schedules`;
1 where there is none), so a decaying push needs no table row per token. Unsteered tokens get `+ 0.0`, which
leaves every float bit unchanged.

Positions are absolute (the request's computed tokens + the token's offset in this step's chunk), so
chunked prefill, preemption and recomputation steer exactly the tokens a single whole pass would. The
policies mean what `steerlab.encoding`/`steerlab.steering` say. No vLLM import here: the runner side
(`runner.py`) hands in plain per-request rows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..position_policies import run_start as position_run_start, steered
from ..schedules import Schedule
from .spec import RequestSpec, SpecError
from .store import VectorStore, term_deltas

log = logging.getLogger("steerlab.vllm")


@dataclass(frozen=True)
class Row:
    """One request's tokens in this step: flattened tokens [start, start + count) at absolute positions
    computed .. computed + count - 1."""

    spec: Optional[RequestSpec]
    prompt_tokens: int
    start: int
    count: int
    computed: int


def _bounds(spec: RequestSpec, row: Row) -> dict:
    return {"after_user_start": spec.after_user_start(row.prompt_tokens), "prompt_len": row.prompt_tokens}


def steered_offsets(spec: RequestSpec, policy: str, row: Row) -> np.ndarray:
    """Offsets (within the row's chunk) of the tokens `policy` steers."""
    pos = np.arange(row.computed, row.computed + row.count)
    return np.nonzero(steered(policy, pos, **_bounds(spec, row)))[0]


def run_start(spec: RequestSpec, policy: str, row: Row) -> int:
    """The absolute position of the first token `policy` steers: where a schedule counts k from."""
    return position_run_start(policy, **_bounds(spec, row))


def schedule_weights(spec: RequestSpec, policy: str, row: Row, offsets: np.ndarray) -> Optional[np.ndarray]:
    """The request's schedule weight (float32) of each steered token at `offsets` of the row's chunk; None
    without a schedule. The same float32 values `steerlab.steering`'s hooks compute."""
    if spec.schedule is None:
        return None
    k = row.computed + offsets - run_start(spec, policy, row)
    return Schedule.parse(spec.schedule).weights(torch.from_numpy(k)).numpy()


class StepPlanner:
    """The persistent buffers of one worker's model and the code that fills them before each forward."""

    def __init__(self, n_layers: int, hidden: int, max_tokens: int, max_rows: int, device, dtype,
                 store: Optional[VectorStore] = None, cache_size: int = 1024):
        self.n_layers, self.hidden, self.max_tokens, self.max_rows = n_layers, hidden, max_tokens, max_rows
        self.device, self.dtype = torch.device(device), dtype
        self.slots = torch.zeros(n_layers, max_tokens, dtype=torch.long, device=device)
        self.table = torch.zeros(n_layers, max_rows + 1, hidden, dtype=dtype, device=device)
        self.scale = torch.ones(n_layers, max_tokens, 1, dtype=dtype, device=device)
        self.store = store or VectorStore()
        self.active: frozenset[int] = frozenset()  # layers with a steered token this step (eager skips the rest)
        self._used: tuple[frozenset[int], int] = (frozenset(), 0)
        self._scaled: frozenset[int] = frozenset()  # layers whose `scale` this step set
        self._deltas: OrderedDict[str, dict[int, torch.Tensor]] = OrderedDict()  # per spec, per layer (summed)
        self._cache_size = cache_size
        self._warned: set[str] = set()

    def deltas(self, spec: RequestSpec) -> dict[int, torch.Tensor]:
        """Per layer, the sum of the spec's terms' deltas (model dtype, on the device), per term policy."""
        key = spec.encode()
        hit = self._deltas.get(key)
        if hit is not None:
            self._deltas.move_to_end(key)
            return hit
        out: dict[int, list] = {}
        for term in spec.terms:
            vector, _ = self.store.get(term.vector, term.digest)
            for layer, d in term_deltas(term, vector, self.n_layers).items():
                out.setdefault(layer, []).append((term.positions, d))
        resolved = {layer: [(p, d.to(self.device, self.dtype)) for p, d in items] for layer, items in out.items()}
        self._deltas[key] = resolved
        if len(self._deltas) > self._cache_size:
            self._deltas.popitem(last=False)
        return resolved

    def prepare(self, rows: Sequence[Row]) -> None:
        """Fill the buffers for this step's rows (tokens of unsteered rows keep slot 0)."""
        used_layers: set[int] = set()
        total = sum(r.count for r in rows)
        if total > self.max_tokens:
            raise RuntimeError(f"step of {total} tokens exceeds the planned {self.max_tokens}")
        slots = None
        scale: Optional[np.ndarray] = None
        scaled: set[int] = set()
        next_row = [1] * self.n_layers
        for row in rows:
            if row.spec is None or row.count == 0:
                continue
            try:
                per_layer = self.deltas(row.spec)
            except SpecError as e:  # checked when the request was made; a vector removed since then
                if str(e) not in self._warned:
                    self._warned.add(str(e))
                    log.error("steerlab: request not steered: %s", e)
                continue
            placed: dict[str, tuple] = {}  # per policy: its offsets and weights, the same at every layer
            for layer, items in per_layer.items():
                # tokens grouped by which of the layer's terms apply (policies nest, so at most 3 groups);
                # each group's table row is the sum of its terms' deltas, in term order (as steerlab adds)
                applies: dict[int, list[int]] = {}
                weight: dict[int, float] = {}  # a scheduled request's tokens (its terms share one policy)
                for k, (policy, _) in enumerate(items):
                    if policy not in placed:
                        offsets = steered_offsets(row.spec, policy, row)
                        placed[policy] = (offsets, schedule_weights(row.spec, policy, row, offsets))
                    offsets, w = placed[policy]
                    for n, j in enumerate(offsets):
                        if w is not None:
                            if w[n] == 0.0:  # first:N past N: the hooks add exact zeros there
                                continue
                            weight[int(j)] = float(w[n])
                        applies.setdefault(int(j), []).append(k)
                if not applies:
                    continue
                if slots is None:
                    slots = np.zeros((self.n_layers, total), dtype=np.int64)
                if weight:
                    if scale is None:
                        scale = np.ones((self.n_layers, total), dtype=np.float32)
                    scale[layer, [row.start + j for j in weight]] = list(weight.values())
                    scaled.add(layer)
                groups: dict[tuple[int, ...], list[int]] = {}
                for j, ks in applies.items():
                    groups.setdefault(tuple(ks), []).append(row.start + j)
                for ks, tokens in groups.items():
                    r = next_row[layer]
                    if r > self.max_rows:
                        raise RuntimeError("more steered rows in one step than planned")
                    next_row[layer] += 1
                    d = items[ks[0]][1]
                    for k in ks[1:]:
                        d = d + items[k][1]
                    self.table[layer, r].copy_(d)
                    slots[layer, tokens] = r
                used_layers.add(layer)
        if slots is not None:
            layers = sorted(used_layers)
            self.slots[layers, :total] = torch.from_numpy(slots[layers]).to(self.device, non_blocking=True)
        if scale is not None:
            layers = sorted(scaled)
            # float32 weights cast to the model's dtype, as the hooks cast theirs
            self.scale[layers, :total, 0] = torch.from_numpy(scale[layers]).to(self.device, self.dtype)
        self.active = frozenset(used_layers)
        self._used = (self.active, total)
        self._scaled = frozenset(scaled)

    def finish(self) -> None:
        """Zero what `prepare` set, so any later forward (vLLM's dummy and warm-up runs) is unsteered."""
        layers, total = self._used
        if layers and total:
            self.slots[sorted(layers), :total] = 0
        if self._scaled and total:
            self.scale[sorted(self._scaled), :total] = 1
        self.active = frozenset()
        self._used = (frozenset(), 0)
        self._scaled = frozenset()

    def add(self, layer: int, residual: torch.Tensor) -> torch.Tensor:
        """`residual` plus this step's deltas at block `layer` (same shape; +0.0 on unsteered tokens)."""
        n = residual.shape[0]
        return residual + self.table[layer].index_select(0, self.slots[layer, :n]) * self.scale[layer, :n]


__all__ = ["Row", "StepPlanner", "run_start", "schedule_weights", "steered_offsets"]
