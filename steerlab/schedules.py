"""Strength schedules: how a steering term's strength changes along the positions it steers.

A term steers a run of positions in each row: from the end of the user's message on ("after_user"), every token
("all"), the last prompt token ("last_prompt"), or an ActAdd vector's positions from the user's first token. A
schedule weighs the k-th position of that run (k = 0 at its first position), so during generation it follows the
answer token by token:

    constant    weight 1 everywhere (the default: the papers' steering).
    first:N     weight 1 for the first N positions, 0 after: push the start of the answer and let the model go on
                unsteered, so the later tokens pay no perplexity for the push.
    decay:H     weight 0.5 ** (k / H): the push halves every H positions.

The corpus perplexity of a scheduled term is measured under the same rule from each window's first token (policy
"all"), i.e. the cost on text written under the schedule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

from .errors import SteerlabError

if TYPE_CHECKING:  # torch only where weights are computed: the vLLM plugin's request checks parse without it
    import torch

#: The schedule kinds (see the module docstring).
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "first", "decay")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: `kind` and its `span` (N for first:N, H for decay:H, 0 for constant)."""

    kind: str = "constant"
    span: int = 0

    @classmethod
    def parse(cls, spec: "str | Schedule | None") -> "Schedule":
        """"constant", "first:N" or "decay:H" (N, H positive integers); a SteerlabError naming the forms else."""
        if isinstance(spec, Schedule):
            return spec
        text = (spec or "constant").strip().lower()
        if text == "constant":
            return cls()
        m = re.fullmatch(r"(first|decay):(\d+)", text)
        if not m or int(m.group(2)) < 1:
            raise SteerlabError(f"unknown strength schedule {spec!r}: use constant, first:N or decay:H "
                                "(N, H positive integers)")
        return cls(m.group(1), int(m.group(2)))

    @property
    def spec(self) -> str:
        """The canonical text form ("constant", "first:8", "decay:16")."""
        return "constant" if self.kind == "constant" else f"{self.kind}:{self.span}"

    @property
    def constant(self) -> bool:
        return self.kind == "constant"

    def weights(self, k: "torch.Tensor") -> "torch.Tensor":
        """The weight of the k-th steered position (float tensor shaped like `k`; 1 where k < 0, which the position
        policy masks anyway)."""
        import torch

        k = k.to(torch.float32)
        if self.kind == "first":
            return (k < self.span).to(torch.float32)
        if self.kind == "decay":
            return torch.pow(0.5, k.clamp_min(0) / self.span)
        return torch.ones_like(k)


def one_weight_per_token(terms: "Iterable[tuple[str, str]]") -> Optional[str]:
    """Why terms given as (schedule, position policy) pairs cannot share one weight per token, or None.

    An engine that adds a token's summed delta times one weight (the vLLM plugin) needs every term of a
    request to weigh that token alike; the simple sufficient rule: with any non-constant schedule, every
    term has that schedule and policy (then k counts from the same first position for all of them)."""
    pairs = [(Schedule.parse(s).spec, p) for s, p in terms]
    scheduled = [pair for pair in pairs if pair[0] != "constant"]
    if scheduled and any(pair != scheduled[0] for pair in pairs):
        schedule, policy = scheduled[0]
        return (f"with a strength schedule every steering term needs the same schedule and positions (here: "
                f"{schedule} at {policy}), so each steered token has one weight")
    return None
