"""The scoring engine: candidate probabilities under many steering settings, reusing computation.

    from steerlab.engine import ScoringItem, Setting, score, grid_settings
    items = [ScoringItem(sl.format_prompt(lm, q, "("), ("A", "B"), target=0) for q in questions]
    table = score(lm, items, grid_settings(vec, layers=range(30), strengths=[-4, -2, 2, 4], positions="after_user"))
    table.to_frame()            # tidy: setting, label, layer, strength, item, candidate, logprob, prob

`score` is exact (equal to a full forward per setting with `steerlab.steer`, see `score_naive`)
and reuses what settings share: the prompt prefix before the first steered position (KV cache),
the blocks below the steered layer, the prompt across its candidates. `extract_pair_activations`
/ `caa_vectors` build CAA vectors for every layer running each pair's shared question once.
Sweeps (`layer_sweep`, `strength_sweep`, `grid_sweep`, `sample_count_sweep`) are single `score`
calls returning tidy `SweepResult`s.
"""

from .extract import PairActivations, caa_vectors, extract_pair_activations
from .items import ScoringItem, Setting, TokenizedItem, tokenize_items
from .naive import score_naive
from .scoring import score
from .sweeps import SweepResult, grid_settings, grid_sweep, layer_sweep, sample_count_sweep, strength_sweep
from .table import ScoreTable

__all__ = [
    "ScoringItem", "Setting", "ScoreTable", "score", "score_naive", "grid_settings", "SweepResult", "grid_sweep",
    "layer_sweep", "strength_sweep", "sample_count_sweep", "PairActivations", "extract_pair_activations",
    "caa_vectors", "TokenizedItem", "tokenize_items",
]
