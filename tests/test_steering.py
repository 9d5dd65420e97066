"""Steering against hand-computed references.

The claim under test: with steering on, the residual stream after block L equals the unsteered one
plus alpha·v at exactly the positions the policy names, and is bit-identical everywhere else (pads
included) — in a full forward, inside a cached `generate()` (steps of length 1, absolute positions),
in left-padded batches, with several terms at once and with a different vector and strength per row.

Two kinds of reference:
* in-run: a hook registered to run *before* steerlab's on block L records the unsteered output of
  the very same call; the next module's input is what steering made of it. Their difference must be
  exactly zero off the policy's positions and alpha·v on them.
* re-run: one plain full-sequence forward (no cache) over the final token ids, with a hand-written
  hook that adds alpha·v at the positions written out by a naive loop over rows and columns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerlab as sl
from steerlab.encoding import format_prompt
from steerlab.forward_cache import output_cache, with_cache
from steerlab.errors import LayerError, PromptTooLongError, SteerlabError, VectorError
from steerlab.steering import Steering, apply_steering, steer

PROMPTS = ["Hi", "Tell me a short story about a dragon and a knight.", "What is 2+2?"]


def _batch(lm, prefix_row: bool = True):
    """Three left-padded prompts of different lengths; the last one opens the assistant turn with "(A"."""
    prompts = list(PROMPTS)
    if prefix_row:
        prompts[2] = format_prompt(lm, PROMPTS[2], "The answer is (")
    return prompts, sl.encode(lm, prompts)


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------

def expected_mask(policy: str, batch: sl.EncodedBatch, columns: int) -> torch.Tensor:
    """[rows, columns] True where `policy` steers, written as a plain loop over absolute columns."""
    rows = len(batch)
    width = batch.input_ids.shape[1]
    out = torch.zeros(rows, columns, dtype=torch.bool)
    for i in range(rows):
        pad = width - int(batch.lengths[i])
        for c in range(columns):
            t = c - pad  # token index within the row's own sequence
            if t < 0:
                continue  # a pad: never steered
            if policy == "all":
                out[i, c] = True
            elif policy == "after_user":  # from the first token after the user's text, at latest the last prompt token
                out[i, c] = t >= min(int(batch.user_end[i]), int(batch.lengths[i]) - 1)
            elif policy == "last_prompt":
                out[i, c] = t == int(batch.lengths[i]) - 1
            else:
                raise AssertionError(policy)
    return out


def expected_deltas(lm, batch, columns, terms) -> dict[int, torch.Tensor]:
    """{layer: [rows, columns, hidden]} from terms (layer, [vector or None per row], [strength per row], policy)."""
    rows = len(batch)
    out: dict[int, torch.Tensor] = {}
    for layer, vecs, strengths, policy in terms:
        mask = expected_mask(policy, batch, columns)
        d = out.setdefault(layer, torch.zeros(rows, columns, lm.hidden_size))
        for i in range(rows):
            if vecs[i] is None:
                continue
            for c in range(columns):
                if mask[i, c]:
                    d[i, c] += strengths[i] * vecs[i][layer]
    return out


def _next_module(lm, layer: int):
    """The module whose input is the residual stream after block `layer`."""
    return lm.blocks[layer + 1] if layer + 1 < lm.n_layers else lm.model.model.norm


def _first_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def reference_forward(lm, ids, mask, deltas: dict[int, torch.Tensor]):
    """A plain full forward (no cache) adding deltas[L] to block L's output; returns ({L: stream after L}, logits)."""
    after: dict[int, torch.Tensor] = {}
    handles = []
    for layer, d in deltas.items():
        handles.append(lm.blocks[layer].register_forward_hook(lambda m, a, o, d=d: o + d))
    for layer in list(deltas) + [lm.n_layers - 1]:
        handles.append(_next_module(lm, layer).register_forward_pre_hook(
            lambda m, a, k, layer=layer: after.__setitem__(layer, _first_arg(a, k).detach().clone()), with_kwargs=True))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0),
                           use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return after, out.logits


