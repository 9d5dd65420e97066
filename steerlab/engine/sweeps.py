"""Sweeps over layers, strengths and training-set size, each one `score` call.

Every sweep returns a `SweepResult`: the full `ScoreTable` (per-item, per-candidate values, so
confidence intervals can be computed later) plus what varied. `.to_frame()` is tidy (one row per
setting x item x candidate); `.per_item()` has one row per setting x item with the target's
probability; `.summary()` averages that per setting.

The sample-count sweep extracts pair activations once (`extract_pair_activations`, all layers in
one pass), shuffles the pairs with `seed`, and builds the vector for n pairs as the mean
difference over the first n of that order, so the subsets are nested (10 is inside 20 is inside 40
...) and nothing is re-extracted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence


from ..data.records import ContrastPair
from ..errors import DatasetError, SteerlabError
from ..vector import SteeringVector
from .extract import PairActivations, extract_pair_activations
from .items import ScoringItem, Setting
from .scoring import score
from .table import ScoreTable

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def grid_settings(
    vector: SteeringVector,
    layers: Sequence[int],
    strengths: Sequence[float],
    positions: str = "all",
    include_unsteered: bool = True,
) -> list[Setting]:
    """Unsteered (optional, first), then one single-layer setting per (layer, strength), layer-major."""
    if not len(layers) or not len(strengths):
        raise SteerlabError("a grid needs at least one layer and one strength")
    out = [Setting.unsteered()] if include_unsteered else []
    out += [Setting.single(vector, l, s, positions) for l in layers for s in strengths]
    return out


@dataclass
class SweepResult:
    """A sweep's scores and what varied.

    Attributes:
        kind: "grid", "layer", "strength" or "sample_count".
        table: the ScoreTable (settings x items x candidates).
        n_train: per setting, the number of training pairs of its vector (sample-count sweeps), else None.
        vectors: the vectors swept (sample-count sweeps: {n_train: vector}).
        seed: the shuffling seed of a sample-count sweep.
    """

    kind: str
    table: ScoreTable
    n_train: list[int | None] = field(default_factory=list)
    vectors: dict[int, SteeringVector] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.n_train:
            self.n_train = [None] * len(self.table.settings)
        if len(self.n_train) != len(self.table.settings):
            raise SteerlabError("n_train must have one entry per setting")

    @property
    def settings(self) -> list[Setting]:
        return self.table.settings

    def to_frame(self):
        """Tidy DataFrame: the ScoreTable's columns plus sweep and n_train (see ScoreTable.to_frame)."""
        frame = self.table.to_frame()
        frame.insert(0, "sweep", self.kind)
        frame["n_train"] = frame["setting"].map(dict(enumerate(self.n_train))).astype("Int64")
        return frame

    def per_item(self, targets: Sequence[int | str] | None = None):
        """One row per (setting, item): p_target (normalized over candidates) and correct (argmax == target)."""
        import pandas as pd

        p = self.table.target_probs(targets)
        acc = self.table.accuracy(targets)
        rows = []
        for s, setting in enumerate(self.settings):
            for i in range(p.shape[1]):
                rows.append((self.kind, s, setting.label, setting.layer, setting.strength, setting.positions,
                             self.n_train[s], i, float(p[s, i]), float(acc[s, i])))
        frame = pd.DataFrame(rows, columns=["sweep", "setting", "label", "layer", "strength", "positions", "n_train",
                                            "item", "p_target", "correct"])
        for col in ("layer", "n_train"):
            frame[col] = frame[col].astype("Int64")
        return frame

    def summary(self, targets: Sequence[int | str] | None = None):
        """Per setting: mean and standard error of p_target, accuracy, number of items."""
        frame = self.per_item(targets)
        keys = ["setting", "label", "layer", "strength", "positions", "n_train"]
        g = frame.groupby(keys, dropna=False, sort=False)
        out = g.agg(p_target=("p_target", "mean"), p_target_sem=("p_target", "sem"), accuracy=("correct", "mean"),
                    n_items=("item", "count")).reset_index()
        return out


