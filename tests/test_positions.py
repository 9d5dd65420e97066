"""Position bookkeeping that must not depend on how the installed transformers calls the model.

Issue 12, items 1 and 2. With one prompt, transformers' `generate` calls the model without an attention
mask and names the KV cache `cache` (older versions: `past_key_values`, sometimes with `cache_position`),
so steering used to see every decoding step as position 0 and a batch of one was never steered with
the default "after_user" positions. And "after_user" used to start after the assistant header, so the
position predicting the first answer token was never steered (a Yes/No answer is one token).

References are plain: one full forward (no cache) over the final ids with the deltas added at positions
written out by hand (`expected_deltas` in test_steering).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import steerlab as sl
from steerlab.steering import Steering, _ForwardState, apply_steering
from test_steering import PROMPTS, Recorder, assert_exact_steering, expected_deltas, reference_forward


def _cache_with(lm, n: int) -> DynamicCache:
    """A cache already holding `n` tokens (run through the unsteered model)."""
    cache = DynamicCache(config=lm.model.config)
    with torch.no_grad():
        lm.model(input_ids=torch.zeros(1, n, dtype=torch.long), use_cache=True,
                 **{_cache_kw(lm): cache})
    assert cache.get_seq_length() == n
    return cache


def _cache_kw(lm) -> str:
    import inspect
    return "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"


# --------------------------------------------------------------------------------------------------
# _ForwardState: every keyword convention places the call at the same absolute columns
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("convention", ["past_key_values", "cache", "some_future_name", "positional",
                                        "cache_position_only", "mask_only", "mask_and_cache"])
def test_forward_state_places_a_cached_step_whatever_the_keyword(tiny_lm, convention):
    lm = tiny_lm
    batch = sl.encode(lm, [PROMPTS[1]])
    n = int(batch.lengths[0])
    step = torch.zeros(1, 1, dtype=torch.long)
    cache = _cache_with(lm, n)
    args, kwargs = (), {"input_ids": step, "use_cache": True}
    if convention in ("past_key_values", "cache", "some_future_name"):
        kwargs[convention] = cache
    elif convention == "positional":  # model(input_ids, attention_mask, position_ids, cache)
        args, kwargs = (step, None, None, cache), {}
    elif convention == "cache_position_only":
        kwargs["cache_position"] = torch.tensor([n])
    elif convention == "mask_only":
        kwargs["attention_mask"] = torch.ones(1, n + 1, dtype=torch.long)
    else:
        kwargs.update(attention_mask=torch.ones(1, n + 1, dtype=torch.long), cache=cache)
    for b in (batch, None):
        state = _ForwardState(b)
        state.update(args, kwargs)
        assert state.cols.tolist() == [n] and state.pad.tolist() == [0], (convention, b is None)


def test_forward_state_prefill_and_left_pads(tiny_lm):
    lm = tiny_lm
    batch = sl.encode(lm, PROMPTS)
    width = batch.input_ids.shape[1]
    pads = (width - batch.lengths).tolist()
    assert max(pads) > 0
    for kwargs in ({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
                   {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                    "cache": DynamicCache(config=lm.model.config)},
                   {"input_ids": batch.input_ids}):  # no mask: the batch's own pads
        state = _ForwardState(batch)
        state.update((), kwargs)
        assert state.cols.tolist() == list(range(width)) and state.pad.tolist() == pads
        assert state.prompt_len.tolist() == batch.lengths.tolist()
    state = _ForwardState(None)  # no batch, no cache: a prefill whose prompt lengths come from the mask
    state.update((), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    assert state.prompt_len.tolist() == batch.lengths.tolist()


# --------------------------------------------------------------------------------------------------
# End to end on a tiny model: a batch of one, default positions, in generate and in hand-written loops
# --------------------------------------------------------------------------------------------------

def test_batch_of_one_is_steered_in_generate_with_default_positions(tiny_lm, vec_factory):
    """sl.generate on one prompt with "after_user" (the default of from_vector) equals the hand reference,
    and differs from the unsteered output. On the old bookkeeping nothing was steered at all."""
    lm = tiny_lm
    v = vec_factory(lm, [1], seed=31, scale=3.0)
    steering = Steering.from_vector(v, 6.0)
    assert steering.positions == "after_user"
    new = 5
    batch = sl.encode(lm, [PROMPTS[1]])
    handle = apply_steering(lm, steering, batch=batch)
    rec = Recorder(lm, [1], pre=True)  # registered after steering: its `pre` hook runs first
    try:
        with torch.no_grad():
            out = lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    max_new_tokens=new, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        rec.remove()
        handle.remove()
    width = batch.input_ids.shape[1]
    assert [c.shape[1] for c in rec.chunks] == [width] + [1] * (new - 1)
    cols = width + new - 1
    delta = expected_deltas(lm, batch, cols, [(1, [v], [6.0], "after_user")])[1]
    # the header (from the end-of-turn token), the last prompt token and every generated token
    assert (delta[0, width - 1:] != 0).all() and (delta[0, :width] != 0).sum() > 1
    assert_exact_steering(rec, 1, delta)
    ref_after, ref_logits = reference_forward(lm, rec.ids, torch.ones(1, cols, dtype=torch.long), {1: delta})
    torch.testing.assert_close(rec.post(3), ref_after[3], atol=1e-5, rtol=1e-5)
    assert torch.equal(ref_logits[:, width - 1:].argmax(-1), out[:, width:])

    # the public entry point gives the same text, and it is not the unsteered one
    text = sl.generate(lm, [PROMPTS[1]], steering, max_new_tokens=new)
    assert text == lm.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    assert text != sl.generate(lm, [PROMPTS[1]], max_new_tokens=new)
    # alone equals inside a padded batch
    assert sl.generate(lm, PROMPTS, Steering([None, v, None], [0.0, 6.0, 0.0], positions="after_user"),
                       max_new_tokens=new)[1] == text[0]


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # the old keyword on purpose
@pytest.mark.parametrize("keyword", ["past_key_values", "cache"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_hand_written_cached_loop_after_user_any_keyword(tiny_lm, vec_factory, keyword, with_mask):
    """A step-by-step cached loop over one prompt, the cache passed under either keyword, with or
    without an attention mask: every step is steered at its absolute position."""
    import inspect

    lm = tiny_lm
    if keyword not in inspect.signature(lm.model.forward).parameters and keyword != "past_key_values":
        pytest.skip(f"this transformers has no `{keyword}` keyword")
    batch = sl.encode(lm, [PROMPTS[0]])
    v = vec_factory(lm, [0, 2], seed=32)
    steps = 3
    handle = apply_steering(lm, Steering(v, -2.0, positions="after_user"), batch=batch)
    rec = Recorder(lm, [0, 2], pre=True)
    try:
        with torch.no_grad():
            ids = batch.input_ids
            cache = DynamicCache(config=lm.model.config)
            mask = batch.attention_mask
            kw = {"attention_mask": mask} if with_mask else {}
            out = lm.model(input_ids=ids, use_cache=True, **{keyword: cache}, **kw)
            for _ in range(steps):
                nxt = out.logits[:, -1:].argmax(-1)
                mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
                kw = {"attention_mask": mask} if with_mask else {}
                out = lm.model(input_ids=nxt, use_cache=True, **{keyword: cache}, **kw)
    finally:
        rec.remove()
        handle.remove()
    cols = rec.ids.shape[1]
    assert cols == batch.input_ids.shape[1] + steps
    deltas = expected_deltas(lm, batch, cols, [(0, [v], [-2.0], "after_user"), (2, [v], [-2.0], "after_user")])
    for layer in (0, 2):
        assert_exact_steering(rec, layer, deltas[layer])
    ref_after, _ = reference_forward(lm, rec.ids, torch.ones(1, cols, dtype=torch.long), deltas)
    torch.testing.assert_close(rec.post(3), ref_after[3], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# The embedded model
# --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_model_one_prompt_default_positions_is_steered(real_lm):
    """SmolLM2, one chat prompt, `Steering.from_vector` defaults ("after_user"): the cached generate
    differs from the unsteered one and equals a full forward with the delta added by hand from the
    first token after the user's message (the end-of-turn token) on."""
    lm = real_lm
    prompt = "How was your weekend?"
    g = torch.Generator().manual_seed(0)
    v = sl.SteeringVector({9: 0.5 * torch.randn(lm.hidden_size, generator=g)},
                          sl.VectorMetadata(lm.model_id, lm.family, lm.hidden_size, lm.n_layers, "test", (9,)))
    steering = Steering.from_vector(v, 8.0)
    new = 6
    rec = Recorder(lm, [9], pre=False)
    try:
        texts = sl.generate(lm, [prompt], steering, max_new_tokens=new)
    finally:
        rec.remove()
    plain = sl.generate(lm, [prompt], max_new_tokens=new)
    assert texts != plain
    batch = sl.encode(lm, [prompt])
    width = batch.input_ids.shape[1]
    e = int(batch.user_end[0])
    assert lm.tokenizer.decode(batch.input_ids[0, :e]).endswith(prompt)
    assert lm.tokenizer.convert_ids_to_tokens(int(batch.input_ids[0, e])) == "<|im_end|>"
    cols = width + new - 1
    delta = torch.zeros(1, cols, lm.hidden_size)
    delta[0, e:] = 8.0 * v[9]  # by hand: the end-of-turn token, the assistant header, every generated token
    ref_after, ref_logits = reference_forward(lm, rec.ids, torch.ones(1, cols, dtype=torch.long), {9: delta})
    torch.testing.assert_close(rec.post(lm.n_layers - 1), ref_after[lm.n_layers - 1], atol=2e-3, rtol=1e-4)
    generated = ref_logits[:, width - 1:].argmax(-1)
    assert torch.equal(generated[:, :-1], rec.ids[:, width:])
    assert texts == lm.tokenizer.batch_decode(generated, skip_special_tokens=True)