class Recorder:
    """Per forward call of the model: the input chunk and, per layer, the block output before steering
    (`pre`, only when registered after steering: it is prepended so it runs first) and the stream the
    next module receives (`post`, i.e. after steering)."""

    def __init__(self, lm, layers, *, pre: bool):
        self.lm = lm
        self.chunks: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []
        self._pre: dict[int, list] = {l: [] for l in layers}
        self._post: dict[int, list] = {l: [] for l in set(layers) | {lm.n_layers - 1}}
        self.handles = [lm.model.register_forward_pre_hook(self._call, with_kwargs=True)]
        for l in layers:
            if pre:
                self.handles.append(lm.blocks[l].register_forward_hook(
                    lambda m, a, o, l=l: self._pre[l].append(o.detach().clone()), prepend=True))
        for l in self._post:
            self.handles.append(_next_module(lm, l).register_forward_pre_hook(
                lambda m, a, k, l=l: self._post[l].append(_first_arg(a, k).detach().clone()), with_kwargs=True))

    def _call(self, module, args, kwargs):
        self.chunks.append(kwargs["input_ids"].detach().clone())
        self.masks.append(kwargs.get("attention_mask"))

    def remove(self):
        for h in self.handles:
            h.remove()

    @property
    def ids(self) -> torch.Tensor:
        return torch.cat(self.chunks, dim=1)

    def pre(self, layer):
        return torch.cat(self._pre[layer], dim=1)

    def post(self, layer):
        return torch.cat(self._post[layer], dim=1)


