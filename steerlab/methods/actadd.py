"""ActAdd (Turner et al.): one prompt pair, difference taken position by position.

Both prompts are run as plain text (no chat template), the shorter one right-padded with space
tokens so the positions line up; the [positions, hidden] difference is added position by position
from the first token of the user's text when steering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ..activations import capture_batch
from ..encoding import EncodedBatch
from ..errors import DatasetError
from ..vector import SteeringVector, hash_texts
from .common import make_meta

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def _space_id(tokenizer) -> int:
    ids = tokenizer(" ", add_special_tokens=False).input_ids
    if not ids:
        raise DatasetError("the tokenizer has no token for a space, needed to align ActAdd prompts")
    return ids[-1]


def train_actadd(lm: LoadedModel, positive: str, negative: str, layers: Sequence[int] | None = None) -> SteeringVector:
    """An ActAdd vector from one prompt pair, e.g. ("Love", "Hate")."""
    if not positive.strip() or not negative.strip():
        raise DatasetError("ActAdd needs two non-empty prompts")
    layers = list(range(lm.n_layers)) if layers is None else [lm.blocks.check_layer(l) for l in layers]
    tok = lm.tokenizer
    ids_p = tok(positive, add_special_tokens=False).input_ids
    ids_n = tok(negative, add_special_tokens=False).input_ids
    width = max(len(ids_p), len(ids_n))
    space = _space_id(tok)
    rows = [ids_p + [space] * (width - len(ids_p)), ids_n + [space] * (width - len(ids_n))]
    # A tokenizer that adds BOS in raw mode gets it here too; that position's difference is exactly zero
    # (same token, causal attention) and is dropped so the vector starts at the user's first token.
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok(" x").input_ids[:1] == [tok.bos_token_id] else []
    ids = torch.tensor([bos + r for r in rows])
    n = ids.shape[1]
    batch = EncodedBatch(ids, torch.ones_like(ids), torch.tensor([n, n]), torch.tensor([len(bos)] * 2), torch.tensor([n, n]))
    acts = capture_batch(lm, batch, layers, "user")
    directions = {l: (a[0] - a[1]).float() for l, a in acts.items()}
    meta = make_meta(lm, method="actadd", layers=layers, position="per-position", template="raw",
                     data_hash=hash_texts([positive, negative]), n_train=1, positive=positive, negative=negative)
    return SteeringVector(directions, meta)
