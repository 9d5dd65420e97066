"""Contrastive Activation Addition: v_L = mean_i [h_L(x_i+) - h_L(x_i-)] (Rimsky et al.; GUIDE §2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from ..activations import ReadPosition, capture
from ..data.records import ContrastPair
from ..errors import SteerlabError
from ..vector import SteeringVector
from .common import make_meta, pair_prompts, pairs_hash

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def mean_difference(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean of row-wise differences [n, hidden] → [hidden], accumulated in float64."""
    if positive.shape != negative.shape:
        raise SteerlabError(f"activation shapes differ: {tuple(positive.shape)} vs {tuple(negative.shape)}")
    return (positive.double() - negative.double()).mean(0).float()


def caa_from_activations(lm: LoadedModel, positive: Mapping[int, torch.Tensor], negative: Mapping[int, torch.Tensor],
                         pairs: Sequence[ContrastPair], *, position: str = "last") -> SteeringVector:
    """The CAA vector of `pairs` from their activations ({layer: [n_pairs, hidden]} per side, row i =
    pair i): the mean difference per layer, with `train_caa`'s metadata. Every CAA vector in steerlab is
    built here (`train_caa`, `engine.caa_vectors`, `engine.PairActivations.caa_vector`)."""
    directions = {l: mean_difference(positive[l], negative[l]) for l in positive}
    meta = make_meta(lm, method="caa", layers=list(directions), position=position, data_hash=pairs_hash(pairs),
                     n_train=len(pairs))
    return SteeringVector(directions, meta)


def train_caa(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int] | None = None,
    *,
    position: ReadPosition = "last",
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """A CAA vector from contrast pairs, read at the last token (the answer letter for "(A"-style answers).

    Args:
        layers: layers to build directions for (default: every layer).
        position: "last" (default) or "mean" over the user text and answer.
    """
    layers = list(range(lm.n_layers)) if layers is None else [lm.blocks.check_layer(l) for l in layers]
    pos_prompts, neg_prompts = pair_prompts(lm, pairs)
    acts = capture(lm, pos_prompts + neg_prompts, layers, position, batch_size=batch_size, progress=progress)
    n = len(pairs)
    return caa_from_activations(lm, {l: a[:n] for l, a in acts.items()}, {l: a[n:] for l, a in acts.items()}, pairs,
                                position=position)
