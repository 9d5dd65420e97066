"""Condition vectors (CAST, Lee et al. 2024): decide from a prompt's own hidden state whether to steer.

A condition vector is an ordinary `SteeringVector` (method "condition") whose direction at each layer is
the mean difference between the hidden states of prompts that should fire it and prompts that should not.
A prompt's *score* is the cosine similarity between its hidden state at the chosen layer (read at the
last prompt token, or averaged over the prompt) and that direction; the condition fires when the score
is on the chosen side (`comparator`) of `threshold`. Layer, reading, threshold and comparator are chosen
by F1 on a validation split held out from direction training, and recorded in the vector's metadata
(`extra["condition"]`) with the validation scores, so a saved file is the whole condition.

Conditions combine: `a & b`, `a | b`, `~a` (`AllOf`, `AnyOf`, `Not`). `Steering(vec, s, condition=c)` is
decided once per batch row, from that row's prompt, before the steered forward pass (see
`decide_steering`).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .activations import capture, capture_batch
from .encoding import EncodedBatch, Prompt
from .errors import DatasetError, VectorError
from .vector import SteeringVector, hash_texts

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from .models import LoadedModel

Comparator = Literal[">", "<"]
Reading = Literal["last", "mean"]
READINGS: tuple[str, ...] = ("last", "mean")
METHOD = "condition"


@dataclass(frozen=True)
class ConditionRule:
    """How a condition vector decides, and how well it did on its validation split."""

    layer: int
    reading: Reading
    threshold: float
    comparator: Comparator
    f1: float
    precision: float
    recall: float
    accuracy: float
    n_validation: int
    best_f1_by_reading: Mapping[str, float]  # the best validation F1 each reading reached (any layer)

    def fires(self, score: torch.Tensor) -> torch.Tensor:
        return score > self.threshold if self.comparator == ">" else score < self.threshold


def rule_of(vector: SteeringVector) -> ConditionRule:
    """The decision rule a condition vector records; a VectorError for any other vector."""
    raw = vector.meta.extra.get("condition") if vector.meta.method == METHOD else None
    if not isinstance(raw, Mapping):
        raise VectorError(f"not a condition vector (method '{vector.meta.method}'): train one with "
                          "`steerlab condition train` or steerlab.condition.train_condition")
    try:
        rule = ConditionRule(**{**raw, "layer": int(raw["layer"]), "threshold": float(raw["threshold"])})
    except (TypeError, KeyError, ValueError) as e:
        raise VectorError(f"condition vector metadata is malformed: {e}") from e
    if rule.comparator not in (">", "<") or rule.reading not in READINGS or rule.layer not in vector.directions:
        raise VectorError(f"condition vector metadata is malformed: {dict(raw)}")
    return rule


def condition_scores(directions: Mapping[int, torch.Tensor], acts: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Cosine similarity of each row of `acts[layer]` [n, hidden] with `directions[layer]` → {layer: [n]}."""
    return {l: torch.nn.functional.cosine_similarity(acts[l].float(), directions[l].float()[None, :], dim=-1)
            for l in directions}


@dataclass(frozen=True)
class _Fit:
    threshold: float
    comparator: Comparator
    f1: float
    precision: float
    recall: float
    accuracy: float