def assert_exact_steering(rec: Recorder, layer: int, delta: torch.Tensor, *, atol=1e-5):
    """post − pre is exactly 0 where delta is 0 and delta elsewhere (to float rounding)."""
    pre, post = rec.pre(layer), rec.post(layer)
    assert pre.shape == delta.shape, (pre.shape, delta.shape)
    off = (delta == 0).all(-1)
    assert torch.equal(post[off], pre[off]), "a position outside the policy was changed"
    on = ~off
    torch.testing.assert_close(post[on] - pre[on], delta[on], atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Policies in a full forward and in a cached generate
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["all", "after_user", "last_prompt"])
def test_policy_positions_full_forward(tiny_lm, vec_factory, policy):
    lm = tiny_lm
    _, batch = _batch(lm)
    v = vec_factory(lm, [1], seed=1)
    cols = batch.input_ids.shape[1]
    delta = expected_deltas(lm, batch, cols, [(1, [v] * 3, [3.0] * 3, policy)])[1]
    steered_rows = (delta != 0).any(-1).sum(1)
    if policy == "after_user":  # from the end-of-turn token after the user's text: header (and prefix) steered
        for i in range(3):
            first = int((delta[i] != 0).any(-1).nonzero()[0])
            assert lm.tokenizer.decode(batch.input_ids[i, first:]).startswith("<|im_end|>\n<|im_start|>assistant\n")
        assert steered_rows[2] > steered_rows[0] > 1
    else:
        assert (steered_rows > 0).all()

    handle = apply_steering(lm, Steering(v, 3.0, positions=policy), batch=batch)
    rec = Recorder(lm, [1], pre=True)
    try:
        with torch.no_grad():
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=(batch.attention_mask.cumsum(1) - 1).clamp_min(0))
    finally:
        rec.remove()
        handle.remove()
    assert_exact_steering(rec, 1, delta)
    ref_after, _ = reference_forward(lm, batch.input_ids, batch.attention_mask, {1: delta})
    real = batch.attention_mask.bool()
    torch.testing.assert_close(rec.post(3)[real], ref_after[3][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["all", "after_user", "last_prompt"])
def test_policy_positions_in_cached_generate(tiny_lm, vec_factory, policy):
    """Inside transformers' generate() with a KV cache: steps are one token long, positions absolute.
    Per-row vectors and strengths; the middle row is not steered at all."""
    lm = tiny_lm
    _, batch = _batch(lm)
    v, w = vec_factory(lm, [2], seed=2), vec_factory(lm, [2], seed=22)
    vecs, strengths = [v, None, w], [4.0, 7.0, -2.0]
    new = 5
    handle = apply_steering(lm, Steering(vecs, strengths, positions=policy), batch=batch)
    rec = Recorder(lm, [2], pre=True)
    try:
        with torch.no_grad():
            out = lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    max_new_tokens=new, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        rec.remove()
        handle.remove()
    width = batch.input_ids.shape[1]
    # the cache was used: one prefill of the whole prompt, then one token per step
    assert [c.shape[1] for c in rec.chunks] == [width] + [1] * (new - 1)
    assert torch.equal(rec.ids, out[:, :-1])
    cols = width + new - 1
    delta = expected_deltas(lm, batch, cols, [(2, vecs, strengths, policy)])[2]
    assert not delta[1].any()
    if policy == "after_user":  # every generated token of every steered row is steered
        assert (delta[[0, 2], width:] != 0).all()
    assert_exact_steering(rec, 2, delta)

    # The cached, steered run equals one full forward over the final ids with the hand-placed deltas.
    mask = torch.cat([batch.attention_mask, torch.ones(3, new - 1, dtype=torch.long)], 1)
    ref_after, ref_logits = reference_forward(lm, rec.ids, mask, {2: delta})
    real = mask.bool()
    for layer in (2, 3):
        torch.testing.assert_close(rec.post(layer)[real], ref_after[layer][real], atol=1e-5, rtol=1e-5)
    # and greedy decoding of that reference reproduces every generated token
    assert torch.equal(ref_logits[:, width - 1:].argmax(-1), out[:, width:])


def test_last_prompt_without_batch_in_generate(tiny_lm, vec_factory):
    """'last_prompt' needs no batch: the prefill call tells where each row's prompt ends."""
    lm = tiny_lm
    _, batch = _batch(lm)
    v = vec_factory(lm, [1], seed=3)
    handle = apply_steering(lm, Steering(v, 2.0, positions="last_prompt"))
    rec = Recorder(lm, [1], pre=True)
    try:
        with torch.no_grad():
            lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=3,
                              do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        rec.remove()
        handle.remove()
    cols = batch.input_ids.shape[1] + 2
    assert_exact_steering(rec, 1, expected_deltas(lm, batch, cols, [(1, [v] * 3, [2.0] * 3, "last_prompt")])[1])


@pytest.mark.parametrize("policy", ["all", "last_prompt"])
def test_hand_written_cached_loop_without_mask_or_batch(tiny_lm, vec_factory, policy):
    """A step-by-step cached loop with no attention mask and no batch: positions come from the cache length."""
    from transformers import DynamicCache

    lm = tiny_lm
    batch = sl.encode(lm, [PROMPTS[1]])
    v = vec_factory(lm, [0, 3], seed=13)
    handle = apply_steering(lm, Steering(v, -2.5, positions=policy))
    rec = Recorder(lm, [0, 3], pre=True)
    try:
        with torch.no_grad():
            cache = DynamicCache(config=lm.model.config)
            out = lm.model(input_ids=batch.input_ids, use_cache=True, **with_cache(lm.model, cache))
            for _ in range(3):
                nxt = out.logits[:, -1:].argmax(-1)
                out = lm.model(input_ids=nxt, use_cache=True, **with_cache(lm.model, output_cache(out)))
    finally:
        rec.remove()
        handle.remove()
    assert [c.shape[1] for c in rec.chunks] == [batch.input_ids.shape[1], 1, 1, 1]
    cols = rec.ids.shape[1]
    deltas = expected_deltas(lm, batch, cols, [(0, [v], [-2.5], policy), (3, [v], [-2.5], policy)])
    for layer in (0, 3):
        assert_exact_steering(rec, layer, deltas[layer])
    ref_after, _ = reference_forward(lm, rec.ids, torch.ones(1, cols, dtype=torch.long), deltas)
    torch.testing.assert_close(rec.post(3), ref_after[3], atol=1e-5, rtol=1e-5)


def test_prompt_fed_in_chunks(tiny_lm, vec_factory):
    """Prefilling a padded batch in two chunks (then one cached step) steers the same absolute positions."""
    lm = tiny_lm
    _, batch = _batch(lm)
    v = vec_factory(lm, [1], seed=14)
    terms = [Steering(v, 2.0, positions="after_user"), Steering(v, -1.0, positions="last_prompt")]
    handle = apply_steering(lm, terms, batch=batch)
    rec = Recorder(lm, [1], pre=True)
    width = batch.input_ids.shape[1]
    split = width - 4  # the second chunk holds the prefix of row 2 and every row's last prompt token
    try:
        with torch.no_grad():
            ids, mask = batch.input_ids, batch.attention_mask
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            out = lm.model(input_ids=ids[:, :split], attention_mask=mask[:, :split], position_ids=pos[:, :split])
            out = lm.model(input_ids=ids[:, split:], attention_mask=mask, position_ids=pos[:, split:],
                           **with_cache(lm.model, output_cache(out)))
            nxt = out.logits[:, -1:].argmax(-1)
            lm.model(input_ids=nxt, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1),
                     position_ids=pos[:, -1:] + 1, **with_cache(lm.model, output_cache(out)))
    finally:
        rec.remove()
        handle.remove()
    deltas = expected_deltas(lm, batch, width + 1, [(1, [v] * 3, [2.0] * 3, "after_user"),
                                                     (1, [v] * 3, [-1.0] * 3, "last_prompt")])
    assert_exact_steering(rec, 1, deltas[1])


