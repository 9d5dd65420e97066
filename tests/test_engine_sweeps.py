"""Sweeps: the right settings, one scoring call each, tidy outputs; sample-count vectors from nested subsets."""

from __future__ import annotations

import random

import pytest
import torch

import steerlab as sl
from steerlab.data.records import ContrastPair
from steerlab.engine import (
    ScoringItem,
    extract_pair_activations,
    grid_settings,
    grid_sweep,
    layer_sweep,
    sample_count_sweep,
    score,
    strength_sweep,
)
from steerlab.errors import DatasetError, SteerlabError
from steerlab.layers import find_decoder_blocks

ATOL = 1e-4


@pytest.fixture(scope="module")
def lm(tokenizer) -> sl.LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=None,
                      tie_word_embeddings=True)
    torch.manual_seed(5)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    return sl.LoadedModel(model, tokenizer, "tiny-sweeps", find_decoder_blocks(model), True)


def _pairs(n: int) -> list[ContrastPair]:
    return [ContrastPair(f"Item {k}: {'so ' * (k % 4)}do you agree?\n (A) yes\n (B) no", *(("(A", "(B") if k % 2 else ("(B", "(A")))
            for k in range(n)]


def _items(lm) -> list[ScoringItem]:
    qs = ["Agree?\n (A) yes\n (B) no", "Would you, honestly and truly, agree?\n (A) no\n (B) yes", "Fine?\n (A) yes\n (B) no"]
    return [ScoringItem(sl.format_prompt(lm, q, "("), ("A", "B"), target=k % 2) for k, q in enumerate(qs)]


def test_sample_count_vectors_are_nested_mean_differences(lm):
    pairs, items = _pairs(12), _items(lm)
    counts, layers, strengths, seed = (3, 6, 12), [1, 2], [2.0, -4.0], 3
    res = sample_count_sweep(lm, pairs, items, counts, layers, strengths, "after_user", seed, batch_size=4)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    for n in counts:
        ref = sl.train_caa(lm, [pairs[i] for i in order[:n]], layers=layers)  # recomputed from scratch
        for l in layers:
            torch.testing.assert_close(res.vectors[n][l], ref[l], rtol=0, atol=ATOL)
        assert res.vectors[n].meta.n_train == n
    # settings: unsteered, then n x layer x strength; scores equal a direct score() of those settings
    assert len(res.settings) == 1 + len(counts) * len(layers) * len(strengths)
    assert res.n_train == [None] + [n for n in counts for _ in layers for _ in strengths]
    direct = score(lm, items, res.settings)
    torch.testing.assert_close(res.table.logprobs, direct.logprobs, rtol=0, atol=ATOL)
    frame = res.to_frame()
    assert len(frame) == len(res.settings) * 3 * 2 and set(frame.sweep) == {"sample_count"}
    assert frame.n_train.isna().sum() == 3 * 2 and set(frame.n_train.dropna()) == set(counts)
    # the same sweep from activations extracted beforehand
    acts = extract_pair_activations(lm, pairs, layers)
    again = sample_count_sweep(lm, pairs, items, counts, layers, strengths, "after_user", seed, activations=acts)
    for n in counts:
        for l in layers:
            torch.testing.assert_close(again.vectors[n][l], res.vectors[n][l], rtol=0, atol=ATOL)
    with pytest.raises(DatasetError, match="exceeds"):
        sample_count_sweep(lm, pairs, items, (5, 40), layers)
    with pytest.raises(SteerlabError, match="lack layers"):
        sample_count_sweep(lm, pairs, items, (4,), [0], activations=acts)


def test_layer_strength_and_grid_sweeps(lm):
    items = _items(lm)
    vec = sl.train_caa(lm, _pairs(4))  # every layer
    grid = grid_settings(vec, [1, 3], [1.0, -2.0, 4.0], "last_prompt")
    assert grid[0].is_unsteered and [(s.layer, s.strength) for s in grid[1:]] == [
        (1, 1.0), (1, -2.0), (1, 4.0), (3, 1.0), (3, -2.0), (3, 4.0)]
    assert all(s.positions == "last_prompt" for s in grid[1:])
    assert len(grid_settings(vec, [0], [1.0], include_unsteered=False)) == 1

    gs = grid_sweep(lm, vec, items, [1, 3], [1.0, -2.0, 4.0], "last_prompt")
    torch.testing.assert_close(gs.table.logprobs, score(lm, items, grid).logprobs, rtol=0, atol=ATOL)

    ls = layer_sweep(lm, vec, items, strength=3.0, positions="after_user")
    assert [s.layer for s in ls.settings] == [None, 0, 1, 2, 3] and ls.kind == "layer"
    ss = strength_sweep(lm, vec, items, [0.5, 8.0], layer=2)
    assert [(s.layer, s.strength) for s in ss.settings] == [(None, 0.0), (2, 0.5), (2, 8.0)]
    every = strength_sweep(lm, vec, items, [1.0], include_unsteered=False)
    assert every.settings[0].layers == (0, 1, 2, 3)

    per_item = ls.per_item()
    assert len(per_item) == 5 * 3 and {"p_target", "correct", "layer", "strength", "n_train"} <= set(per_item.columns)
    torch.testing.assert_close(torch.tensor(per_item.p_target.values, dtype=torch.float32).reshape(5, 3),
                               ls.table.target_probs())
    summary = ls.summary()
    assert len(summary) == 5 and list(summary.layer.isna()) == [True, False, False, False, False]
    assert summary.p_target.iloc[1] == pytest.approx(float(ls.table.target_probs()[1].mean()), abs=1e-6)
    assert (summary.n_items == 3).all()
    with pytest.raises(SteerlabError):
        grid_settings(vec, [], [1.0])
