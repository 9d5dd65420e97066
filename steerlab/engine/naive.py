"""The reference the engine is checked against: one full forward per setting, no reuse.

For every setting and every (item, candidate), the whole sequence prompt + candidate is run with
`steerlab.steer` hooks installed by the setting's own terms, with `lengths` = the prompt length (so
"last_prompt" means the last prompt token) and position ids counted from each row's first real
token (left padding does not change results). Slow by design; use it to check `score` and to time it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

from ..activations import last_logits_only, position_ids_for
from ..encoding import EncodedBatch, pad_left
from ..steering import steer
from .items import ScoringItem, Setting, tokenize_items
from .scoring import _check_inputs
from .table import ScoreTable

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def score_naive(
    lm: LoadedModel,
    items: Sequence[ScoringItem],
    settings: Sequence[Setting],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> ScoreTable:
    """Same result as `score`, computed by a full forward of every sequence under every setting."""
    items, settings = list(items), list(settings)
    _check_inputs(items, settings, batch_size, 1)
    tokenized = tokenize_items(lm, items)
    seqs = [(i, j) for i, it in enumerate(tokenized) for j in range(len(it.candidate_ids))]
    max_c = max(len(it.candidates) for it in items)
    result = torch.full((len(settings), len(items), max_c), float("nan"))
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = lm.device
    bar = tqdm(total=len(settings) * len(seqs), desc="naive scoring", disable=not progress)
    for s, setting in enumerate(settings):
        for c0 in range(0, len(seqs), batch_size):
            chunk = seqs[c0:c0 + batch_size]
            rows = [tokenized[i].prompt_ids + tokenized[i].candidate_ids[j] for i, j in chunk]
            ids, mask = pad_left(rows, pad_id)
            batch = EncodedBatch(ids, mask, torch.tensor([tokenized[i].n_prompt for i, _ in chunk]),
                                 torch.tensor([tokenized[i].user_start for i, _ in chunk]),
                                 torch.tensor([tokenized[i].assistant_start for i, _ in chunk]),
                                 torch.tensor([tokenized[i].user_end for i, _ in chunk]))
            ctx = steer(lm, list(setting.steering), batch=batch) if setting.steering else contextlib.nullcontext()
            # left padding right-aligns the candidates: the last (longest + 1) columns hold every logit needed
            keep = 1 + max(len(tokenized[i].candidate_ids[j]) for i, j in chunk)
            with ctx, torch.no_grad():
                logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  position_ids=position_ids_for(mask).to(device), use_cache=False,
                                  **last_logits_only(lm.model, ids.shape[1], keep)).logits
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
            width = lp.shape[1]  # columns returned (all of them if the model ignores logits_to_keep)
            for r, (i, j) in enumerate(chunk):
                cand = tokenized[i].candidate_ids[j]
                start = width - len(cand)  # column of the candidate's first token
                cols = torch.arange(start - 1, width - 1)
                result[s, i, j] = lp[r, cols, torch.tensor(cand)].sum()
            bar.update(len(chunk))
    bar.close()
    return ScoreTable(result, settings, items, {"reuse": "naive"})