def test_steerlab_generate_per_row_and_several_terms_match_reference(tiny_lm, vec_factory):
    """steerlab.generate: per-row vectors and strengths (one row unsteered), several terms and layers at
    once, padded batch, KV cache — equals a full forward with the hand-placed deltas, token for token."""
    lm = tiny_lm
    prompts, batch = _batch(lm)
    a, b, c = vec_factory(lm, [1, 2], seed=4), vec_factory(lm, [1], seed=5), vec_factory(lm, [3], seed=6)
    terms = [
        Steering([a, None, b], [2.0, 9.0, -3.0], layers=[1], positions="after_user"),
        Steering(a, [1.0, -1.0, 0.5], layers=[2], positions="all"),
        Steering(c, 5.0, positions="last_prompt"),
    ]
    new = 4
    rec = Recorder(lm, [1, 2, 3], pre=False)
    try:
        texts = sl.generate(lm, prompts, terms, max_new_tokens=new)
    finally:
        rec.remove()
    width = batch.input_ids.shape[1]
    assert torch.equal(rec.chunks[0], batch.input_ids) and len(rec.chunks) == new
    cols = width + new - 1
    deltas = expected_deltas(lm, batch, cols, [
        (1, [a, None, b], [2.0, 9.0, -3.0], "after_user"),
        (2, [a, a, a], [1.0, -1.0, 0.5], "all"),
        (3, [c, c, c], [5.0] * 3, "last_prompt"),
    ])
    mask = torch.cat([batch.attention_mask, torch.ones(3, new - 1, dtype=torch.long)], 1)
    ref_after, ref_logits = reference_forward(lm, rec.ids, mask, deltas)
    real = mask.bool()
    for layer in (1, 2, 3):
        torch.testing.assert_close(rec.post(layer)[real], ref_after[layer][real], atol=1e-5, rtol=1e-5)
    generated = ref_logits[:, width - 1:].argmax(-1)
    assert torch.equal(generated[:, :-1], rec.ids[:, width:])
    assert texts == lm.tokenizer.batch_decode(generated, skip_special_tokens=True)


def test_per_row_batch_equals_each_row_alone(tiny_lm, vec_factory):
    lm = tiny_lm
    prompts, batch = _batch(lm)
    vecs = [vec_factory(lm, [1], seed=7), None, vec_factory(lm, [1], seed=8)]
    strengths = [6.0, 100.0, -4.0]
    term = Steering(vecs, strengths, positions="all")
    together = sl.generate(lm, prompts, term, max_new_tokens=6)
    alone = [sl.generate(lm, [p], None if v is None else Steering(v, s, positions="all"), max_new_tokens=6)[0]
             for p, v, s in zip(prompts, vecs, strengths)]
    assert together == alone
    assert together[0] != sl.generate(lm, [prompts[0]], max_new_tokens=6)[0]  # the steering did something
    # batch_size=1 splits the per-row lists across batches
    assert sl.generate(lm, prompts, term, max_new_tokens=6, batch_size=1) == alone

    # the same at the level of logits, for every real position
    with torch.no_grad(), steer(lm, [term], batch=batch):
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=(batch.attention_mask.cumsum(1) - 1).clamp_min(0)).logits
    for i, p in enumerate(prompts):
        one = sl.encode(lm, [p])
        with torch.no_grad(), steer(lm, [term.rows(i, i + 1)], batch=one):
            ref = lm.model(input_ids=one.input_ids, attention_mask=one.attention_mask).logits
        n = int(batch.lengths[i])
        torch.testing.assert_close(logits[i, -n:], ref[0], atol=1e-5, rtol=1e-5)


def test_numpy_and_tensor_strengths(tiny_lm, vec_factory):
    """Strengths from numpy or torch (sweeps produce them) act exactly like Python floats."""
    lm = tiny_lm
    _, batch = _batch(lm)
    v = vec_factory(lm, [1], seed=12)

    def run(strength):
        with torch.no_grad(), steer(lm, [Steering(v, strength, positions="all")], batch=batch):
            return _logits(lm, batch)

    ref = run(1.5)
    for s in (np.float32(1.5), np.float64(1.5), torch.tensor(1.5), [1.5, np.float32(1.5), torch.tensor(1.5)],
              torch.full((3,), 1.5), np.full(3, 1.5)):
        assert torch.equal(run(s), ref), repr(s)
    assert not torch.equal(run([1.5, 1.5, 0.0]), ref)


