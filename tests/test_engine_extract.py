"""Pair extraction with the shared prefix run once equals full per-sequence capture (train_caa)."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.activations import capture
from steerlab.data.records import BehaviourItem, ContrastPair
from steerlab.engine import PairActivations, caa_vectors, extract_pair_activations
from steerlab.errors import DatasetError, SteerlabError
from steerlab.layers import find_decoder_blocks
from steerlab.methods.common import pair_prompts

ATOL = 1e-4


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=None,
                      tie_word_embeddings=True)
    torch.manual_seed(3)
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def lm(model, tokenizer) -> sl.LoadedModel:
    return sl.LoadedModel(model, tokenizer, "tiny-extract", find_decoder_blocks(model), True)


def _pairs() -> list[ContrastPair]:
    """MWE A/B and Yes/No pairs, answers of different token lengths, questions of different lengths."""
    ab = [BehaviourItem(f"Question {k}: {'really ' * k}would you agree?\n\nChoices:\n (A) Yes\n (B) No", m, n, "ab", "t", k)
          for k, (m, n) in enumerate([("A", "B"), ("B", "A"), ("A", "B"), ("B", "A"), ("A", "B")])]
    yn = [BehaviourItem(f"Is it true that statement {k} holds?", "Yes" if k % 2 else "No",
                        "No" if k % 2 else "Yes", "yesno", "t", k) for k in range(3)]
    return [it.to_pair() for it in ab + yn] + [
        ContrastPair("Tell me how you feel.", "I am absolutely delighted today", "Bad"),
        ContrastPair("Short", "No", "I would rather not say anything at all"),
    ]


def test_activations_equal_full_capture(lm):
    pairs = _pairs()
    acts = extract_pair_activations(lm, pairs, batch_size=4)
    pos, neg = pair_prompts(lm, pairs)
    full = capture(lm, pos + neg, list(range(lm.n_layers)), "last", batch_size=3)
    n = len(pairs)
    assert acts.layers == tuple(range(lm.n_layers))
    for l in acts.layers:
        torch.testing.assert_close(acts.positive[l], full[l][:n], rtol=0, atol=ATOL)
        torch.testing.assert_close(acts.negative[l], full[l][n:], rtol=0, atol=ATOL)
    assert acts.info["tokens_run"] < 0.7 * acts.info["tokens_full"]  # the questions ran once, not twice
    assert acts.info["shared_header_tokens"] > 0  # the chat template's common header ran once


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_shared_header_with_empty_and_long_questions(lm, batch_size):
    """An empty user message leaves nothing after the shared header in its batch: still exact."""
    pairs = [ContrastPair("", "Yes", "No"), ContrastPair("", "I agree entirely", "No"),
             ContrastPair("A much longer question that pads the others " * 3, "Yes", "No")]
    acts = extract_pair_activations(lm, pairs, batch_size=batch_size)
    pos, neg = pair_prompts(lm, pairs)
    full = capture(lm, pos + neg, list(range(lm.n_layers)), "last", batch_size=1)
    assert acts.info["shared_header_tokens"] > 0
    for l in acts.layers:
        torch.testing.assert_close(acts.positive[l], full[l][:3], rtol=0, atol=ATOL)
        torch.testing.assert_close(acts.negative[l], full[l][3:], rtol=0, atol=ATOL)


def test_caa_vectors_equal_train_caa(lm):
    pairs = _pairs()
    ref = sl.train_caa(lm, pairs, layers=[0, 2, 3])
    got = caa_vectors(lm, pairs, layers=[3, 0, 2], batch_size=3)
    assert got.layers == ref.layers
    for l in ref.layers:
        torch.testing.assert_close(got[l], ref[l], rtol=0, atol=ATOL)
    assert (got.meta.method, got.meta.position, got.meta.n_train, got.meta.data_hash) == (
        ref.meta.method, ref.meta.position, ref.meta.n_train, ref.meta.data_hash)


def test_raw_pairs_without_template_share_nothing(model, tokenizer):
    """No chat template and an empty prompt: "Love" / "Hate" share no token; the tail pass runs alone."""
    raw = sl.LoadedModel(model, tokenizer, "tiny-extract-raw", find_decoder_blocks(model), False)
    pairs = [ContrastPair("", "Love", "Hate"), ContrastPair("I feel ", "happy", "sad and tired"),
             ContrastPair("", "Good morning", "Go away")]
    ref = sl.train_caa(raw, pairs)
    got = caa_vectors(raw, pairs, batch_size=2)
    for l in ref.layers:
        torch.testing.assert_close(got[l], ref[l], rtol=0, atol=ATOL)


def test_subsets_and_errors(lm):
    pairs = _pairs()
    acts = extract_pair_activations(lm, pairs, layers=[1, 2])
    d = acts.positive[2].double() - acts.negative[2].double()
    torch.testing.assert_close(acts.mean_difference(2), d.mean(0).float())
    torch.testing.assert_close(acts.mean_difference(2, 3), d[:3].mean(0).float())
    torch.testing.assert_close(acts.mean_difference(2, [4, 0]), d[[0, 4]].mean(0).float())
    torch.testing.assert_close(acts.differences(1), acts.positive[1] - acts.negative[1])
    v = acts.caa_vector(lm, 4)
    assert v.meta.n_train == 4 and v.layers == (1, 2)
    torch.testing.assert_close(v[1], sl.train_caa(lm, pairs[:4], layers=[1])[1], rtol=0, atol=ATOL)
    with pytest.raises(SteerlabError, match="was not extracted"):
        acts.mean_difference(0)
    with pytest.raises(DatasetError, match="first 99"):
        acts.mean_difference(1, 99)
    with pytest.raises(DatasetError):
        extract_pair_activations(lm, [])
    assert isinstance(acts, PairActivations) and len(acts) == len(pairs)


@pytest.mark.slow
def test_real_model_caa_vectors_equal_train_caa(real_lm):
    pairs = [BehaviourItem(f"Would you accept change number {k}?\n (A) Yes\n (B) No", "A" if k % 2 else "B",
                           "B" if k % 2 else "A", "ab", "t", k).to_pair() for k in range(4)]
    layers = [0, 7, 15]
    ref = sl.train_caa(real_lm, pairs, layers=layers)
    got = caa_vectors(real_lm, pairs, layers=layers)
    for l in layers:
        torch.testing.assert_close(got[l], ref[l], rtol=0, atol=ATOL)
