"""Engine requests → what `steerlab.steering` runs: one-row `EncodedBatch`es, stacked into a left-padded
batch, and the batch's `steerlab.Steering` terms with one vector and strength per row.

Positions are not computed here: the stacked batch carries each row's own boundaries, so the
`steerlab.steering` hooks apply the position policies exactly as `steerlab.generate` does (the same
policies `base.steering_positions` states for one absolute position).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Optional, Sequence

import torch

from ....encoding import EncodedBatch
from ....per_row import batch_slots, batch_steering, slot_steering
from ....steering import Steering
from ..base import Condition, ConditionLeaf, EngineRequest, SteeringTerm


def encoded_row(request: EngineRequest) -> EncodedBatch:
    """The request's prompt as a one-row EncodedBatch (no padding). `after_user` stands in for the user
    text's end: `EncodedBatch.after_user_start` gives it back unchanged, since it is at most the last token."""
    n = request.prompt_tokens
    one = lambda v: torch.tensor([v], dtype=torch.long)  # noqa: E731
    return EncodedBatch(torch.tensor([list(request.token_ids)], dtype=torch.long), torch.ones(1, n, dtype=torch.long),
                        one(n), one(request.user_start), one(n), one(request.after_user))


def stack_rows(encs: Sequence[EncodedBatch], pad_id: int) -> EncodedBatch:
    """One left-padded EncodedBatch from single-row ones (every field: 2-D ones padded on the left)."""
    width = max(int(e.input_ids.shape[1]) for e in encs)
    values = {}
    for f in fields(EncodedBatch):
        parts = [getattr(e, f.name) for e in encs]
        if isinstance(parts[0], torch.Tensor) and parts[0].dim() == 2:
            fill = pad_id if f.name == "input_ids" else 0
            parts = [torch.nn.functional.pad(p, (width - p.shape[1], 0), value=fill) for p in parts]
        values[f.name] = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else parts[0]
    return EncodedBatch(**values)


def to_condition(c: Condition):
    """A seam condition tree → the `steerlab.condition` expression that decides it on this model."""
    from ....condition import AllOf, AnyOf, ConditionVector, Not

    if isinstance(c, ConditionLeaf):
        return ConditionVector(c.vector, c.name)
    children = [to_condition(x) for x in c.children]
    if c.op == "not":
        return Not(children[0])
    return AllOf(children) if c.op == "and" else AnyOf(children)


def batch_terms(rows: Sequence[Sequence[SteeringTerm]]) -> list[Steering]:
    """The steering of a whole batch: per (term index, policy), one Steering with a vector per row
    (`steerlab.per_row.batch_steering`, the regrouping the scoring engine uses too).

    A row without a k-th term (or whose k-th term has another policy) gets None (no steering) in that
    Steering; rows that are not steered at all add nothing. An all-unsteered batch gives []. Terms
    must be unconditional by now (the engine decides conditions at prefill and drops what did not fire)."""
    return batch_steering(rows, lambda k, _term: k)


def condition_key(c: Condition) -> tuple:
    """What makes two requests' conditions the same one (the same registered vectors in the same tree), so their
    rows share a slot and the condition is scored once per prefill."""
    if isinstance(c, ConditionLeaf):
        return ("leaf", c.name, id(c.vector))
    return (c.op, tuple(condition_key(x) for x in c.children))


def prefill_terms(rows: Sequence[Sequence[SteeringTerm]]) -> list[tuple[Steering, list[Optional[SteeringTerm]]]]:
    """The steering of a prefill whose rows' terms may carry conditions, with each slot's terms per row: a
    conditional term gets a slot of its own per condition, and that slot's `Steering` carries the condition, so
    `apply_steering` decides it for every row of the batch at once, inside the prefill (on the way up when every
    steered layer lies above the condition's, else by a look-ahead from the first steered layer) and gates the
    rows where it does not fire."""
    slots = batch_slots(rows, lambda k, t: (k, condition_key(t.condition), t.decide) if t.condition is not None else k)
    out = []
    for picked in slots:
        first = next(t for t in picked if t is not None)
        condition = None if first.condition is None else to_condition(first.condition)
        out.append((slot_steering(picked, condition=condition, decide=first.decide), picked))
    return out