def test_output_hidden_states_see_the_steering(tiny_lm, vec_factory):
    """hidden_states[L+1] must be the steered stream even when transformers' own output-capture hooks
    were installed before steering (they are, by any earlier output_hidden_states=True call)."""
    lm = tiny_lm
    _, batch = _batch(lm)
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    with torch.no_grad():
        base = lm.model(**kw).hidden_states
        v = vec_factory(lm, [1], seed=9)
        with steer(lm, v, 2.0, batch=batch):
            steered = lm.model(**kw).hidden_states
    real = batch.attention_mask.bool()
    assert torch.equal(steered[1], base[1])
    torch.testing.assert_close((steered[2] - base[2])[real], (2.0 * v[1]).expand(int(real.sum()), -1),
                               atol=1e-5, rtol=1e-5)


def test_actadd_vector_is_added_position_by_position_from_user_start(tiny_lm):
    lm = tiny_lm
    vec = sl.train_actadd(lm, "Love love", "Hate", layers=[1])
    P = vec[1].shape[0]
    assert vec.per_position and P >= 2
    _, batch = _batch(lm)
    new = 3
    handle = apply_steering(lm, Steering(vec, 2.0, positions="last_prompt"), batch=batch)  # policy ignored
    rec = Recorder(lm, [1], pre=True)
    try:
        with torch.no_grad():
            lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=new,
                              do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        rec.remove()
        handle.remove()
    width = batch.input_ids.shape[1]
    delta = torch.zeros(3, width + new - 1, lm.hidden_size)
    for i in range(3):
        start = width - int(batch.lengths[i]) + int(batch.user_start[i])
        for j in range(P):
            if start + j < width + new - 1:
                delta[i, start + j] = 2.0 * vec[1][j]
    assert_exact_steering(rec, 1, delta)


# --------------------------------------------------------------------------------------------------
# Hooks always removed
# --------------------------------------------------------------------------------------------------