@pytest.mark.slow
def test_real_model_effect_on_yes_no_persona_file_moves_the_gap(real_lm):
    """`measure_effect` (default positions) on a Yes/No MWE persona file: the answer is one token, so the
    only steered position that matters is the one predicting it; the shift must not be zero."""
    from pathlib import Path

    from steerlab.data.io import default_data_root
    from steerlab.data.mwe import load_mwe

    root = default_data_root()
    path = Path(root or "missing") / "mwe" / "persona" / "agreeableness.jsonl"
    if not path.exists():
        pytest.skip(f"evaluation data not found at {path}")
    pairs = [item.to_pair() for item in load_mwe(path)]  # as `steerlab effect FILE` reads it
    assert {p.positive.strip() for p in pairs} <= {"Yes", "No"}
    train, held = pairs[:40], pairs[40:56]
    vec = sl.train_caa(lm := real_lm, train, [9], position="last")
    rep = sl.measure_effect(lm, vec, held, strengths=[-8.0, 8.0])
    assert rep.positions == "after_user"
    for s in (-8.0, 8.0):  # with the old boundary every per-item change was exactly 0.0
        changes = [a - b for a, b in zip(rep.gaps[s], rep.gaps[0.0])]
        assert min(abs(c) for c in changes) > 1e-4 and abs(rep.shift(s)) > 1e-3


