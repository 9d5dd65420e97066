"""Read-out in the built-in engine: per-token projections of the residual stream for the rows that ask.

A request's `ReadoutSpec`s become one `RowReadout` (its values so far, what is not yet streamed, the stop
rule's counters). For a forward call with read-out rows, `ReadoutTaps` adds forward hooks on the blocks
they read, after the steering hooks (which are prepended), so they see the steered stream as
`steerlab.readout` does; the projection itself is `steerlab.monitoring.project`. Only those rows'
hidden states are projected, and a forward call without read-out rows gets no hook at all, so plain
rows run exactly as before.

A token's projection is known once that token is fed to the model: the prompt's at prefill, a
generated token's at the next decoding step. So a read-out row runs one step past its last token
(see `scheduler._Row`), as `steerlab.readout` does.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import torch

from ....layers import block_hidden
from ....monitoring import project, unit_direction
from ..base import ReadoutSpec

Values = dict[str, dict[str, list[float]]]


class RowReadout:
    """One request's read-out: per name, the raw and cosine projection of every token read so far
    (prompt tokens first), how many have been streamed, and the stop rule's run of tokens above."""

    def __init__(self, specs: Sequence[ReadoutSpec], device):
        self.specs = tuple(specs)
        self.units = {s.name: unit_direction(s.vector.directions[s.layer]).to(device) for s in self.specs}
        self.values: Values = {s.name: {"raw": [], "cosine": []} for s in self.specs}
        self.sent = 0  # tokens whose values were streamed (the same count for every name)
        self._above = {s.name: 0 for s in self.specs}

    def record(self, name: str, raw: list[float], cosine: list[float]) -> None:
        self.values[name]["raw"].extend(raw)
        self.values[name]["cosine"].extend(cosine)

    def stop_tripped(self) -> bool:
        """After a generated token's values were recorded: whether a stop rule now holds (its raw projection
        above `stop_above` for `stop_tokens` generated tokens in a row)."""
        tripped = False
        for s in self.specs:
            if s.stop_above is None:
                continue
            self._above[s.name] = self._above[s.name] + 1 if self.values[s.name]["raw"][-1] > s.stop_above else 0
            tripped = tripped or self._above[s.name] >= s.stop_tokens
        return tripped

    def unsent(self) -> Optional[Values]:
        """The values recorded since the last call (None when there are none)."""
        n = len(self.values[self.specs[0].name]["raw"])
        if n == self.sent:
            return None
        out = {name: {k: v[self.sent:] for k, v in kinds.items()} for name, kinds in self.values.items()}
        self.sent = n
        return out

    def whole(self) -> Values:
        return {name: {k: list(v) for k, v in kinds.items()} for name, kinds in self.values.items()}


class ReadoutTaps:
    """Forward hooks for one forward call: for each (batch row, first position to keep, RowReadout), the
    projections of that row's positions from the first kept one on (left padding skipped)."""

    def __init__(self, lm, rows: Sequence[tuple[int, int, RowReadout]]):
        # per (layer, name): the rows reading it; one projection per group, on those rows only
        groups: dict[int, dict[str, list[tuple[int, int, RowReadout]]]] = defaultdict(lambda: defaultdict(list))
        for row, start, state in rows:
            for s in state.specs:
                groups[s.layer][s.name].append((row, start, state))
        self._handles = []
        try:
            for layer, by_name in groups.items():
                self._handles.append(lm.blocks[layer].register_forward_hook(self._hook(by_name)))
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _hook(by_name: dict[str, list[tuple[int, int, RowReadout]]]):
        def hook(module, args, output):
            h = block_hidden(output)
            for name, members in by_name.items():
                # rows reading the same name may read different vectors (re-registered between requests)
                for unit, part in _by_unit(name, members):
                    idx = torch.tensor([row for row, _, _ in part], device=h.device)
                    raw, cos = project(h.index_select(0, idx), unit)
                    raw, cos = raw.cpu(), cos.cpu()
                    for j, (_, start, state) in enumerate(part):
                        state.record(name, raw[j, start:].tolist(), cos[j, start:].tolist())
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _by_unit(name: str, members: list[tuple[int, int, RowReadout]]):
    """Members grouped by the unit vector they read under `name` (one group unless the name was re-registered)."""
    groups: list[tuple[torch.Tensor, list]] = []
    for m in members:
        unit = m[2].units[name]
        for u, part in groups:
            if u is unit or (u.shape == unit.shape and torch.equal(u, unit)):
                part.append(m)
                break
        else:
            groups.append((unit, [m]))
    return groups


__all__ = ["RowReadout", "ReadoutTaps"]
