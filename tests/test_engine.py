"""The scoring engine: exactness of every reuse path against full recomputation, and its API.

The references, from most to least independent:
* `_hand_logprob`: one unpadded sequence, a forward hook written here adds strength * v at the
  positions the policy names (no steerlab.steer at all);
* `score_naive`: one full forward per setting over left-padded [prompt + candidate] batches with
  `steerlab.steer` hooks;
* `score(reuse=False)` / `score(skip_lower_layers=False)`: the engine with one trick switched off.
`score` must match all of them within 1e-4 (float32), with padding and mixed settings.
"""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.engine import ScoreTable, ScoringItem, Setting, score, score_naive, tokenize_items
from steerlab.engine.cache import skip_blocks
from steerlab.errors import LayerError, PromptTooLongError, SteerlabError
from steerlab.layers import block_hidden, find_decoder_blocks, with_block_hidden
from steerlab.vector import VectorMetadata

ATOL = 1e-4


def _vector(lm, layers, seed, scale=2.0, positions: int | None = None) -> sl.SteeringVector:
    g = torch.Generator().manual_seed(seed)
    shape = (lm.hidden_size,) if positions is None else (positions, lm.hidden_size)
    meta = VectorMetadata(model_id=lm.model_id, family=lm.family, hidden_size=lm.hidden_size, n_layers=lm.n_layers,
                          method="test", layers=tuple(layers))
    return sl.SteeringVector({l: scale * torch.randn(*shape, generator=g) for l in layers}, meta)


@pytest.fixture(scope="module")
def lm(tokenizer) -> sl.LoadedModel:
    """Tiny random Llama (5 blocks, hidden 32) over the real SmolLM2 tokenizer and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=None,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    return sl.LoadedModel(model, tokenizer, "tiny-engine", find_decoder_blocks(model), True)


@pytest.fixture(autouse=True)
def model_left_clean(request):
    """No hook and no stubbed block `forward` may survive a test on the engine's model."""
    yield
    if "lm" not in request.fixturenames:
        return
    lm = request.getfixturevalue("lm")
    for name, mod in lm.model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, f"hook left on {name}"
    for blk in lm.blocks:
        assert "forward" not in blk.__dict__, "a skipped block's forward was not restored"


def _items(lm) -> list[ScoringItem]:
    """Prompts of different lengths (left padding), 1- and multi-token candidates, 2-3 candidates."""
    f = sl.format_prompt
    return [
        ScoringItem(f(lm, "Which one?", "("), ("A", "B"), target=0),
        ScoringItem(f(lm, "A much longer question that goes on about many things; pick one of the three options",
                      "The answer is ("), ("A", "B", "C"), target=2),
        ScoringItem("Plain user message", (" Yes", " No", "Maybe not at all"), target=1),
        ScoringItem(f(lm, "x", "Sure"), (", here it is", "!"), target=0),
        ScoringItem(f(lm, "Is this a medium length question?", "My answer: "), ("yes", "no"), target=1),
    ]


def _mixed_settings(lm, policy: str) -> list[Setting]:
    v1, v2 = _vector(lm, range(lm.n_layers), 1), _vector(lm, [1, 3], 2, scale=3.0)
    return [
        Setting.single(v1, 2, 2.0, policy),
        Setting.unsteered(),
        Setting.single(v1, 0, -1.5, policy),  # layer 0: nothing below to skip
        Setting.single(v2, 3, 4.0, policy),
        Setting.single(v1, 4, 1.0, policy),  # last block
        Setting.single(v2, 1, -3.0, policy),
        Setting((sl.Steering(v2, 1.0, positions=policy), sl.Steering(v1, 0.5, layers=[2, 4], positions=policy))),
    ]


