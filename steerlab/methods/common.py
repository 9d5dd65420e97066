"""What every method shares: contrast-pair prompts and vector metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..data.records import ContrastPair
from ..encoding import Prompt, format_prompt
from ..errors import DatasetError
from ..vector import VectorMetadata, hash_texts

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def pair_prompts(lm: LoadedModel, pairs: Sequence[ContrastPair]) -> tuple[list[Prompt], list[Prompt]]:
    """Positive and negative prompts: the pair's prompt as the user turn, its answer opening the assistant turn."""
    if len(pairs) == 0:
        raise DatasetError("no contrast pairs given: the training set is empty")
    pos = [format_prompt(lm, p.prompt, p.positive) for p in pairs]
    neg = [format_prompt(lm, p.prompt, p.negative) for p in pairs]
    return pos, neg


def pairs_hash(pairs: Sequence[ContrastPair]) -> str:
    return hash_texts(t for p in pairs for t in (p.prompt, p.positive, p.negative))


def make_meta(lm: LoadedModel, *, method: str, layers: Sequence[int], position: str, data_hash: str, n_train: int,
              template: str | None = None, **extra) -> VectorMetadata:
    """Metadata for a vector trained on `lm`."""
    return VectorMetadata(
        model_id=lm.model_id,
        family=lm.family,
        hidden_size=lm.hidden_size,
        n_layers=lm.n_layers,
        method=method,
        layers=tuple(sorted(layers)),
        position=position,
        template=template or lm.template_name,
        data_hash=data_hash,
        n_train=n_train,
        extra=extra,
    )