def best_threshold(scores: torch.Tensor, labels: torch.Tensor) -> _Fit:
    """The threshold and comparator maximising F1 of `labels` (True = should fire) on `scores`.
    Candidates are the midpoints between consecutive distinct scores (and beyond both ends)."""
    s = scores.double()
    values = torch.unique(s)
    mids = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6])
    labels = labels.bool()
    best: _Fit | None = None
    for comparator in (">", "<"):
        fired = (s[None, :] > mids[:, None]) if comparator == ">" else (s[None, :] < mids[:, None])
        tp = (fired & labels).sum(1).double()
        fp = (fired & ~labels).sum(1).double()
        fn = (~fired & labels).sum(1).double()
        tn = (~fired & ~labels).sum(1).double()
        f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
        # the middle of the best thresholds (max margin on both sides), not its edge
        tied = torch.nonzero(f1 >= f1.max() - 1e-12).flatten()
        i = int(tied[len(tied) // 2])
        fit = _Fit(float(mids[i]), comparator, float(f1[i]), float(tp[i] / max(float(tp[i] + fp[i]), 1.0)),
                   float(tp[i] / max(float(tp[i] + fn[i]), 1.0)), float((tp[i] + tn[i]) / len(s)))
        if best is None or fit.f1 > best.f1 + 1e-12:
            best = fit
    assert best is not None
    return best


def separation(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """|mean difference| of the two groups' scores over their pooled standard deviation (d')."""
    a, b = scores[labels.bool()].double(), scores[~labels.bool()].double()
    pooled = ((a.var(unbiased=False) + b.var(unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    return float((a.mean() - b.mean()).abs() / pooled)


def _split(items: Sequence[str], fraction: float, rng: random.Random) -> tuple[list[str], list[str]]:
    order = list(range(len(items)))
    rng.shuffle(order)
    n_val = max(1, round(len(items) * fraction))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def train_condition(
    lm: LoadedModel,
    positive: Sequence[str | Prompt],
    negative: Sequence[str | Prompt],
    layers: Sequence[int] | None = None,
    *,
    readings: Sequence[Reading] = READINGS,
    validation_fraction: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """A condition vector that fires on prompts like `positive` and not on prompts like `negative`.

    The directions (one per layer) come from the training part of both sets; layer × reading × threshold ×
    comparator are chosen by F1 on the held-out validation part (`validation_fraction` of each set).

    Args:
        layers: candidate layers (default: every layer).
        readings: "last" (the last prompt token, CAST's choice) and/or "mean" (over the user's text and
            the assistant header); each reading gets its own directions, the best one is kept.
    """
    for name, items in (("positive", positive), ("negative", negative)):
        if len(items) < 2:
            raise DatasetError(f"the {name} prompt set needs at least 2 prompts (one to train, one to validate), "
                               f"got {len(items)}")
    if not 0 < validation_fraction < 1:
        raise DatasetError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    bad = [r for r in readings if r not in READINGS]
    if bad or not readings:
        raise DatasetError(f"unknown reading {bad}: choose from {', '.join(READINGS)}")
    layers = list(range(lm.n_layers)) if layers is None else sorted({lm.blocks.check_layer(l) for l in layers})
    rng = random.Random(seed)
    pos_train, pos_val = _split(list(positive), validation_fraction, rng)
    neg_train, neg_val = _split(list(negative), validation_fraction, rng)
    prompts = pos_train + neg_train + pos_val + neg_val
    n_pt, n_nt, n_pv = len(pos_train), len(neg_train), len(pos_val)
    labels = torch.tensor([True] * n_pv + [False] * len(neg_val))

    best: tuple[float, int, str, _Fit] | None = None
    directions_by_reading: dict[str, dict[int, torch.Tensor]] = {}
    best_by_reading: dict[str, float] = {}
    for reading in readings:
        acts = capture(lm, prompts, layers, reading, batch_size=batch_size, progress=progress)
        dirs = {l: (a[:n_pt].double().mean(0) - a[n_pt:n_pt + n_nt].double().mean(0)).float()
                for l, a in acts.items()}
        directions_by_reading[reading] = dirs
        val_scores = condition_scores(dirs, {l: a[n_pt + n_nt:] for l, a in acts.items()})
        best_by_reading[reading] = 0.0
        for layer in tqdm(layers, desc=f"choosing a layer ({reading})", disable=not progress, unit="layer"):
            fit = best_threshold(val_scores[layer], labels)
            best_by_reading[reading] = max(best_by_reading[reading], fit.f1)
            # F1 first; among ties (a small validation split saturates at 1.0) the wider separation of
            # the two sets' scores, which holds up better on unseen prompts
            key = (round(fit.f1, 9), separation(val_scores[layer], labels))
            if best is None or key > best[0]:
                best = (key, layer, reading, fit)
    assert best is not None
    _, layer, reading, fit = best
    rule = ConditionRule(layer=layer, reading=reading, threshold=fit.threshold, comparator=fit.comparator,
                         f1=fit.f1, precision=fit.precision, recall=fit.recall, accuracy=fit.accuracy,
                         n_validation=len(labels), best_f1_by_reading=best_by_reading)
    texts = [p.text if isinstance(p, Prompt) else p for p in list(positive) + ["\x00"] + list(negative)]
    from .methods.common import make_meta  # methods sit beside this module; no cycle at import time

    meta = make_meta(lm, method=METHOD, layers=[layer], position=reading, data_hash=hash_texts(texts),
                     n_train=len(pos_train) + len(neg_train), condition=asdict(rule))
    return SteeringVector({layer: directions_by_reading[reading][layer]}, meta)


# -- conditions and their combinations ----------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """What a condition decided for each row of a batch: fired [rows] and every named leaf's score [rows]."""

    fired: torch.Tensor
    scores: dict[str, torch.Tensor]


class Condition:
    """Base of condition expressions: combine with `&`, `|` and `~`."""

    def leaves(self) -> list["ConditionVector"]:
        raise NotImplementedError

    def _combine(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __and__(self, other: "Condition") -> "Condition":
        return AllOf((self, other))

    def __or__(self, other: "Condition") -> "Condition":
        return AnyOf((self, other))

    def __invert__(self) -> "Condition":
        return Not(self)

    def decide(self, lm, batch: EncodedBatch) -> Decision:
        """Decide for every row of `batch`, from that row's prompt alone: one forward pass that stops after
        the deepest layer any leaf reads (a fraction of a prefill), unsteered."""
        leaves = self.leaves()
        for leaf in leaves:
            leaf.vector.check_compatible(lm, allow_other_family=True)
        scores: dict[str, torch.Tensor] = {}
        for reading in sorted({leaf.rule.reading for leaf in leaves}):
            group = [leaf for leaf in leaves if leaf.rule.reading == reading]
            acts = capture_batch(lm, batch, [leaf.rule.layer for leaf in group], reading)
            for leaf in group:
                l = leaf.rule.layer
                scores[leaf.name] = condition_scores({l: leaf.vector.directions[l]}, acts)[l]
        return Decision(self._combine(scores), scores)

    def check(self, lm, prompts: Sequence[str | Prompt], *, batch_size: int = 16,
              progress: bool = False) -> list["ConditionCheck"]:
        """Whether the condition fires for each prompt, with each leaf's score."""
        from .encoding import encode

        if len(prompts) == 0:
            raise DatasetError("no prompts to check")
        out: list[ConditionCheck] = []
        bar = tqdm(total=len(prompts), desc="checking the condition", disable=not progress, unit="prompt")
        for s in range(0, len(prompts), batch_size):
            chunk = list(prompts[s:s + batch_size])
            d = self.decide(lm, encode(lm, chunk, indices=range(s, s + len(chunk))))
            for i, p in enumerate(chunk):
                out.append(ConditionCheck(p.text if isinstance(p, Prompt) else p, bool(d.fired[i]),
                                          {k: float(v[i]) for k, v in d.scores.items()}))
            bar.update(len(chunk))
        bar.close()
        return out


@dataclass(frozen=True)
class ConditionCheck:
    """One prompt's decision: whether the condition fired, and each condition vector's score."""

    prompt: str
    fired: bool
    scores: dict[str, float]

    @property
    def score(self) -> float:
        """The score of a single-vector condition (the first leaf's for a combination)."""
        return next(iter(self.scores.values()))


class ConditionVector(Condition):
    """A trained condition vector under a name (leaf of a condition expression)."""

    def __init__(self, vector: SteeringVector, name: str = "condition"):
        self.vector = vector
        self.name = name
        self.rule = rule_of(vector)

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> "ConditionVector":
        return cls(SteeringVector.load(path), name or Path(path).stem)

    def leaves(self) -> list["ConditionVector"]:
        return [self]

    def _combine(self, scores):
        return self.rule.fires(scores[self.name])

    def __repr__(self) -> str:
        r = self.rule
        return f"ConditionVector({self.name!r}: layer {r.layer} {r.reading} score {r.comparator} {r.threshold:.4f})"


class _Combination(Condition):
    def __init__(self, children: Sequence[Condition]):
        if not children:
            raise VectorError(f"{type(self).__name__} needs at least one condition")
        for c in children:
            if not isinstance(c, Condition):
                raise VectorError(f"expected a condition, got {type(c).__name__}")
        self.children = tuple(children)
        every = [leaf for c in self.children for leaf in c.leaves()]
        clashes = {l.name for l in every if len({id(m.vector) for m in every if m.name == l.name}) > 1}
        if clashes:
            raise VectorError(f"two different condition vectors share the name {sorted(clashes)}")

    def leaves(self) -> list[ConditionVector]:
        seen: dict[str, ConditionVector] = {}
        for c in self.children:
            for leaf in c.leaves():
                seen.setdefault(leaf.name, leaf)
        return list(seen.values())


class AllOf(_Combination):
    """Fires when every child fires."""

    def _combine(self, scores):
        out = self.children[0]._combine(scores)
        for c in self.children[1:]:
            out = out & c._combine(scores)
        return out


class AnyOf(_Combination):
    """Fires when at least one child fires."""

    def _combine(self, scores):
        out = self.children[0]._combine(scores)
        for c in self.children[1:]:
            out = out | c._combine(scores)
        return out


class Not(_Combination):
    """Fires when its one child does not."""

    def __init__(self, child: Condition):
        super().__init__((child,))

    def _combine(self, scores):
        return ~self.children[0]._combine(scores)


def as_condition(value: Condition | SteeringVector | str | Path) -> Condition:
    """A condition from a Condition, a condition SteeringVector or a vector file path."""
    if isinstance(value, Condition):
        return value
    if isinstance(value, SteeringVector):
        return ConditionVector(value)
    if isinstance(value, (str, Path)):
        return ConditionVector.load(value)
    raise VectorError(f"a condition must be a condition vector, a file or a combination, got {type(value).__name__}")


def f1_score(fired: Sequence[bool], labels: Sequence[bool]) -> float:
    """F1 of `fired` against `labels` (True = should fire)."""
    tp = sum(1 for f, y in zip(fired, labels) if f and y)
    fp = sum(1 for f, y in zip(fired, labels) if f and not y)
    fn = sum(1 for f, y in zip(fired, labels) if not f and y)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0 if (fp or fn) else math.nan


__all__ = ["train_condition", "ConditionRule", "rule_of", "Condition", "ConditionVector", "AllOf", "AnyOf", "Not",
           "Decision", "ConditionCheck", "as_condition", "condition_scores", "best_threshold", "separation", "f1_score"]