# --------------------------------------------------------------------------------------------------
# Issue 12 §5: no deprecated cache keyword on the way (current API, not silenced warnings)
# --------------------------------------------------------------------------------------------------

def test_steerlab_calls_use_the_current_cache_api(tiny_lm, vec_factory, monkeypatch):
    """Generation, scoring (multi-token candidates: the cached continuation path), extraction and
    capture neither pass `past_key_values` nor read `output.past_key_values` when the installed
    transformers calls it `cache`: no FutureWarning, no deprecation log line."""
    import warnings

    import transformers.utils.generic as tg

    from steerlab.engine import ScoringItem, Setting, caa_vectors, score
    from steerlab.data.records import ContrastPair

    lm = tiny_lm
    logged = []
    monkeypatch.setattr(tg.logger, "warning_once", lambda msg, *a, **k: logged.append(str(msg)))
    v = vec_factory(lm, [1, 2], seed=33)
    items = [ScoringItem(sl.format_prompt(lm, "Which one?", "("), ("A", "B) is it")),
             ScoringItem(sl.format_prompt(lm, "Is it?"), ("Yes indeed", "No"))]
    pairs = [ContrastPair("Say it.", "Yes, gladly", "No, never"), ContrastPair("Again?", "Sure", "Nope")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sl.generate(lm, PROMPTS[:1], Steering(v, 2.0, positions="after_user"), max_new_tokens=3)
        sl.generate(lm, PROMPTS, Steering(v, 2.0, positions="after_user"), max_new_tokens=3)
        score(lm, items, [Setting.unsteered(), Setting.single(v, 1, 2.0, "after_user"),
                          Setting.single(v, 2, -1.0, "all")])
        caa_vectors(lm, pairs, layers=[1, 2])
    bad = [str(w.message) for w in caught if "past_key_values" in str(w.message) or issubclass(w.category, FutureWarning)]
    assert not bad, bad
    assert not [m for m in logged if "past_key_values" in m], logged


# --------------------------------------------------------------------------------------------------
# Issue 12 §5 / issue 13: one normalisation of a Steering term, one documented default
# --------------------------------------------------------------------------------------------------

def test_negative_layers_are_normalised_once_everywhere(tiny_lm, vec_factory):
    """layers=[-1] means the last block in apply_steering, generate and the scoring engine alike."""
    from steerlab.engine import ScoringItem, Setting, score

    lm = tiny_lm
    last = lm.n_layers - 1
    v = vec_factory(lm, [1, last], seed=34)
    neg, pos = Steering(v, 3.0, layers=[-1], positions="all"), Steering(v, 3.0, layers=[last], positions="all")
    assert neg.normalized(lm).layers == (last,)
    assert Steering(v, 3.0, layers=[-1, last, 1]).normalized(lm).layers == (1, last)  # once each, sorted
    batch = sl.encode(lm, PROMPTS)
    with torch.no_grad():
        with sl.steer(lm, [neg], batch=batch):
            a = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with sl.steer(lm, [pos], batch=batch):
            b = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        plain = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(a, b) and not torch.equal(a, plain)
    assert sl.generate(lm, PROMPTS, neg, max_new_tokens=4) == sl.generate(lm, PROMPTS, pos, max_new_tokens=4)
    items = [ScoringItem(sl.format_prompt(lm, "Which?", "("), ("A", "B C"))]
    t = score(lm, items, [Setting((neg,)), Setting((pos,))]).logprobs
    assert torch.equal(t[0], t[1])


def test_steering_has_one_documented_default(tiny_lm, vec_factory):
    from steerlab.steering import DEFAULT_POSITIONS, DEFAULT_STRENGTH

    lm = tiny_lm
    v = vec_factory(lm, [1], seed=35)
    plain, from_vec = Steering(v), Steering.from_vector(v)
    assert (plain.strength, plain.positions) == (from_vec.strength, from_vec.positions) == (DEFAULT_STRENGTH, DEFAULT_POSITIONS)
    assert (DEFAULT_STRENGTH, DEFAULT_POSITIONS) == (4.0, "after_user")
    # generate with the bare term equals the explicit one
    assert sl.generate(lm, PROMPTS[:1], Steering(v), max_new_tokens=3) == \
        sl.generate(lm, PROMPTS[:1], Steering(v, 4.0, positions="after_user"), max_new_tokens=3)


def test_normalized_checks_and_canonicalises(tiny_lm, vec_factory):
    from steerlab.errors import LayerError, SteerlabError

    lm = tiny_lm
    v = vec_factory(lm, [1], seed=36)
    import numpy as np
    t = Steering([v, None], [np.float32(2.0), torch.tensor(-1.0)], layers=[1]).normalized(lm, rows=2)
    assert t.strength == [2.0, -1.0] and all(type(s) is float for s in t.strength) and t.vector == [v, None]
    assert Steering(v, np.float64(1.5)).normalized(lm).strength == 1.5
    with pytest.raises(LayerError, match="out of range"):
        Steering(v, 1.0, layers=[-(lm.n_layers + 1)]).normalized(lm)
    with pytest.raises(SteerlabError, match="got 2 for a batch of 3 rows"):
        Steering([v, v], 1.0).normalized(lm, rows=3)
    with pytest.raises(SteerlabError, match="2 per-row vectors but 3 per-row strengths"):
        Steering([v, v], [1.0, 2.0, 3.0]).normalized(lm)
    with pytest.raises(SteerlabError, match="unknown position policy"):
        Steering(v, positions="middle").normalized(lm)
    with pytest.raises(SteerlabError, match="sequence of integers"):
        Steering(v, layers=1).normalized(lm)