def grid_sweep(lm: LoadedModel, vector: SteeringVector, items: Sequence[ScoringItem], layers: Sequence[int],
               strengths: Sequence[float], positions: str = "all", *, include_unsteered: bool = True,
               **score_kw) -> SweepResult:
    """Every (layer, strength) pair of `vector`, plus the unsteered model."""
    settings = grid_settings(vector, layers, strengths, positions, include_unsteered)
    return SweepResult("grid", score(lm, items, settings, **score_kw))


def layer_sweep(lm: LoadedModel,
                vector: SteeringVector, items: Sequence[ScoringItem], layers: Sequence[int] | None = None,
                strength: float = 1.0, positions: str = "all", *, include_unsteered: bool = True,
                **score_kw) -> SweepResult:
    """One setting per layer (default: every layer of the vector) at a fixed strength."""
    layers = list(vector.layers) if layers is None else list(layers)
    settings = grid_settings(vector, layers, [strength], positions, include_unsteered)
    return SweepResult("layer", score(lm, items, settings, **score_kw))


def strength_sweep(lm: LoadedModel, vector: SteeringVector, items: Sequence[ScoringItem], strengths: Sequence[float],
                   layer: int | None = None, positions: str = "all", *, include_unsteered: bool = True,
                   **score_kw) -> SweepResult:
    """One setting per strength, at `layer` (None: every layer of the vector steered at once)."""
    from ..steering import Steering

    if not len(strengths):
        raise SteerlabError("a strength sweep needs at least one strength")
    settings = [Setting.unsteered()] if include_unsteered else []
    if layer is None:
        settings += [Setting((Steering(vector, float(s), positions=positions),)) for s in strengths]
    else:
        settings += [Setting.single(vector, layer, s, positions) for s in strengths]
    return SweepResult("strength", score(lm, items, settings, **score_kw))


def sample_count_sweep(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    items: Sequence[ScoringItem],
    counts: Sequence[int] = (10, 20, 40, 80, 160, 320),
    layers: Sequence[int] | None = None,
    strengths: Sequence[float] = (1.0,),
    positions: str = "after_user",
    seed: int = 0,
    *,
    activations: PairActivations | None = None,
    include_unsteered: bool = True,
    batch_size: int = 16,
    progress: bool = False,
    **score_kw,
) -> SweepResult:
    """CAA vectors from nested subsets of `pairs` (sizes `counts`), each scored at `layers` x `strengths`.

    The pairs are shuffled once with `seed`; the vector for n is the mean difference over the first
    n pairs of that order. Activations are extracted once for the largest count (or taken from
    `activations`, which must hold `pairs` in the given order and the requested layers).
    """
    pairs = list(pairs)
    counts = sorted({int(c) for c in counts})
    if not counts or counts[0] < 1:
        raise DatasetError(f"sample counts must be positive, got {counts}")
    if counts[-1] > len(pairs):
        raise DatasetError(f"the largest sample count ({counts[-1]}) exceeds the {len(pairs)} pairs available")
    layers = list(range(lm.n_layers)) if layers is None else [lm.blocks.check_layer(l) for l in layers]
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    needed = order[: counts[-1]]
    if activations is None:
        acts = extract_pair_activations(lm, [pairs[i] for i in needed], layers, batch_size=batch_size,
                                        progress=progress)
        subset_of = lambda n: n  # noqa: E731 - the first n extracted pairs are the first n of the order
    else:
        if len(activations) != len(pairs) or any(a is not b and a != b for a, b in zip(activations.pairs, pairs)):
            raise SteerlabError("activations= must be extracted from exactly these pairs, in this order")
        missing = [l for l in layers if l not in activations.positive]
        if missing:
            raise SteerlabError(f"activations= lack layers {missing}")
        acts = activations
        subset_of = lambda n: needed[:n]  # noqa: E731
    vectors = {n: acts.caa_vector(lm, subset_of(n), layers) for n in counts}
    settings = [Setting.unsteered()] if include_unsteered else []
    n_train: list[int | None] = [None] * len(settings)
    for n in counts:
        for l in layers:
            for s in strengths:
                settings.append(Setting.single(vectors[n], l, s, positions, label=f"n{n} L{l}@{s:g}/{positions}"))
                n_train.append(n)
    table = score(lm, items, settings, batch_size=batch_size, progress=progress, **score_kw)
    return SweepResult("sample_count", table, n_train, vectors, seed)
