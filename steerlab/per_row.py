"""Per-row steering in one batch: each row's own list of terms → the batch's `Steering` terms.

A batch whose rows are steered differently (the server's requests, the scoring engine's settings) runs
as a few `Steering` terms, each with one vector and strength per row (None / 0.0 for a row it does not
steer). Every term a row has goes in a *slot*; a slot becomes one `Steering`. Slots are keyed by the
term's position policy and strength schedule (one `Steering` has one of each) and by `slot_key(k, term)`, the caller's choice
of what else keeps terms apart; the n-th term of a row with a given key goes in that key's n-th slot.
Slots come out grouped by key, keys in the order they first appear (rows in order, each row's terms in
order), then by n. Since a row gets exactly its own terms (the others add exact zeros), the grouping
never changes what a row computes, only how many hooked terms the batch runs.
"""

from __future__ import annotations

from typing import Callable, Hashable, Optional, Protocol, Sequence, TypeVar

from .steering import Steering
from .vector import SteeringVector


class RowAddend(Protocol):
    """What one row's term must say: the vector (already restricted to the layers it steers), its
    strength, its position policy and its strength schedule (`steerlab.schedules`, canonical text)."""

    @property
    def vector(self) -> SteeringVector: ...

    @property
    def strength(self) -> float: ...

    @property
    def positions(self) -> str: ...

    @property
    def schedule(self) -> str: ...


T = TypeVar("T", bound=RowAddend)


def batch_slots(rows: Sequence[Sequence[T]], slot_key: Callable[[int, T], Hashable]) -> list[list[Optional[T]]]:
    """The slots of a batch whose row i runs `rows[i]` (see the module docs): per slot, the term each row puts in it
    (None for a row that puts none)."""
    depth: dict[tuple, int] = {}  # key → the most terms one row has under it (insertion order = first seen)
    placed: list[dict[tuple, T]] = []  # per row: (key, n) → its n-th term under that key
    for terms in rows:
        mine: dict[tuple, T] = {}
        seen: dict[tuple, int] = {}
        for k, t in enumerate(terms):
            key = (t.positions, t.schedule, slot_key(k, t))
            n = seen.get(key, 0)
            seen[key] = n + 1
            mine[(key, n)] = t
        for key, n in seen.items():
            depth[key] = max(depth.get(key, 0), n)
        placed.append(mine)
    return [[mine.get((key, n)) for mine in placed] for key, n_slots in depth.items() for n in range(n_slots)]


def slot_steering(picked: Sequence[Optional[T]], **options) -> Steering:
    """One slot as a `Steering` (a row without a term in it: None / 0.0); `options` go to `Steering` (e.g. a
    condition)."""
    first = next(t for t in picked if t is not None)
    return Steering([None if t is None else t.vector for t in picked],
                    [0.0 if t is None else t.strength for t in picked], layers=None, positions=first.positions,
                    schedule=first.schedule, **options)


def batch_steering(rows: Sequence[Sequence[T]], slot_key: Callable[[int, T], Hashable]) -> list[Steering]:
    """The `Steering` terms of a batch whose row i runs `rows[i]` (see the module docs for the slots);
    `slot_key(k, term)` is called with each term's index k in its row. Rows without terms add nothing,
    and a batch with none at all gives []."""
    return [slot_steering(picked) for picked in batch_slots(rows, slot_key)]