def _logits(lm, batch):
    with torch.no_grad():
        return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_hooks_removed_on_exit_and_on_exceptions(tiny_lm, vec_factory):
    lm = tiny_lm
    _, batch = _batch(lm)
    before = _logits(lm, batch)
    v = vec_factory(lm, [0, 2], seed=10)
    with steer(lm, v, 3.0):
        assert not torch.equal(_logits(lm, batch), before)
    assert torch.equal(_logits(lm, batch), before)

    with pytest.raises(RuntimeError, match="boom"):
        with steer(lm, v, 3.0, batch=batch):
            raise RuntimeError("boom")
    assert torch.equal(_logits(lm, batch), before)

    # an error raised by steering itself, inside the forward (the batch has other rows than set up for)
    other = sl.encode(lm, ["one", "two"])
    with pytest.raises(SteerlabError, match="batch of 3 rows"):
        with steer(lm, v, 3.0, batch=batch):
            _logits(lm, other)
    assert torch.equal(_logits(lm, batch), before)

    # an error half-way through a steered generate()
    calls = []

    def fail_on_third_call(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    h = lm.blocks[3].register_forward_hook(fail_on_third_call)
    try:
        with pytest.raises(KeyboardInterrupt):
            sl.generate(lm, PROMPTS, Steering(v, 3.0, positions="after_user"), max_new_tokens=5)
    finally:
        h.remove()
    assert torch.equal(_logits(lm, batch), before)

    # a bad term among good ones: nothing is installed at all
    with pytest.raises(LayerError):
        apply_steering(lm, [Steering(v, 1.0), Steering(v, 1.0, layers=[7])])
    assert torch.equal(_logits(lm, batch), before)

    # the functional handle
    handle = apply_steering(lm, Steering(v, 1.0))
    assert handle.active
    handle.remove()
    assert not handle.active
    assert torch.equal(_logits(lm, batch), before)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

def test_bad_steering_input(tiny_lm, make_tiny, vec_factory):
    lm = tiny_lm
    _, batch = _batch(lm)
    v = vec_factory(lm, [1], seed=11)
    with pytest.raises(SteerlabError, match="unknown position policy 'middle'"):
        apply_steering(lm, Steering(v, 1.0, positions="middle"))
    with pytest.raises(LayerError, match="layer 4 is out of range"):
        apply_steering(lm, Steering(v, 1.0, layers=[4]))
    with pytest.raises(LayerError, match="integer"):
        apply_steering(lm, Steering(v, 1.0, layers=["1"]))
    with pytest.raises(VectorError, match="no direction for layer 2"):
        apply_steering(lm, Steering(v, 1.0, layers=[2]))
    with pytest.raises(SteerlabError, match="got 2 for a batch of 3 rows"):
        apply_steering(lm, Steering([v, v], 1.0), batch=batch)
    with pytest.raises(SteerlabError, match="got 4 for a batch of 3 rows"):
        apply_steering(lm, Steering(v, [1.0, 2.0, 3.0, 4.0]), batch=batch)
    with pytest.raises(SteerlabError, match="per-row vectors: got 4"):  # longer lists are not silently cut
        sl.generate(lm, PROMPTS, Steering([v, v, v, v]), max_new_tokens=1)
    with pytest.raises(SteerlabError, match="per-row strengths: got 4"):
        sl.generate(lm, PROMPTS, Steering(v, [1.0] * 4), max_new_tokens=1, batch_size=2)
    with pytest.raises(SteerlabError, match="Steering\\(vector, strength\\)"):
        sl.generate(lm, PROMPTS, v, max_new_tokens=1)
    actadd = sl.train_actadd(lm, "Love", "Hate", layers=[1])
    with pytest.raises(SteerlabError, match="per-position \\(ActAdd\\).*batch="):
        apply_steering(lm, Steering(actadd, 1.0))
    with pytest.raises(SteerlabError, match="after_user"):
        with steer(lm, v, 1.0, positions="after_user"):
            _logits(lm, batch)
    for bad in (float("nan"), float("inf"), "2", [1.0, float("nan"), 1.0]):
        with pytest.raises(SteerlabError, match="strength must be a finite number"):
            apply_steering(lm, Steering(v, bad), batch=batch)
    wide = make_tiny(hidden=48)
    with pytest.raises(VectorError, match="hidden size 32"):
        apply_steering(wide, Steering(v, 1.0))
    with pytest.raises(SteerlabError, match="no prompts"):
        sl.generate(lm, [], Steering(v, 1.0))
    with pytest.raises(PromptTooLongError, match="prompt 2 has .* tokens plus 2 new tokens, .* context window of 128"):
        sl.generate(lm, ["Hi", "Hi", "word " * 200], Steering(v, 1.0), max_new_tokens=2, batch_size=2)
    with pytest.raises(PromptTooLongError, match="plus 100 new tokens"):  # fits alone, not with the new tokens
        sl.generate(lm, ["Hi"], max_new_tokens=100)


def test_real_model_generate_after_user(real_lm):
    """On the real SmolLM2: a steered cached generate equals the full-forward reference (CAA policy:
    the assistant prefix and every generated token). Raw prompts keep the CPU forward short."""
    lm = real_lm
    prompts = [format_prompt(lm, "Q: Name a colour.\nA:", " It is", chat_template=False),
               format_prompt(lm, "Q: What is the sea made of?\nA:", " The", chat_template=False)]
    batch = sl.encode(lm, prompts)
    assert batch.lengths[0] != batch.lengths[1]  # left padding in play
    g = torch.Generator().manual_seed(0)
    v = sl.SteeringVector({10: torch.randn(lm.hidden_size, generator=g)},
                          sl.VectorMetadata(lm.model_id, lm.family, lm.hidden_size, lm.n_layers, "test", (10,)))
    new = 3
    rec = Recorder(lm, [10], pre=False)
    try:
        texts = sl.generate(lm, prompts, Steering(v, 4.0, positions="after_user"), max_new_tokens=new)
    finally:
        rec.remove()
    width = batch.input_ids.shape[1]
    deltas = expected_deltas(lm, batch, width + new - 1, [(10, [v, v], [4.0, 4.0], "after_user")])
    assert (deltas[10][:, :width] != 0).any(-1).sum().item() == 3  # the prefixes: " It", " is", " The"
    mask = torch.cat([batch.attention_mask, torch.ones(2, new - 1, dtype=torch.long)], 1)
    ref_after, ref_logits = reference_forward(lm, rec.ids, mask, deltas)
    real = mask.bool()
    for layer in (10, lm.n_layers - 1):
        torch.testing.assert_close(rec.post(layer)[real], ref_after[layer][real], atol=2e-3, rtol=1e-4)
    generated = ref_logits[:, width - 1:].argmax(-1)
    assert torch.equal(generated[:, :-1], rec.ids[:, width:])
    assert texts == lm.tokenizer.batch_decode(generated, skip_special_tokens=True)