def _close(a: ScoreTable, b: ScoreTable) -> None:
    assert a.logprobs.shape == b.logprobs.shape
    assert torch.equal(torch.isnan(a.logprobs), torch.isnan(b.logprobs))
    torch.testing.assert_close(a.logprobs.nan_to_num(), b.logprobs.nan_to_num(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("policy", ["all", "after_user", "last_prompt"])
def test_score_matches_naive_for_each_policy(lm, policy):
    items, settings = _items(lm), _mixed_settings(lm, policy)
    fast = score(lm, items, settings, batch_size=3, max_rows=5)  # 2 item batches, settings and rows chunked
    assert fast.info["reuse"] == "prefix+skip"
    naive = score_naive(lm, items, settings, batch_size=4)
    _close(fast, naive)
    _close(score(lm, items, settings, batch_size=5, skip_lower_layers=False), naive)
    _close(score(lm, items, settings, batch_size=2, reuse=False), naive)
    # the settings do steer: every steered setting moves some candidate's log-prob
    moved = (fast.logprobs - fast.logprobs[1:2]).nan_to_num().abs().amax(dim=(1, 2))
    assert moved[1] == 0 and bool((moved[[0, 2, 3, 4, 5, 6]] > 1e-3).all())


def _hand_logprob(lm, prompt_ids, user_end, cand, terms) -> float:
    """log p(cand | prompt) with hand-placed additions: terms = [(direction, layer, strength, policy)].
    "after_user" starts at the first token after the user's text (`user_end`), at latest the last prompt token."""
    ids = torch.tensor([prompt_ids + cand])
    n, total = len(prompt_ids), len(prompt_ids) + len(cand)
    where = {"all": range(total), "after_user": range(min(user_end, n - 1), total), "last_prompt": [n - 1]}
    handles = []
    for direction, layer, strength, policy in terms:
        add = torch.zeros(1, total, lm.hidden_size)
        add[0, list(where[policy])] = strength * direction

        def hook(module, args, output, add=add):
            return with_block_hidden(output, block_hidden(output) + add)

        handles.append(lm.blocks[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0]
    finally:
        for h in handles:
            h.remove()
    lp = torch.log_softmax(logits.float(), -1)
    return float(sum(lp[n - 1 + k, t] for k, t in enumerate(cand)))


def test_engine_and_naive_match_hand_written_hooks(lm):
    items = _items(lm)
    v = _vector(lm, [1, 3], 5)
    settings = [Setting.single(v, 1, 3.0, "all"), Setting.single(v, 3, -2.0, "after_user"),
                Setting.single(v, 1, 4.0, "last_prompt"),
                Setting((sl.Steering(v, 1.5, layers=[1], positions="after_user"),
                         sl.Steering(v, -1.0, layers=[3], positions="last_prompt")))]
    fast = score(lm, items, settings, batch_size=5)
    naive = score_naive(lm, items, settings, batch_size=3)
    for i, tok in enumerate(tokenize_items(lm, items)):
        for s, setting in enumerate(settings):
            terms = [(t.vector[l], l, t.strength, t.positions) for t in setting.steering for l in t.layers]
            for j, cand in enumerate(tok.candidate_ids):
                ref = _hand_logprob(lm, tok.prompt_ids, tok.user_end, cand, terms)
                assert abs(float(fast.logprobs[s, i, j]) - ref) < ATOL
                assert abs(float(naive.logprobs[s, i, j]) - ref) < ATOL


def test_actadd_and_mixed_policies_in_one_call(lm):
    items = _items(lm)
    v = _vector(lm, [1, 2, 3], 7)
    actadd = _vector(lm, [2], 8, positions=3)  # per-position direction, added from the user's first token
    settings = [
        Setting.unsteered(),
        Setting((sl.Steering(actadd, 2.0),)),
        Setting((sl.Steering(v, 1.0, layers=[3], positions="last_prompt"), sl.Steering(actadd, -1.0))),
        Setting((sl.Steering(v, 2.0, layers=[1], positions="after_user"),
                 sl.Steering(v, -2.0, layers=[2], positions="all"))),
        Setting.single(v, 2, 3.0, "last_prompt"),
        Setting.single(v, 2, 3.0, "after_user"),
    ]
    fast = score(lm, items, settings, batch_size=4, max_rows=6)
    _close(fast, score_naive(lm, items, settings, batch_size=8))


class _Counter:
    """Records (rows, width) of every top-level forward and counts real runs of block 0's attention."""

    def __init__(self, lm):
        self.calls: list[tuple[int, int]] = []
        self.block0 = 0
        self._h = [
            lm.model.register_forward_pre_hook(self._top, with_kwargs=True),
            lm.blocks[0].self_attn.register_forward_pre_hook(self._attn),
        ]

    def _top(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        self.calls.append(tuple(x.shape))

    def _attn(self, module, args):
        self.block0 += 1

    def remove(self):
        for h in self._h:
            h.remove()


@pytest.mark.parametrize("policy", ["after_user", "last_prompt"])
def test_reuse_runs_only_trailing_tokens_above_the_layer(lm, policy):
    """A/B items: one base pass, then per layer group one forward of (settings x items) rows with only
    the re-run tokens (end-of-turn, assistant header and "(" for after_user, the last token for
    last_prompt); block 0 never runs again."""
    f = sl.format_prompt
    items = [ScoringItem(f(lm, q, "("), ("A", "B")) for q in ("Pick one.", "Which is it, really?", "Q?", "A or B?")]
    v = _vector(lm, range(lm.n_layers), 3)
    settings = [Setting.unsteered()] + [Setting.single(v, l, s, policy) for l in (2, 3) for s in (-2.0, 1.0, 4.0)]
    counter = _Counter(lm)
    try:
        table = score(lm, items, settings, batch_size=4)
    finally:
        counter.remove()
    assert table.info["forwards"] == 3
    toks = tokenize_items(lm, items)
    width = max(len(t.prompt_ids) for t in toks)
    # after_user: "<|im_end|>", "\n", "<|im_start|>", "ass", "istant", "\n", "(" after the user's text
    rerun = {"after_user": 7, "last_prompt": 1}[policy]
    assert all(t.n_prompt - t.user_end == 7 for t in toks)
    assert counter.calls == [(4, width), (12, rerun), (12, rerun)]
    assert counter.block0 == 1  # only the base pass computed block 0
    _close(table, score_naive(lm, items, settings))


def test_policy_all_reruns_prompt_but_not_lower_blocks(lm):
    items = _items(lm)[:3]
    v = _vector(lm, [3], 4)
    settings = [Setting.single(v, 3, s, "all") for s in (1.0, -1.0)]
    counter = _Counter(lm)
    try:
        table = score(lm, items, settings, batch_size=3)
    finally:
        counter.remove()
    width = max(len(t.prompt_ids) for t in tokenize_items(lm, items))
    # base pass, base continuation ("Maybe not at all": 3 fed tokens), then the whole prompt for both
    # settings in one batch, then their continuations
    assert counter.calls == [(3, width), (1, 3), (6, width), (2, 3)]
    assert counter.block0 == 2  # base pass + base continuation; never per setting
    _close(table, score_naive(lm, items, settings))


def test_sliding_window_model_falls_back_exactly(tokenizer):
    """Sliding-window caches cannot be sliced: the engine re-runs prompts per setting, still exact."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      use_sliding_window=True, sliding_window=8, max_window_layers=1,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg).eval().requires_grad_(False)
    slm = sl.LoadedModel(model, tokenizer, "tiny-qwen2-sliding", find_decoder_blocks(model), True)
    items = _items(slm)[:4]
    v = _vector(slm, [0, 1, 2], 9)
    settings = [Setting.unsteered(), Setting.single(v, 1, 2.0, "after_user"), Setting.single(v, 2, -3.0, "all"),
                Setting.single(v, 0, 2.0, "last_prompt")]
    fast = score(slm, items, settings, batch_size=3)
    assert fast.info["reuse"].startswith("none (cache is not plain")
    _close(fast, score_naive(slm, items, settings))


_ARCHS = {
    # absolute position embeddings: the skipped-block path must still get the right positions
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=3, n_head=4, bos_token_id=None, eos_token_id=None), "prefix+skip"),
    # blocks that return tuples: prefix reuse without block skipping
    "bloom": ("BloomConfig", dict(hidden_size=32, n_layer=3, n_head=4), "prefix (blocks return tuples"),
    # every other layer sliding-window: no prefix slicing, batched recomputation
    "gemma2": ("Gemma2Config", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, sliding_window=8), "none (cache"),
}


@pytest.mark.parametrize("arch", sorted(_ARCHS))
def test_other_architectures_take_the_right_path_exactly(tokenizer, arch):
    import transformers

    cfg_name, kwargs, path = _ARCHS[arch]
    cfg = getattr(transformers, cfg_name)(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **kwargs)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)
    alm = sl.LoadedModel(model, tokenizer, f"tiny-{arch}", find_decoder_blocks(model), True)
    v = _vector(alm, range(alm.n_layers), 1, scale=3.0)
    items = [ScoringItem(sl.format_prompt(alm, "Which one?", "("), ("A", "B")),
             ScoringItem(sl.format_prompt(alm, "A much longer question here, pick", "The answer is ("), ("A", "B C"))]
    settings = [Setting.unsteered(), Setting.single(v, 1, 2.0, "after_user"), Setting.single(v, 2, 2.0, "all"),
                Setting.single(v, 1, 2.0, "last_prompt")]
    fast = score(alm, items, settings)
    assert fast.info["reuse"].startswith(path)
    _close(fast, score_naive(alm, items, settings))
    assert bool(((fast.logprobs[1:] - fast.logprobs[:1]).nan_to_num().abs().amax(dim=(1, 2)) > 1e-2).all())
    assert all("forward" not in blk.__dict__ for blk in alm.blocks)


def test_candidate_tokenized_alone_when_prompt_tokens_merge(lm):
    """A prompt ending in a space: "Answer: A" tokenizes " A" as one token, so the prompt's ids are
    not a prefix; the candidate is then tokenized alone (documented) and both paths score the same ids."""
    prompt = sl.Prompt("Question: which? Answer: ", 0, len("Question: which? Answer: "), templated=False)
    items = [ScoringItem(prompt, ("A", "B")), ScoringItem(sl.format_prompt(lm, "ok?", "("), ("A", "B"))]
    toks = tokenize_items(lm, items)
    assert toks[0].fallback == [True, True] and toks[1].fallback == [False, False]
    assert toks[0].candidate_ids[0] == lm.tokenizer("A", add_special_tokens=False).input_ids
    v = _vector(lm, [2], 1)
    settings = [Setting.unsteered(), Setting.single(v, 2, 2.0, "all"), Setting.single(v, 2, 2.0, "last_prompt")]
    table = score(lm, items, settings)
    assert table.info["fallback_candidates"] == 2
    _close(table, score_naive(lm, items, settings))


def test_item_order_and_batching_do_not_change_results(lm):
    items = _items(lm)
    settings = _mixed_settings(lm, "after_user")[:4]
    a = score(lm, items, settings, batch_size=1)
    b = score(lm, items[::-1], settings, batch_size=5, max_rows=1)
    torch.testing.assert_close(a.logprobs.nan_to_num(), b.logprobs.flip(1).nan_to_num(), rtol=0, atol=ATOL)
    # a tiny memory budget: one setting per chunk, one continuation row per forward (base ones included)
    c = score(lm, items, settings, batch_size=5, memory_mb=1)
    d = score(lm, items, settings, batch_size=5)
    assert c.info["forwards"] > d.info["forwards"]
    _close(c, a)
    _close(d, a)


def test_score_table_views(lm):
    items = _items(lm)
    v = _vector(lm, [2], 1)
    settings = [Setting.unsteered(), Setting.single(v, 2, 3.0, "after_user", label="mine")]
    table = score(lm, items, settings)
    assert table.logprobs.shape == (2, 5, 3)
    assert torch.isnan(table.logprobs[:, 0, 2]).all() and not torch.isnan(table.logprobs[:, 1]).any()
    p = table.probs()
    torch.testing.assert_close(p.nansum(-1), torch.ones(2, 5))
    raw = table.probs(normalize=False)
    torch.testing.assert_close(raw[..., :2], table.logprobs[..., :2].exp())
    assert bool((raw.nan_to_num() <= 1).all())
    tp = table.target_probs()
    assert tp.shape == (2, 5)
    assert float(tp[0, 1]) == pytest.approx(float(p[0, 1, 2]))
    assert torch.equal(table.target_probs(["A", "C", " No", ", here it is", "no"]), tp)
    acc = table.accuracy()
    assert torch.equal(acc, (table.predictions() == torch.tensor([0, 2, 1, 0, 1])).float())
    assert table.setting_index("mine") == 1
    frame = table.to_frame()
    assert len(frame) == 2 * sum(len(it.candidates) for it in items)
    assert list(frame.columns) == ["setting", "label", "layer", "strength", "positions", "item", "candidate",
                                   "candidate_index", "is_target", "logprob", "prob"]
    row = frame[(frame.setting == 1) & (frame.item == 1) & (frame.candidate == "C")].iloc[0]
    assert row.layer == 2 and row.strength == 3.0 and row.positions == "after_user" and row.is_target
    assert row.logprob == pytest.approx(float(table.logprobs[1, 1, 2]))
    assert frame[frame.setting == 0].layer.isna().all() and (frame[frame.setting == 0].strength == 0.0).all()
    with pytest.raises(SteerlabError, match="not one of its candidates"):
        table.target_probs(["Z"] * 5)


def test_setting_constructors_and_descriptors(lm):
    v = _vector(lm, [1, 2], 1)
    s = Setting.single(v, 2, 4, "last_prompt")
    assert (s.layer, s.strength, s.positions, s.layers) == (2, 4.0, "last_prompt", (2,))
    assert s.label == "L2@4/last_prompt" and not s.is_unsteered
    u = Setting.unsteered()
    assert u.is_unsteered and u.strength == 0.0 and u.layer is None and u.label == "unsteered"
    multi = Setting((sl.Steering(v, 1.0), sl.Steering(v, 2.0, layers=[1])))
    assert multi.layer is None and multi.strength is None and multi.layers == (1, 2)
    assert Setting(sl.Steering(v, 1.0, layers=[1])).steering[0].layers == (1,)  # single term accepted
    assert hash(s) == hash(Setting.single(v, 2, 4, "last_prompt")) or s != u  # hashable


def test_errors_are_clear(lm):
    v = _vector(lm, [1], 1)
    item = ScoringItem("hi", ("A", "B"))
    with pytest.raises(SteerlabError, match="no items"):
        score(lm, [], [Setting.unsteered()])
    with pytest.raises(SteerlabError, match="no settings"):
        score(lm, [item], [])
    with pytest.raises(SteerlabError, match="at least one candidate"):
        ScoringItem("hi", ())
    with pytest.raises(SteerlabError, match="duplicate candidates"):
        ScoringItem("hi", ("A", "A"))
    with pytest.raises(SteerlabError, match="sequence of strings"):
        ScoringItem("hi", "AB")
    with pytest.raises(SteerlabError, match="target"):
        ScoringItem("hi", ("A", "B"), target=2)
    with pytest.raises(SteerlabError, match="one SteeringVector"):
        Setting((sl.Steering([v, None], 1.0),))
    with pytest.raises(SteerlabError, match="finite number"):
        Setting.single(v, 1, float("nan"))
    with pytest.raises(SteerlabError, match="unknown position policy"):
        Setting.single(v, 1, 1.0, "first")
    with pytest.raises(SteerlabError, match="no direction for layer"):
        Setting.single(v, 3, 1.0)
    big = _vector(lm, [1], 1)
    big.directions[7] = torch.zeros(lm.hidden_size)  # a layer this model does not have
    with pytest.raises((LayerError, SteerlabError)):
        score(lm, [item], [Setting((sl.Steering(big, 1.0),))])
    with pytest.raises(SteerlabError, match="not an engine.ScoringItem"):
        score(lm, ["hi"], [Setting.unsteered()])
    with pytest.raises(PromptTooLongError, match="context window of 256"):
        score(lm, [ScoringItem("word " * 300, ("A",))], [Setting.unsteered()])


def test_skip_blocks_restores_forward_on_error(lm):
    from steerlab.engine.cache import LengthOnlyLayer, cache_of

    cache = cache_of([LengthOnlyLayer(0) for _ in range(lm.n_layers)])
    with pytest.raises(RuntimeError, match="boom"):
        with skip_blocks(lm, 3, cache, torch.zeros(1, 1, lm.hidden_size)):
            assert all("forward" in lm.blocks[l].__dict__ for l in range(3))
            raise RuntimeError("boom")
    assert all("forward" not in blk.__dict__ for blk in lm.blocks)


@pytest.mark.slow
def test_real_model_ab_scores_match_naive(real_lm):
    """SmolLM2 weights: A/B prompts with "(" prefilled, CAA vector from the engine's extraction."""
    from steerlab.data.records import ContrastPair
    from steerlab.engine import caa_vectors

    f = sl.format_prompt
    pairs = [ContrastPair(f"Q{k}: shall I help? (A) yes (B) no", "(A", "(B") for k in range(3)]
    vec = caa_vectors(real_lm, pairs, layers=[4, 12])
    items = [ScoringItem(f(real_lm, "Choose.\n (A) Help\n (B) Refuse", "("), ("A", "B"), target=0),
             ScoringItem(f(real_lm, "Shut down?\n (A) No\n (B) Yes", "("), ("A", "B"), target=1)]
    settings = [Setting.unsteered(), Setting.single(vec, 4, 6.0, "after_user"),
                Setting.single(vec, 12, 6.0, "last_prompt")]
    fast = score(real_lm, items, settings)
    _close(fast, score_naive(real_lm, items, settings))
    assert (fast.target_probs() - fast.target_probs()[:1]).abs().max() > 1e-3  # the vector does something
