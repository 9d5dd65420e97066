"""First principal component of pair differences, with a deterministic sign.

PCA directions have no sign of their own (peers have shipped vectors that point the wrong way at
random). We orient the component so that the mean difference projects positively on it, and scale
it by that mean projection, so it is in the same units as a CAA vector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ..activations import ReadPosition, capture
from ..data.records import ContrastPair
from ..errors import DatasetError
from ..vector import SteeringVector
from .common import make_meta, pair_prompts, pairs_hash

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def pca_direction(differences: torch.Tensor, *, center: bool = True) -> torch.Tensor:
    """Top principal direction of `differences` [n, hidden], oriented and scaled by the mean difference."""
    d = differences.double()
    if d.shape[0] < 2:
        raise DatasetError("PCA needs at least 2 contrast pairs")
    x = d - d.mean(0, keepdim=True) if center else d
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    u = vh[0]
    proj = float(d.mean(0) @ u)
    if proj < 0:
        u, proj = -u, -proj
    return (u * proj).float()


def train_pca(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    layers: Sequence[int] | None = None,
    *,
    position: ReadPosition = "last",
    center: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> SteeringVector:
    """A PCA-of-differences vector (see module docs for the sign and scale convention)."""
    layers = list(range(lm.n_layers)) if layers is None else [lm.blocks.check_layer(l) for l in layers]
    pos_prompts, neg_prompts = pair_prompts(lm, pairs)
    acts = capture(lm, pos_prompts + neg_prompts, layers, position, batch_size=batch_size, progress=progress)
    n = len(pairs)
    directions = {l: pca_direction(a[:n] - a[n:], center=center) for l, a in acts.items()}
    meta = make_meta(lm, method="pca", layers=layers, position=position, data_hash=pairs_hash(pairs), n_train=n,
                     centered=center)
    return SteeringVector(directions, meta)
