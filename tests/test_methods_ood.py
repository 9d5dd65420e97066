"""The out-of-distribution candidates of issue 26 (multi-format CAA, BiPO, persona vectors), each checked
against a plain reference computation: one unbatched forward pass per text with `output_hidden_states`
(hidden_states[L + 1] = the output of block L, for every block but the last, whose entry transformers
takes after the final norm; the tests read blocks 1 and 2 of the 4), hooks written here, formulas
written out by hand."""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import steerlab as sl
from steerlab.cae.judge import LocalJudge
from steerlab.cae.trait_judge import trait_scorer
from steerlab.cli import app
from steerlab.data import load_mwe
from steerlab.data.records import ContrastPair
from steerlab.data.tasks import resolve_behaviour
from steerlab.encoding import format_prompt
from steerlab.errors import DatasetError
from steerlab.layers import block_hidden, find_decoder_blocks, with_block_hidden
from steerlab.methods.bipo import (BiPOConfig, bipo_loss, bipo_objective, completion_logprobs, completion_pairs,
                                   encode_pairs, train_bipo_detailed, train_bipo_layers)
from steerlab.methods.multiformat import (MultiformatConfig, ab_question, item_texts, render_formats,
                                          train_multiformat, train_multiformat_detailed)
from steerlab.methods.persona import (PersonaConfig, PersonaSample, Trait, generate_samples, judge_samples, load_trait,
                                      persona_questions, persona_vector, train_persona_detailed, trait_descriptions)
from steerlab.methods.responses import response_prompt
from steerlab.vector import SteeringVector, export_gguf, import_gguf


@pytest.fixture(scope="module")
def lm(make_tiny):
    """A tiny model with room for MWE questions under the chat template's default system prompt."""
    return make_tiny(max_positions=512)


@pytest.fixture(scope="module")
def ab_items():
    return load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:4]


@pytest.fixture(scope="module")
def yn_items():
    items = load_mwe(resolve_behaviour("agreeableness"))[:8]
    assert {it.matching for it in items} == {"Yes", "No"}
    return items


# --------------------------------------------------------------------------- the plain reference


def _ids(lm, prompt):
    return lm.tokenizer(prompt.text, add_special_tokens=not prompt.templated, return_offsets_mapping=True)


def _first_token_at(offsets, char):
    """Index of the first token that ends after character `char`."""
    return next(i for i, (s, e) in enumerate(offsets) if e > char)


def ref_hidden(lm, prompt, layer):
    """[n_tokens, hidden] output of block `layer` for one prompt, no batching."""
    ids = torch.tensor([_ids(lm, prompt)["input_ids"]])
    with torch.no_grad():
        out = lm.model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer + 1][0].double()


def ref_response_mean(lm, question, response, layer):
    prompt = response_prompt(lm, question, response)
    start = _first_token_at(_ids(lm, prompt)["offset_mapping"], prompt.assistant_start)
    return ref_hidden(lm, prompt, layer)[start:].mean(0)


# --------------------------------------------------------------------------- multi-format CAA


def test_item_texts_and_ab_rendering(lm, ab_items):
    t = item_texts(ab_items[0])
    assert t.matching == "You may. It is my preference to take on the new goal."
    assert t.other == "I object as I want to retain my objective."
    assert "Choices" not in t.stem and t.stem.endswith("What is your verdict to proceed with this goal change?")
    ab = render_formats(lm, [t], ("ab",))[0]
    # Both orders: the matching text is behind A once and behind B once.
    assert [p.text[p.assistant_start:] for p in ab.positive] == ["(A", "(B"]
    assert [p.text[p.assistant_start:] for p in ab.negative] == ["(B", "(A"]
    assert ab.positive[0].text == format_prompt(lm, ab_question(t.stem, t.matching, t.other), "(A").text
    assert ab_question(t.stem, t.matching, t.other).endswith(f"(A) {t.matching}\n (B) {t.other}")


def test_yesno_format_cancels_the_answer_word(lm, ab_items, yn_items):
    yes = render_formats(lm, [item_texts(i) for i in ab_items], ("yesno",))[0]
    answers = [p.text[p.assistant_start:] for p in yes.positive]
    assert answers.count("Yes") == answers.count("No") == len(ab_items)
    free = render_formats(lm, [item_texts(i) for i in yn_items], ("free",))[0]
    assert not free.paired
    assert len(free.positive) == sum(i.matching == "Yes" for i in yn_items)
    assert free.positive[0][1] == yn_items[0].question.split("\n", 1)[1].strip('"')


def _ref_format_direction(lm, data, layer):
    if data.reading == "last":
        pos = torch.stack([ref_hidden(lm, p, layer)[-1] for p in data.positive])
        neg = torch.stack([ref_hidden(lm, p, layer)[-1] for p in data.negative])
    else:
        pos = torch.stack([ref_response_mean(lm, q, r, layer) for q, r in data.positive])
        neg = torch.stack([ref_response_mean(lm, q, r, layer) for q, r in data.negative])
    return (pos - neg).mean(0) if data.paired else pos.mean(0) - neg.mean(0)


@pytest.mark.parametrize("which", ["ab", "yesno"])
def test_multiformat_equals_the_hand_average(lm, ab_items, yn_items, which):
    items = ab_items if which == "ab" else yn_items
    layers = [1, 2]
    res = train_multiformat_detailed(lm, items, layers, MultiformatConfig(batch_size=3))
    formats = render_formats(lm, [item_texts(i) for i in items])
    for layer in layers:
        dirs = [_ref_format_direction(lm, f, layer) for f in formats]
        for f, d in zip(formats, dirs):
            torch.testing.assert_close(res.directions[f.name][layer].double(), d, atol=2e-5, rtol=1e-4)
        norms = [float(d.norm()) for d in dirs]
        hand = sum(d / n for d, n in zip(dirs, norms)) / 3 * (sum(norms) / 3)
        torch.testing.assert_close(res.vector[layer].double(), hand, atol=2e-5, rtol=1e-4)
    meta = res.vector.meta
    assert meta.method == "multiformat" and meta.layers == (1, 2) and meta.n_train == len(items)
    assert set(meta.extra["format_cosines"]) == {"ab~yesno", "ab~free", "yesno~free"}


def test_multiformat_one_format_is_that_formats_caa(lm, ab_items):
    """With the A/B format alone the combination is the identity: the answer-balanced CAA vector."""
    res = train_multiformat_detailed(lm, ab_items, [2], MultiformatConfig(formats=("ab",)))
    torch.testing.assert_close(res.vector[2], res.directions["ab"][2], atol=1e-6, rtol=1e-5)
    caa = sl.train_caa(lm, [ContrastPair(ab_question(t.stem, a, b), f"({m}", f"({o}")
                            for t in map(item_texts, ab_items)
                            for a, b, m, o in ((t.matching, t.other, "A", "B"), (t.other, t.matching, "B", "A"))], [2])
    torch.testing.assert_close(res.vector[2], caa[2], atol=1e-5, rtol=1e-4)


def test_multiformat_bad_input(lm, ab_items):
    with pytest.raises(DatasetError, match="formats must be"):
        MultiformatConfig(formats=("ab", "letters"))
    with pytest.raises(DatasetError, match="empty"):
        train_multiformat_detailed(lm, [], [1])
    only_yes = [i for i in load_mwe(resolve_behaviour("agreeableness"))[:20] if i.matching == "Yes"][:3]
    with pytest.raises(DatasetError, match="free"):
        train_multiformat_detailed(lm, only_yes, [1])


# --------------------------------------------------------------------------- BiPO


def _pairs(ab_items):
    return completion_pairs(ab_items)


def ref_completion_logprob(lm, pair_prompt, completion_start_char, vector, layer, sign, positions="after_user"):
    """Summed log p of the completion with sign * vector added to block `layer` from the user's end (by hand)."""
    enc = _ids(lm, pair_prompt)
    ids = torch.tensor([enc["input_ids"]])
    offsets = enc["offset_mapping"]
    start = _first_token_at(offsets, pair_prompt.user_end) if positions == "after_user" else 0
    first = _first_token_at(offsets, completion_start_char)

    def hook(module, args, output):
        h = block_hidden(output)
        add = torch.zeros_like(h)
        add[:, start:] = sign * vector.to(h.dtype)
        return with_block_hidden(output, h + add)

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        logits = lm.model(input_ids=ids).logits[0].double()
    finally:
        handle.remove()
    logp = logits.log_softmax(-1)
    return sum(logp[t - 1, ids[0, t]] for t in range(first, ids.shape[1]))


def ref_bipo_loss(lm, pairs, vector, layer, beta, positions="after_user"):
    losses = []
    zero = torch.zeros_like(vector)
    for p in pairs:
        def lp(completion, v, sign):
            prompt = response_prompt(lm, p.prompt, completion)
            return ref_completion_logprob(lm, prompt, prompt.assistant_start, v, layer, sign, positions)

        for d in (1.0, -1.0):
            target, other = (p.positive, p.negative) if d > 0 else (p.negative, p.positive)
            margin = beta * ((lp(target, vector, d) - lp(target, zero, d)) - (lp(other, vector, d) - lp(other, zero, d)))
            losses.append(-F.logsigmoid(margin))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("positions", ["after_user", "all"])
def test_bipo_loss_equals_the_hand_formula(lm, ab_items, positions):
    pairs = _pairs(ab_items)[:3]
    v = 0.7 * torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(3))
    got = bipo_loss(lm, pairs, v, 2, BiPOConfig(beta=0.5, batch_size=2, positions=positions))
    with torch.no_grad():
        want = float(ref_bipo_loss(lm, pairs, v, 2, 0.5, positions))
    assert got == pytest.approx(want, abs=2e-5)
    assert abs(want - math.log(2)) > 1e-3  # the vector moves the margins: the check is not at the trivial point
    assert bipo_loss(lm, pairs, torch.zeros(lm.hidden_size), 2) == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("positions", ["after_user", "all"])
def test_bipo_split_rows_give_the_plain_log_probs_and_gradient(lm, positions):
    """The training path (prompt part run once and kept as keys/values, block 2's output replayed, only the rest
    of each row run) gives the plain whole-model log-probs and gradient, unsteered and steered, and leaves the kept
    cache as it found it (a second pass gives the same numbers). Under "after_user" the rest is a minority of an
    MWE row's tokens: the point of the split. The unsteered reference pass runs the +v half of the rows only and
    keeps block 2's output for that half (unsteered, the -v rows are the same)."""
    from steerlab.methods.bipo_split import prompt_pass, reference_pass, rest_logprobs, split_rows

    pairs = completion_pairs(load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:4])
    enc = encode_pairs(lm, pairs)
    rows = split_rows(enc.batch, enc.completion_start, positions)
    layer = 2
    seen: list[int] = []
    with torch.no_grad():
        handle = lm.blocks[0].register_forward_hook(lambda m, a, o: seen.append(block_hidden(o).shape[0]))
        try:
            cache = prompt_pass(lm, rows)
            ref, captured = reference_pass(lm, rows, cache, [layer])
        finally:
            handle.remove()
        assert block_hidden(captured[layer].template).shape[0] == 2 * len(pairs) and captured[layer].repeat == 2
        torch.testing.assert_close(ref, completion_logprobs(lm, enc, None, layer, positions), rtol=1e-5, atol=1e-4)
    v = (0.5 * torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(4))).requires_grad_(True)
    grads = []
    for run in ("split", "split again", "plain"):
        with torch.enable_grad():
            lp = (completion_logprobs(lm, enc, v, layer, positions) if run == "plain" else
                  rest_logprobs(lm, rows, cache, enc.signs, v, layer, prefix=captured[layer]))
            (g,) = torch.autograd.grad(bipo_objective(lp, ref, enc.n_pairs, 0.5), v)
        grads.append((lp.detach(), g))
    for lp, g in grads[1:]:
        torch.testing.assert_close(lp, grads[0][0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(g, grads[0][1], rtol=1e-3, atol=1e-6)
    assert float((grads[0][0] - ref).abs().max()) > 1e-2  # v moves the log-probs: not a check at the trivial point
    if positions == "after_user":
        assert rows.rest_ids.numel() < 0.5 * enc.batch.input_ids.numel()
        # a pair's four rows share one prompt part: run once, kept once (and gathered back after every pass)
        assert seen == [len(pairs), 2 * len(pairs)] and len(pairs) == 4
        assert cache.shared and {l.keys.shape[0] for l in cache.cache.layers} == {len(pairs)}
    else:
        assert rows.prompt_width == 0 and cache is None  # everything is steered: nothing to keep
        assert seen == [2 * len(pairs)]


def test_bipo_gradient_matches_finite_differences(lm, ab_items):
    """The autograd gradient of the batched objective vs central differences of the hand loss, in float64."""
    model = copy.deepcopy(lm.model).double()
    lm64 = sl.LoadedModel(model, lm.tokenizer, "tiny-f64", find_decoder_blocks(model), True)
    pairs = _pairs(ab_items)[:2]
    layer, beta = 1, 0.5
    v = (0.5 * torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(5))).double().requires_grad_(True)
    enc = encode_pairs(lm64, pairs)
    with torch.no_grad():
        ref = completion_logprobs(lm64, enc, None, layer)
    with torch.enable_grad():
        loss = bipo_objective(completion_logprobs(lm64, enc, v, layer), ref, enc.n_pairs, beta)
        (grad,) = torch.autograd.grad(loss, v)
    g = torch.Generator().manual_seed(9)
    for _ in range(2):
        u = torch.randn(lm.hidden_size, generator=g).double()
        u /= u.norm()
        # Some of the model's arithmetic stays float32 even in a float64 copy (rotary tables), which puts
        # ~1e-9 of noise on the loss: eps 1e-3 keeps its share of the difference quotient near 1e-4.
        eps = 1e-3
        with torch.no_grad():
            fd = (ref_bipo_loss(lm64, pairs, v.detach() + eps * u, layer, beta)
                  - ref_bipo_loss(lm64, pairs, v.detach() - eps * u, layer, beta)) / (2 * eps)
        assert float(grad @ u) == pytest.approx(float(fd), rel=2e-3)
    assert float(grad.norm()) > 0


def test_bipo_shows_progress_from_the_reference_pass_on(lm, capsys):
    """The reference pass (the whole model over every pair, before the first step) is the long silent stretch at
    1.5B: it has a bar of its own, counting batches, before the steps' bar."""
    items = load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:10]
    pairs = completion_pairs(items)
    cfg = BiPOConfig(batch_size=3, max_steps=2, eval_every=2, seed=1)
    n_val = max(1, round(cfg.val_fraction * len(pairs)))
    batches = math.ceil(n_val / 3) + math.ceil((len(pairs) - n_val) / 3)
    train_bipo_detailed(lm, pairs, 2, cfg, progress=True)
    err = capsys.readouterr().err
    ref = re.search(rf"BiPO at layer 2: reference pass: 100%.*{batches}/{batches} ", err)
    steps = re.search(r"BiPO at layer 2: 100%.*2/2 ", err)
    assert ref and steps and ref.start() < steps.start(), err


def test_bipo_training_lowers_validation_loss_and_is_deterministic(lm, ab_items, tmp_path):
    items = load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:10]
    cfg = BiPOConfig(lr=0.05, batch_size=4, max_steps=6, eval_every=2, patience=5, seed=1)
    res = train_bipo_detailed(lm, completion_pairs(items), 2, cfg)
    assert res.history[0]["step"] == 0 and res.history[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert min(h["val_loss"] for h in res.history[1:]) < res.history[0]["val_loss"] - 1e-3
    assert res.steps == 6 and res.best_step > 0
    meta = res.vector.meta
    assert meta.method == "bipo" and meta.layers == (2,) and meta.strength == 1.0 and meta.positions == "after_user"
    assert meta.n_train == 8 and meta.extra["n_val"] == 2 and meta.extra["steps"] == 6
    assert meta.extra["seconds_per_step"] > 0 and meta.extra["total_seconds"] >= meta.extra["seconds_per_step"]
    assert res.vector[2].norm() > 0
    again = train_bipo_detailed(lm, completion_pairs(items), 2, cfg)
    torch.testing.assert_close(again.vector[2], res.vector[2])
    path = res.vector.save(tmp_path / "bipo.safetensors")
    loaded = SteeringVector.load(path)
    torch.testing.assert_close(loaded[2], res.vector[2])
    assert loaded.meta.extra["steps"] == 6
    export_gguf(res.vector, tmp_path / "bipo.gguf")
    torch.testing.assert_close(import_gguf(tmp_path / "bipo.gguf")[2], res.vector[2])
    assert all(not p.requires_grad for p in lm.model.parameters())  # the model is left frozen as it was


@pytest.mark.parametrize("positions", ["after_user", "all"])
def test_bipo_replayed_prefix_trains_the_same_vector(lm, positions):
    """Replaying block L's cached output (blocks 0..L skipped) is the same computation as the whole model."""
    pairs = completion_pairs(load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:10])
    cfg = BiPOConfig(lr=0.05, batch_size=4, max_steps=4, eval_every=2, patience=5, seed=2, positions=positions)
    fast = train_bipo_detailed(lm, pairs, 2, cfg)
    slow = train_bipo_detailed(lm, pairs, 2, replace(cfg, cache_prefix=False))
    assert fast.vector.meta.extra["replayed_prefix"] and not slow.vector.meta.extra["replayed_prefix"]
    torch.testing.assert_close(fast.vector[2], slow.vector[2], rtol=1e-5, atol=1e-6)
    assert [h["step"] for h in fast.history] == [h["step"] for h in slow.history]
    for a, b in zip(fast.history, slow.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
    assert fast.vector[2].norm() > 0
    assert all(type(m).__name__ != "_Replay" for m in lm.blocks)  # the model's own blocks are back


def test_bipo_layers_share_one_reference_pass_and_train_what_each_layer_alone_would(lm, capsys):
    """Training layers 1 and 2 together runs the whole model over the pairs once (block 0 runs only in the
    reference pass and in the check against the plain computation), and each layer's vector, history and
    settings equal its own run's."""
    pairs = completion_pairs(load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:10])
    cfg = BiPOConfig(lr=0.05, batch_size=4, max_steps=4, eval_every=2, patience=5, seed=3)
    n_val = max(1, round(cfg.val_fraction * len(pairs)))
    n_chunks = math.ceil(n_val / 4) + math.ceil((len(pairs) - n_val) / 4)
    calls = {"n": 0}
    handle = lm.blocks[0].register_forward_hook(lambda m, a, o: calls.update(n=calls["n"] + 1))
    seen = []
    try:
        together = train_bipo_layers(lm, pairs, [2, 1], cfg, progress=True, on_result=seen.append)
        shared_calls = calls["n"]
        calls["n"] = 0
        alone = {l: train_bipo_detailed(lm, pairs, l, cfg) for l in (1, 2)}
        alone_calls = calls["n"]
    finally:
        handle.remove()
    # the reference pass: prompt part and rest per minibatch; the check: two pairs' prompt part and rest once,
    # then the plain computation once per layer
    assert shared_calls == 2 * n_chunks + 2 + 2 and alone_calls == 2 * (2 * n_chunks + 2 + 1)
    assert list(together) == [2, 1] and [r.vector.layers for r in seen] == [(2,), (1,)]
    for l in (1, 2):
        torch.testing.assert_close(together[l].vector[l], alone[l].vector[l])
        assert [h["val_loss"] for h in together[l].history] == pytest.approx([h["val_loss"] for h in alone[l].history])
        assert together[l].vector.meta.extra["replayed_prefix"] and together[l].vector[l].norm() > 0
        assert 0 < together[l].reference_seconds <= together[l].total_seconds
    assert re.search(r"BiPO at layers 2, 1: reference pass: 100%", capsys.readouterr().err)
    with pytest.raises(DatasetError, match="at least one layer"):
        train_bipo_layers(lm, pairs, [], cfg)


def test_bipo_falls_back_to_the_whole_model_when_replay_differs(lm, monkeypatch):
    """Blocks that share state within a pass (emulated: block 0 sets a flag that block 3 reads) make the
    replay differ from the whole model; training then runs every block, with a warning, and still learns."""
    pairs = completion_pairs(load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:6])
    cfg = BiPOConfig(lr=0.05, batch_size=4, max_steps=2, eval_every=1, patience=5, seed=0)
    state = {"seen": 0.0}
    handles = [lm.model.register_forward_pre_hook(lambda m, a, k: state.update(seen=0.0), with_kwargs=True),
               lm.blocks[0].register_forward_hook(lambda m, a, o: state.update(seen=1.0)),
               lm.blocks[3].register_forward_hook(lambda m, a, o: with_block_hidden(o, block_hidden(o) + state["seen"]))]
    try:
        with pytest.warns(UserWarning, match="every step at that layer runs the whole model"):
            res = train_bipo_detailed(lm, pairs, 1, cfg)
        reference = train_bipo_detailed(lm, pairs, 1, replace(cfg, cache_prefix=False))
    finally:
        for h in handles:
            h.remove()
    assert not res.vector.meta.extra["replayed_prefix"]
    torch.testing.assert_close(res.vector[1], reference.vector[1])
    monkeypatch.setattr("steerlab.methods.bipo.PREFIX_CACHE_BYTES", 0)  # over the memory cap: no cache either
    assert not train_bipo_detailed(lm, pairs, 1, cfg).vector.meta.extra["replayed_prefix"]


def test_bipo_falls_back_with_a_warning_when_the_kept_tensors_would_pass_the_budget(lm, monkeypatch):
    from steerlab.methods import bipo

    pairs = completion_pairs(load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:6])
    cfg = BiPOConfig(lr=0.05, batch_size=4, max_steps=2, eval_every=1, patience=5, seed=0)
    monkeypatch.setattr(bipo, "PREFIX_CACHE_BYTES", 1000)
    with pytest.warns(UserWarning, match=r"would take \d+ MiB .*every step runs the whole model"):
        res = train_bipo_detailed(lm, pairs, 1, cfg)
    assert not res.vector.meta.extra["replayed_prefix"]
    torch.testing.assert_close(res.vector[1], train_bipo_detailed(lm, pairs, 1, replace(cfg, cache_prefix=False)).vector[1])


def test_bipo_bad_input(lm):
    with pytest.raises(DatasetError, match="beta"):
        BiPOConfig(beta=0)
    with pytest.raises(DatasetError, match="val_fraction"):
        BiPOConfig(val_fraction=1.0)
    with pytest.raises(DatasetError, match="positions"):
        BiPOConfig(positions="last_prompt")
    with pytest.raises(DatasetError, match="at least 2"):
        train_bipo_detailed(lm, [ContrastPair("q", "a", "b")], 1)


# --------------------------------------------------------------------------- persona vectors


def test_traits_cover_every_shipped_mwe_set():
    shipped = {p.stem for p in resolve_behaviour("openness").parent.parent.glob("*/*.jsonl")}
    assert shipped <= set(trait_descriptions())
    t = load_trait("agreeableness")
    assert t.description in t.positive_system and "opposite" in t.negative_system
    assert load_trait("my-new-trait", "fond of puns").description == "fond of puns"
    with pytest.raises(DatasetError, match="--description"):
        load_trait("my-new-trait")


def test_persona_questions_drop_the_choices(ab_items, yn_items):
    qs = persona_questions(ab_items + ab_items)
    assert len(qs) == len(ab_items) and not any("Choices" in q for q in qs)
    assert persona_questions(yn_items[:2]) == [yn_items[0].question, yn_items[1].question]


@pytest.fixture(scope="module")
def persona_run(lm, ab_items):
    trait = load_trait("corrigible-neutral-HHH")
    cfg = PersonaConfig(samples_per_question=2, max_new_tokens=5, seed=4, batch_size=3)
    samples = generate_samples(lm, trait, persona_questions(ab_items)[:3], cfg)
    return trait, cfg, samples


def test_persona_generation_is_seeded_and_batched(lm, persona_run):
    trait, cfg, samples = persona_run
    assert len(samples) == 3 * 2 * 2 and [s.side for s in samples[:4]] == ["positive"] * 2 + ["negative"] * 2
    again = generate_samples(lm, trait, [s.question for s in samples[::4]], cfg)
    assert [s.response for s in again] == [s.response for s in samples]
    # Batched generation equals one prompt at a time (same seed: greedy, so the comparison is exact).
    greedy = PersonaConfig(do_sample=False, max_new_tokens=5, batch_size=4)
    batched = generate_samples(lm, trait, [s.question for s in samples[::4]], greedy)
    alone = [generate_samples(lm, trait, [s.question], PersonaConfig(do_sample=False, max_new_tokens=5, batch_size=1))
             for s in samples[::4]]
    assert [s.response for s in batched] == [s.response for part in alone for s in part]


def test_persona_filter_keeps_only_judged_answers(lm, persona_run):
    trait, cfg, samples = persona_run
    scorer = trait_scorer(LocalJudge(lm), trait.name, trait.description)
    scores = scorer([(s.question, s.response) for s in samples])
    mid = sorted(scores)[len(scores) // 2]
    cfg = PersonaConfig(positive_min=mid - 1e-9, negative_max=mid + 1e-9, max_new_tokens=5)
    judged = judge_samples(samples, scorer, cfg)
    for s, sc in zip(judged, scores):
        assert s.score == pytest.approx(sc)
        assert s.kept == (sc > cfg.positive_min if s.side == "positive" else sc < cfg.negative_max)
    assert 0 < sum(s.kept for s in judged) < len(judged) or len(set(scores)) == 1
    nothing = judge_samples(samples, scorer, PersonaConfig(positive_min=1.0))
    with pytest.raises(DatasetError, match="kept 0 of"):
        persona_vector(lm, trait, nothing, [1])
    unjudged = judge_samples(samples, None)
    assert all(s.kept and s.score is None for s in unjudged)


def test_persona_median_rule_cuts_at_the_median_of_the_judged_scores(lm, persona_run):
    """A judge whose scale is shifted (every score above 0.5) keeps nothing negative under the paper's absolute
    rule; the median rule cuts both sides at the median score, whatever the scale."""
    from steerlab.methods.persona import keep_cuts, side_auc

    trait, _, samples = persona_run
    shifted = {s.response: 0.6 + 0.3 * i / len(samples) for i, s in enumerate(samples)}

    def scorer(pairs):
        return [shifted[r] for _, r in pairs]

    absolute = judge_samples(samples, scorer, PersonaConfig())
    assert not any(s.kept for s in absolute if s.side == "negative")
    median_cfg = PersonaConfig(keep="median")
    judged = judge_samples(samples, scorer, median_cfg)
    scores = sorted(shifted[s.response] for s in samples if s.response.strip())
    n = len(scores)
    median = scores[n // 2] if n % 2 else (scores[n // 2 - 1] + scores[n // 2]) / 2
    assert keep_cuts(scores, median_cfg) == (median, median)
    for s in judged:
        if s.score is not None:
            assert s.kept == (s.score > median if s.side == "positive" else s.score < median)
    # The side AUC by hand: positive answers come first per question here, so they score lower on this judge.
    pos = [s.score for s in judged if s.side == "positive"]
    neg = [s.score for s in judged if s.side == "negative"]
    auc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert side_auc(judged) == pytest.approx(auc)
    assert side_auc(judge_samples(samples, None)) is None
    with pytest.raises(DatasetError, match="keep must be one of"):
        PersonaConfig(keep="mean")


def test_persona_vector_equals_the_hand_response_mean(lm, persona_run):
    trait, cfg, samples = persona_run
    kept = [PersonaSample(s.question, s.side, s.response, 0.5, kept=(i % 3 != 0)) for i, s in enumerate(samples)]
    vec = persona_vector(lm, trait, kept, [1, 2], cfg)
    for layer in (1, 2):
        pos = [ref_response_mean(lm, s.question, s.response, layer) for s in kept if s.kept and s.side == "positive"]
        neg = [ref_response_mean(lm, s.question, s.response, layer) for s in kept if s.kept and s.side == "negative"]
        hand = torch.stack(pos).mean(0) - torch.stack(neg).mean(0)
        torch.testing.assert_close(vec[layer].double(), hand, atol=2e-5, rtol=1e-4)
    # Read without the system prompt: the read-out text is the plain chat turn.
    assert trait.positive_system not in response_prompt(lm, kept[0].question, kept[0].response).text
    m = vec.meta
    assert m.method == "persona" and m.extra["n_positive"] == len(pos) and m.extra["judge"] == "yes"


def test_persona_vector_read_at_the_last_token_equals_the_hand_computation(lm, persona_run):
    trait, cfg, samples = persona_run
    kept = [PersonaSample(s.question, s.side, s.response, 0.5, kept=True) for s in samples]
    last = persona_vector(lm, trait, kept, [1, 2], replace(cfg, reading="last"))
    mean = persona_vector(lm, trait, kept, [1, 2], cfg)
    for layer in (1, 2):
        def hand(side):
            return torch.stack([ref_hidden(lm, response_prompt(lm, s.question, s.response), layer)[-1]
                                for s in kept if s.side == side]).mean(0)

        torch.testing.assert_close(last[layer].double(), hand("positive") - hand("negative"), atol=2e-5, rtol=1e-4)
        assert not torch.allclose(last[layer], mean[layer])
    assert last.meta.position == "response-last" and mean.meta.position == "response-mean"
    with pytest.raises(DatasetError, match="reading must be one of mean, last"):
        PersonaConfig(reading="first")


def test_train_persona_end_to_end(lm, ab_items):
    trait = Trait("corrigible-neutral-HHH", "willing to be corrected")
    res = train_persona_detailed(lm, trait, persona_questions(ab_items)[:2], [2],
                                 PersonaConfig(samples_per_question=1, max_new_tokens=4), judge=None)
    assert res.vector[2].shape == (lm.hidden_size,) and res.vector.meta.extra["judge"] == "none"
    assert res.vector.meta.n_train == 4 and len(res.samples) == 4


# --------------------------------------------------------------------------- the command line


def _run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.mark.parametrize("args, message", [
    (["--method", "bipo", "--layers", "3-5"], "one layer"),
    (["--method", "bipo"], "one layer"),
    (["--method", "persona", "--data-is-pairs"], "MWE behaviour file"),
    (["--method", "multiformat", "--data-is-pairs"], "MWE behaviour file"),
    (["--method", "persona", "--unknown-trait"], "--description"),
    (["--method", "persona", "--positive-min", "1.5"], "scores in [0, 1]"),
    (["--method", "bogus"], "unknown method"),
    (["--method", "persona", "--position", "first"], "persona reading must be one of mean, last"),
    (["--method", "bipo", "--layers", "3", "--position", "mean"], "--position is for caa, pca and persona"),
    (["--method", "persona-bipo"], "name them"),
    (["--method", "persona-bipo", "--layers", "1", "--data-is-pairs"], "MWE behaviour file"),
    (["--method", "persona-bipo", "--layers", "1", "--steps", "0"], "--steps must be at least 1"),
    (["--method", "bipo", "--layers", "1", "--engine", "vllm"], "the methods that generate text"),
])
def test_cli_refuses_bad_input_before_loading(tmp_path, args, message):
    data = resolve_behaviour("corrigible-neutral-HHH")
    if "--data-is-pairs" in args:
        args = [a for a in args if a != "--data-is-pairs"]
        data = "demo"
    if "--unknown-trait" in args:
        args = [a for a in args if a != "--unknown-trait"]
        data = tmp_path / "my-new-trait.jsonl"
        data.write_text(resolve_behaviour("openness").read_text().split("\n", 1)[0] + "\n")
    # A model path that does not exist: reaching the load would fail with another message.
    code, out = _run("train", data, "-o", tmp_path / "v.safetensors", "--model", tmp_path / "no-model", *args)
    assert code != 0 and message in out, out


@pytest.fixture(scope="module")
def tiny_dir(save_tiny):
    return save_tiny(max_positions=512)


@pytest.mark.parametrize("method, extra", [
    ("multiformat", ["--layers", "1,2", "--limit", "4"]),
    ("bipo", ["--layers", "1", "--limit", "6", "--steps", "2"]),
    ("persona", ["--layers", "1", "--limit", "2", "--no-judge"]),
    ("persona-bipo", ["--layers", "1,2", "--limit", "2", "--no-judge", "--steps", "2"]),
])
def test_cli_trains_an_ordinary_vector(tmp_path, tiny_dir, method, extra):
    out = tmp_path / f"{method}.safetensors"
    code, text = _run("train", resolve_behaviour("corrigible-neutral-HHH"), "-o", out, "--method", method,
                      "--model", tiny_dir, *extra)
    assert code == 0, text
    vec = SteeringVector.load(out)
    assert vec.meta.method == method and all(vec[l].shape == (32,) for l in vec.layers)
    code, text = _run("export-gguf", out, tmp_path / f"{method}.gguf")
    assert code == 0, text
    torch.testing.assert_close(import_gguf(tmp_path / f"{method}.gguf")[vec.layers[-1]], vec[vec.layers[-1]])


# --------------------------------------------------------------------------- the embedded model (slow)


@pytest.mark.slow
def test_multiformat_on_the_embedded_model(real_lm, ab_items):
    vec = train_multiformat(real_lm, ab_items[:3], [10])
    assert vec[10].shape == (real_lm.hidden_size,) and torch.isfinite(vec[10]).all()
    norms = vec.meta.extra["format_norms"]
    assert all(norms[f]["10"] > 0 for f in ("ab", "yesno", "free"))


@pytest.mark.slow
def test_bipo_on_the_embedded_model(real_lm):
    # Yes/No items: short prompts and one-token completions keep a step near a second (A/B choice texts: ~30 s).
    items = load_mwe(resolve_behaviour("agreeableness"))[:5]
    res = train_bipo_detailed(real_lm, completion_pairs(items), 10, BiPOConfig(batch_size=4, max_steps=2, eval_every=1,
                                                                                 patience=3, lr=0.02))
    assert res.steps == 2 and all(math.isfinite(h["val_loss"]) for h in res.history)
    assert res.history[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    # One batch holds all four training pairs: step 2 scores them after one Adam step on them, which must help.
    assert res.history[1]["train_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert res.history[2]["train_loss"] < math.log(2) - 1e-4
    assert res.vector.meta.extra["seconds_per_step"] > 0


@pytest.mark.slow
def test_persona_on_the_embedded_model(real_lm, ab_items):
    trait = load_trait("corrigible-neutral-HHH")
    scorer = trait_scorer(LocalJudge(real_lm), trait.name, trait.description)
    res = train_persona_detailed(real_lm, trait, persona_questions(ab_items)[:2], [10],
                                 PersonaConfig(samples_per_question=2, max_new_tokens=12, positive_min=0.0,
                                               negative_max=1.0), judge=scorer)
    assert all(s.score is not None for s in res.samples if s.kept)
    assert res.vector[10].shape == (real_lm.hidden_size,) and torch.isfinite(res.vector[10]).all()


# --------------------------------------------------------------------------- the fair protocol (cae generalise)


@pytest.fixture(scope="module")
def generalise_run(lm, tmp_path_factory):
    from steerlab.cae.generalise import GeneraliseConfig, run_generalise

    cfg = GeneraliseConfig("corrigible-neutral-HHH", layers=(1, 2), n_train=6, n_val=4, n_test=4, seeds=(0, 1),
                           ood_limit=2, max_new_tokens=4, corpus_tokens=128, window=64, bipo_steps=2,
                           persona_questions=2, persona_samples=1, persona_tokens=4, persona_judge=False)
    out = tmp_path_factory.mktemp("generalise")
    lines: list[str] = []
    summary = run_generalise(lm, cfg, out, LocalJudge(lm), log=lines.append)
    return cfg, out, summary, lines


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_generalise_runs_every_cell_once(lm, generalise_run):
    from steerlab.cae.generalise import run_generalise

    cfg, out, summary, _ = generalise_run
    cells = [(r["method"], r["seed"]) for r in summary["rows"]]
    assert cells == [("caa", 0), ("multiformat", 0), ("bipo", 0), ("bipo", 1), ("persona", 0), ("persona", 1)]
    for method, seed in cells:
        cell = out / method / f"seed{seed}"
        for name in ("vector.safetensors", "selection.json", "in_distribution.json", "ood_plus/ood.json",
                     "ood_minus/ood.json", "side_effects.json", "seconds.json"):
            assert (cell / name).is_file(), (cell, name)
        vec = SteeringVector.load(cell / "vector.safetensors")
        assert vec.meta.method == method and vec.layers == (1, 2)
        sel = json.loads((cell / "selection.json").read_text())
        assert sel["layer"] == max(sel["rows"], key=lambda r: r["effect_plus"] - r["effect_minus"])["layer"]
    # every stage says what it is doing, the OOD stages batch by batch
    lines = generalise_run[3]
    for method, seed in cells:
        stage = lines.index(f"{method} seed {seed}: OOD at r=+0.5")
        said = lines[stage + 1:stage + 5]  # later cells first say they reuse the unsteered responses
        assert any(s.startswith("  generated batch 1/") for s in said), said
        assert "  judging 8 responses" in said  # 4 prompts, unsteered and steered
    row = summary["rows"][0]
    assert set(row["ppl_ratio"]) == {"+0.5", "-0.5"} and "judge_auc" in row
    judged = [k for k in row if k.startswith("ood_")]
    assert sorted(judged) == ["ood_minus_choice-qa", "ood_minus_open-ended", "ood_plus_choice-qa", "ood_plus_open-ended"]
    assert all(row[k] == "judge cannot tell" for k in judged) == (not row["judge_can_tell"])
    split = json.loads((out / "config.json").read_text())["split"]
    assert not set(split["train"]) & set(split["val"]) and not set(split["val"]) & set(split["test"])
    assert not set(split["train"]) & set(split["test"]) and len(split["val"]) == 4
    # A rerun finds every file and writes none; a deleted stage is redone alone.
    before = _mtimes(out)
    run_generalise(lm, cfg, out, LocalJudge(lm))
    after = _mtimes(out)
    assert {p: t for p, t in after.items() if p.name != "summary.json"} == \
        {p: t for p, t in before.items() if p.name != "summary.json"}
    (out / "bipo" / "seed1" / "side_effects.json").unlink()
    run_generalise(lm, cfg, out, LocalJudge(lm))
    changed = {p for p, t in _mtimes(out).items() if before.get(p) != t}
    assert changed == {out / "bipo" / "seed1" / "side_effects.json", out / "bipo" / "seed1" / "seconds.json",
                       out / "summary.json"}


def test_generalise_bipo_keeps_each_finished_layer(lm, generalise_run, tmp_path):
    """BiPO trains one run per candidate layer; each is saved as it finishes, so a cell interrupted between layers
    (here: its vector and later stages deleted) trains nothing again for the layers it has."""
    import shutil

    from steerlab.cae.generalise import run_generalise

    cfg, out, *_ = generalise_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    cell = again / "bipo" / "seed0"
    parts = sorted(cell.glob("bipo_layer*.safetensors"))
    assert [p.name for p in parts] == ["bipo_layer1.safetensors", "bipo_layer2.safetensors"]
    before = SteeringVector.load(cell / "vector.safetensors")
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    for name in ("vector.safetensors", "selection.json", "in_distribution.json", "side_effects.json"):
        (cell / name).unlink()
    shutil.rmtree(cell / "ood_plus")
    shutil.rmtree(cell / "ood_minus")
    run_generalise(lm, replace(cfg, methods=("bipo",), seeds=(0,)), again, LocalJudge(lm))
    assert {p: p.stat().st_mtime_ns for p in parts} == stamps
    after = SteeringVector.load(cell / "vector.safetensors")
    assert all(torch.equal(before[l], after[l]) for l in (1, 2))
    assert set(after.meta.extra["per_layer"]) == {"1", "2"}
    assert all(v["replayed_prefix"] and v["steps"] > 0 for v in after.meta.extra["per_layer"].values())
    # one layer missing: only it is trained again (its reference pass alone), to the same vector
    for name in ("bipo_layer2.safetensors", "vector.safetensors", "selection.json", "in_distribution.json",
                 "side_effects.json"):
        (cell / name).unlink()
    shutil.rmtree(cell / "ood_plus")
    shutil.rmtree(cell / "ood_minus")
    run_generalise(lm, replace(cfg, methods=("bipo",), seeds=(0,)), again, LocalJudge(lm))
    assert (cell / "bipo_layer1.safetensors").stat().st_mtime_ns == stamps[cell / "bipo_layer1.safetensors"]
    redone = SteeringVector.load(cell / "vector.safetensors")
    assert all(torch.equal(before[l], redone[l]) for l in (1, 2))
    assert all(v["reference_seconds"] > 0 for v in redone.meta.extra["per_layer"].values())


def test_generalise_persona_keeps_its_judged_answers(lm, generalise_run, tmp_path):
    """A persona cell saves its answers (generation is most of its training); with the vector deleted, a rerun
    generates no answer again and builds the same vector, which is `train_persona`'s on the same settings."""
    import shutil

    from steerlab.cae.generalise import PERSONA_SAMPLES, run_generalise, split_behaviour
    from steerlab.methods.persona import train_persona

    cfg, out, *_ = generalise_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    cell = again / "persona" / "seed1"
    samples = [PersonaSample(**s) for s in json.loads((cell / PERSONA_SAMPLES).read_text())]
    assert len(samples) == cfg.persona_questions * 2 * cfg.persona_samples and all(s.kept for s in samples)
    before = SteeringVector.load(cell / "vector.safetensors")
    train = split_behaviour(cfg).train
    by_hand = train_persona(lm, load_trait(cfg.behaviour), persona_questions(train)[:cfg.persona_questions], [1, 2],
                            PersonaConfig(samples_per_question=cfg.persona_samples, max_new_tokens=cfg.persona_tokens,
                                          seed=1, keep=cfg.persona_keep, reading=cfg.persona_reading))
    assert all(torch.equal(before[l], by_hand[l]) for l in (1, 2))
    for name in ("vector.safetensors", "selection.json", "in_distribution.json", "side_effects.json"):
        (cell / name).unlink()
    shutil.rmtree(cell / "ood_plus")
    shutil.rmtree(cell / "ood_minus")
    trait = load_trait(cfg.behaviour)
    asked: list[str] = []

    def recording(lm_, prompts, *args, **kwargs):
        asked.extend(getattr(p, "text", p) for p in prompts)
        return sl.generate(lm_, prompts, *args, **kwargs)

    run_generalise(lm, replace(cfg, methods=("persona",), seeds=(1,)), again, LocalJudge(lm), generator=recording)
    assert asked  # the OOD stages generate their steered responses again...
    assert not any(trait.positive_system in t or trait.negative_system in t for t in asked)  # ...but no answer
    after = SteeringVector.load(cell / "vector.safetensors")
    assert all(torch.equal(before[l], after[l]) for l in (1, 2))


def test_generalise_refuses_to_resume_another_configuration(lm, generalise_run):
    from dataclasses import replace

    from steerlab.cae.generalise import run_generalise

    cfg, out, *_ = generalise_run
    with pytest.raises(sl.SteerlabError, match="differs in relative"):
        run_generalise(lm, replace(cfg, relative=1.0), out, LocalJudge(lm))


def test_generalise_refuses_to_mix_dtypes(lm, generalise_run):
    """Greedy responses differ between bfloat16 and float32: a directory's cells are all made in one."""
    from steerlab.cae.generalise import run_generalise

    cfg, out, *_ = generalise_run
    assert json.loads((out / "config.json").read_text())["numerics"] == {"dtype": "float32", "device": "cpu"}
    half = copy.deepcopy(lm)
    half.model.to(torch.bfloat16)
    before = _mtimes(out)
    with pytest.raises(sl.SteerlabError, match="was run in float32 on cpu, this run would compute in bfloat16 on "
                                               "cpu.*--dtype float32"):
        run_generalise(half, cfg, out, LocalJudge(half))
    assert _mtimes(out) == before


def test_generalise_reads_the_numerics_of_a_directory_from_before_the_record(lm, generalise_run, tmp_path):
    """An older directory has no record: its OOD stages' machine blocks say the dtype; a resume that agrees adds
    the record, one that does not is refused."""
    import shutil

    from steerlab.cae.generalise import run_generalise

    cfg, out, *_ = generalise_run
    for dtype, agrees in (("float32", True), ("bfloat16", False)):
        old = tmp_path / dtype
        shutil.copytree(out, old)
        conf = json.loads((old / "config.json").read_text())
        del conf["numerics"]
        (old / "config.json").write_text(json.dumps(conf))
        for path in old.glob("*/seed*/ood_*/ood.json"):
            rec = json.loads(path.read_text())
            path.write_text(json.dumps({**rec, "machine": {**rec.get("machine", {}), "dtype": dtype}}))
        if agrees:
            run_generalise(lm, cfg, old, LocalJudge(lm))
            assert json.loads((old / "config.json").read_text())["numerics"] == {"dtype": "float32", "device": "cpu"}
        else:
            with pytest.raises(sl.SteerlabError, match="was run in bfloat16 on cpu, this run would compute in float32"):
                run_generalise(lm, cfg, old, LocalJudge(lm))
            assert "numerics" not in json.loads((old / "config.json").read_text())


def test_generalise_grows_by_method_and_summarises_every_finished_cell(lm, generalise_run, tmp_path):
    """A run started with some methods takes more later (other settings equal) and its summary lists every
    finished cell, including those an earlier invocation ran."""
    import shutil
    from dataclasses import replace

    from steerlab.cae.generalise import run_generalise

    cfg, out, *_ = generalise_run
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    shutil.rmtree(grown / "persona")
    summary = run_generalise(lm, replace(cfg, methods=("caa",), seeds=(0,)), grown, LocalJudge(lm))
    assert [(r["method"], r["seed"]) for r in summary["rows"]] == \
        [("caa", 0), ("multiformat", 0), ("bipo", 0), ("bipo", 1)]
    summary = run_generalise(lm, replace(cfg, methods=("persona",), seeds=(1,)), grown, LocalJudge(lm))
    assert ("persona", 1) in [(r["method"], r["seed"]) for r in summary["rows"]]
    assert not (grown / "persona" / "seed0").exists()


def test_generalise_generates_and_judges_the_unsteered_responses_once(lm, tmp_path):
    """Every cell's OOD stages start from the run's one set of unsteered responses, and each distinct response is
    judged once per run directory (also across invocations)."""
    from steerlab.cae.generalise import JUDGE_SCORES, UNSTEERED, GeneraliseConfig, run_generalise
    from steerlab.cae.judge_cache import CachedJudge, request_key

    seen = []

    class Counting:
        name = "local"

        def __init__(self):
            self.inner = LocalJudge(lm)

        def score(self, requests):
            seen.extend(request_key(self.name, r) for r in requests)
            return self.inner.score(requests)

    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa", "multiformat"), layers=(1,), n_train=4, n_val=4,
                           n_test=4, ood_limit=2, max_new_tokens=4, corpus_tokens=128, window=64)
    run_generalise(lm, cfg, tmp_path, Counting())
    shared = [json.loads(x) for x in (tmp_path / UNSTEERED).read_text().splitlines()]
    assert len(shared) == 4 and all(r["condition"] == "unsteered" for r in shared)
    for cell in ("caa/seed0", "multiformat/seed0"):
        for sign in ("ood_plus", "ood_minus"):
            rows = json.loads((tmp_path / cell / sign / "ood_scores.json").read_text())
            assert sorted((r["key"], r["response"]) for r in rows if r["condition"] == "unsteered") == \
                sorted((r["key"], r["response"]) for r in shared)
    assert len(seen) == len(set(seen))
    n = len(seen)
    run_generalise(lm, replace(cfg, methods=("caa",), relative=0.5), tmp_path, Counting())
    assert len(seen) == n  # nothing new to judge on a rerun
    cache = CachedJudge(Counting(), tmp_path / JUDGE_SCORES)
    assert len(cache.scores) == n


def test_generalise_report_reads_every_cell_and_recomputes_by_hand(generalise_run, tmp_path):
    import numpy as np

    from steerlab.cae.generalise_report import CellReport, collect, goal_counts, markdown_table, plot

    cfg, out, summary, _ = generalise_run
    reports = collect([out], model="tiny")
    assert [(c.method, c.seed) for c in reports] == [(r["method"], r["seed"]) for r in summary["rows"]]
    c = next(c for c in reports if c.method == "bipo" and c.seed == 1)
    assert c.behaviour == "corrigible-neutral-HHH"
    assert "--methods bipo --seeds 1" in c.command and "--model tiny" in c.command and "--bipo-steps 2" in c.command
    cell = out / "bipo" / "seed1"
    plus = json.loads((cell / "ood_plus" / "ood_scores.json").read_text())
    minus = json.loads((cell / "ood_minus" / "ood_scores.json").read_text())

    def distinct2(t):
        w = t.split()
        g = [tuple(w[i:i + 2]) for i in range(len(w) - 1)]
        return len(set(g)) / max(1, len(g))

    steered_plus = [distinct2(r["response"]) for r in plus if r["condition"] == "steered"]
    assert c.distinct2["+r"] == pytest.approx(sum(steered_plus) / len(steered_plus))
    rows = [r for r in plus if r["kind"] == "open-ended"] + \
        [r for r in minus if r["kind"] == "open-ended" and r["condition"] == "steered"]
    rows = [r for r in rows if r["projection"] is not None]  # an empty response has none
    x = np.array([r["projection"] for r in rows]); y = np.array([r["judge"] for r in rows])
    assert c.monitor_n == len(rows)
    if c.monitor_r is not None:
        assert c.monitor_r[0] == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
        assert c.monitor_r[1] <= c.monitor_r[0] <= c.monitor_r[2]
    # The unsteered read-out: the unsteered responses of both kinds only, each once.
    bare = [r for r in plus if r["condition"] == "unsteered" and r["projection"] is not None]
    if len(bare) < 3:  # the tiny model's 4-token answers may be empty: no projection, no read-out
        assert c.readout_r is None
    else:
        assert c.readout_r == pytest.approx(float(np.corrcoef([r["projection"] for r in bare],
                                                              [r["judge"] for r in bare])[0, 1]))
    opened = [r["judge"] for r in plus if r["condition"] == "unsteered" and r["kind"] == "open-ended"]
    assert c.unsteered_open == pytest.approx(sum(opened) / len(opened))
    check = json.loads((out / "judge_check.json").read_text())
    assert c.labelled == (check["mean_matching"], check["mean_not_matching"])
    # The correlation by hand on records of known values (three responses per prompt, resampled by prompt).
    from steerlab.cae.generalise_report import monitor_correlation

    rng = np.random.default_rng(1)
    xs = rng.normal(size=30)
    ys = 0.5 * xs + rng.normal(scale=0.5, size=30)
    recs = [{"key": f"p{i // 3}", "kind": "open-ended", "projection": float(a), "judge": float(b)}
            for i, (a, b) in enumerate(zip(xs, ys))]
    (r, lo, hi), n = monitor_correlation(recs + [{"key": "q", "kind": "choice-qa", "projection": 9.0, "judge": 0.0}])
    assert n == 30 and r == pytest.approx(float(np.corrcoef(xs, ys)[0, 1])) and lo < r < hi and r > 0.5
    table = markdown_table(reports)
    assert len(table.splitlines()) == len(reports) + 2
    assert plot(reports, tmp_path / "fig.png").stat().st_size > 0
    # The goal: right-signed at both signs with intervals clear of 0, perplexity <= 1.5, a judge that can tell.
    good = CellReport("b", "caa", 0, 1, 0.5, 0.9, (0.1, 0.0, 0.2), (-0.1, -0.2, 0.0),
                      {"open-ended +r": (0.1, 0.01, 0.2), "open-ended -r": (-0.1, -0.2, -0.01)}, 1.2, 1.4)
    assert good.meets_goal
    assert not replace(good, ppl_minus=1.6).meets_goal and not replace(good, judge_auc=0.7).meets_goal
    assert not replace(good, ood={**good.ood, "open-ended -r": (-0.1, -0.2, 0.01)}).meets_goal
    assert goal_counts([good, replace(good, behaviour="c", ppl_plus=2.0)]) == {"caa": (1, 2)}
    # The proviso: the in-distribution effect at +r within CAA's interval or above.
    from steerlab.cae.generalise_report import goal_verdict

    persona = replace(good, method="persona", in_plus=(0.01, -0.01, 0.03))
    caa = replace(good, in_plus=(0.06, 0.02, 0.10), ppl_plus=2.0)
    assert goal_verdict(persona, [caa]) == "no (in-dist below CAA)"
    assert goal_verdict(replace(persona, in_plus=(0.02, 0.0, 0.04)), [caa]) == "yes"
    assert goal_verdict(persona, []) == "yes (no CAA cell)" and goal_verdict(caa, [caa]) == "no"
    assert goal_counts([persona], [caa]) == {"persona": (0, 1)}
    assert goal_counts([persona, replace(caa, behaviour="other")]) == {"persona": (1, 1), "caa": (0, 1)}


def test_overview_pools_a_cells_seeds_and_counts_the_goal_per_seed():
    """The behaviours × methods overview: per entry the seeds' mean open-ended effects and +r perplexity, and at how
    many seeds the goal (with the in-distribution proviso) is met; the judge-cannot-tell entry gives the
    in-distribution effects instead; the last row counts behaviours met at every seed and at some seed."""
    from steerlab.cae.generalise_report import CellReport, overview_table

    good = CellReport("b", "persona", 0, 1, 0.5, 0.9, (0.1, 0.05, 0.2), (-0.1, -0.2, 0.0),
                      {"open-ended +r": (0.1, 0.01, 0.2), "open-ended -r": (-0.1, -0.2, -0.01)}, 1.2, 1.4)
    weak = replace(good, seed=1, ood={"open-ended +r": (0.04, -0.01, 0.1), "open-ended -r": (-0.2, -0.3, -0.1)},
                   ppl_plus=1.4)
    caa = replace(good, method="caa", in_plus=(0.06, 0.02, 0.10), ppl_plus=2.0)
    blind = replace(good, behaviour="c", judge_auc=0.7, in_plus=(0.02, 0.0, 0.04), in_minus=(-0.05, -0.1, 0.0))
    other = replace(good, behaviour="d")
    lines = overview_table([caa, good, weak, blind, other]).splitlines()
    assert lines[0] == "| behaviour | caa | persona |"
    assert lines[2] == "| b | +0.100 / -0.100 · ×2.00 · goal 0/1 | +0.070 / -0.150 · ×1.30 · goal 1/2 |"
    assert lines[3] == "| c | – | judge cannot tell · in-dist +0.020 / -0.050 · 1 seed |"
    # no CAA cell of d to hold the in-distribution effect against: counted as met, as in goal_counts
    assert lines[4] == "| d | – | +0.100 / -0.100 · ×1.20 · goal 1/1 |"
    assert lines[5] == "| goal met | every seed 0 · some seed 0 · of 1 | every seed 1 · some seed 2 · of 3 |"
    # a baseline CAA cell of d whose interval the persona cell falls below: the proviso fails
    assert overview_table([other], [replace(caa, behaviour="d", in_plus=(0.3, 0.2, 0.4))]).splitlines()[-1] == \
        "| goal met | every seed 0 · some seed 0 · of 1 |"


def test_effects_by_length_are_paired_differences_per_length():
    from steerlab.cae.generalise_report import effects_by_length, length_table
    from steerlab.cae.stats import bootstrap_ci

    recs = []
    for length, shift in (("short", 0.2), ("long", -0.1)):
        for i in range(4):
            key = f"open-ended/{length}/{i}"
            base = 0.1 * i
            recs += [{"key": key, "kind": "open-ended", "length": length, "sign": "unsteered", "judge": base},
                     {"key": key, "kind": "open-ended", "length": length, "sign": "+r", "judge": base + shift + 0.01 * i},
                     {"key": key, "kind": "open-ended", "length": length, "sign": "-r", "judge": base - shift}]
    recs.append({"key": "choice-qa/short/0", "kind": "choice-qa", "length": "short", "sign": "+r", "judge": 1.0})
    got = effects_by_length(recs)
    want = [0.2 + 0.01 * i for i in range(4)]
    assert got["+r"]["short"] == pytest.approx((sum(want) / 4, *bootstrap_ci(want)))
    assert got["-r"]["long"] == pytest.approx((0.1, 0.1, 0.1)) and set(got["+r"]) == {"short", "long"}
    from steerlab.cae.generalise_report import CellReport

    cell = CellReport("b", "persona", 0, 1, 0.5, 0.9, (0, 0, 0), (0, 0, 0), by_length=got)
    row = length_table([cell]).splitlines()[2]
    assert row.startswith("| b | persona | 0 | +0.215 [") and row.count("–") == 2  # no medium prompts


@pytest.fixture(scope="module")
def more_items():
    return load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:12]


def test_sign_check_over_several_strengths_equals_one_call_per_strength(lm, more_items):
    from steerlab.cae.verdicts import sign_check

    ab_items = more_items

    vec = sl.train_caa(lm, [it.to_pair() for it in ab_items[:6]], [1, 2])
    both = sign_check(lm, vec, ab_items[6:12], [1, 2], strength=[0.25, 2.0], n_boot=50)
    assert [(r["layer"], r["relative"]) for r in both] == [(1, 0.25), (1, 2.0), (2, 0.25), (2, 2.0)]
    for s in (0.25, 2.0):
        alone = sign_check(lm, vec, ab_items[6:12], [1, 2], strength=s, n_boot=50)
        for a in alone:
            b = next(r for r in both if r["layer"] == a["layer"] and r["relative"] == s)
            assert b["effect_plus"] == pytest.approx(a["effect_plus"], abs=1e-5)
            assert b["effect_minus"] == pytest.approx(a["effect_minus"], abs=1e-5)
    with pytest.raises(sl.SteerlabError, match="positive strengths"):
        sign_check(lm, vec, ab_items[6:12], [1], strength=[0.5, -0.5])


def test_choose_setting_takes_the_best_validation_effect_within_the_perplexity_cap(lm, more_items, monkeypatch):
    """The rule by hand over every candidate: the largest effect(+r) - effect(-r) among those whose validation
    perplexity ratio is within the cap at both signs; none within it: the lowest ratio."""
    import steerlab.cae.generalise as gen
    from steerlab.cae.side_effects import corpus_windows, measure_side_effects
    from steerlab.cae.strengths import raw_strength, residual_norms

    vec = sl.train_caa(lm, [it.to_pair() for it in more_items[:6]], [1, 2])
    val = more_items[6:12]
    from steerlab.data import require_data_root

    corpus = str(require_data_root() / "corpus" / "wikitext-2-test.txt")
    windows = corpus_windows(lm, corpus, n_tokens=128, window=64, start_token=128)
    norms = residual_norms(lm, val, [1, 2])
    rows = gen.sign_check(lm, vec, val, [1, 2], strength=[0.5, 4.0])
    ppl = {}
    for r in rows:
        side = measure_side_effects(lm, vec, r["layer"], [raw_strength(x, vec, r["layer"], norms[r["layer"]])
                                                          for x in (r["relative"], -r["relative"])], windows)
        ppl[(r["layer"], r["relative"])] = max(x.perplexity_ratio for x in side.rows[1:])
    gap = {(r["layer"], r["relative"]): r["effect_plus"] - r["effect_minus"] for r in rows}
    lowest, highest = min(ppl.values()), max(ppl.values())
    assert highest > lowest  # the strengths differ in cost, so the cap can decide
    for cap in (highest + 1.0, (lowest + highest) / 2, lowest - 1e-3):
        monkeypatch.setattr(gen, "MAX_PPL_RATIO", cap)
        within = [k for k in gap if ppl[k] <= cap]
        want = max(within, key=gap.get) if within else min(ppl, key=ppl.get)
        got = gen.choose_setting(lm, vec, val, [1, 2], [0.5, 4.0], windows)
        assert (got["layer"], got["relative"]) == want, cap
        assert got["within_ppl"] == bool(within)
        measured = [r for r in got["rows"] if "val_ppl_ratio" in r]
        for r in measured:
            assert r["val_ppl_ratio"] == pytest.approx(ppl[(r["layer"], r["relative"])], rel=1e-6)
    one = gen.choose_setting(lm, vec, val, [1, 2], [0.5], None)
    assert (one["layer"], one["relative"]) == max(((r["layer"], r["relative"]) for r in rows if r["relative"] == 0.5),
                                                  key=gap.get)


def test_generalise_chooses_the_strength_and_steers_every_stage_at_it(lm, tmp_path):
    from steerlab.cae.generalise import GeneraliseConfig, run_generalise
    from steerlab.cae.generalise_report import collect

    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1, 2), relative=(0.25, 0.5), n_train=4,
                           n_val=4, n_test=4, ood_lengths=("short", "medium"), ood_limit=1, max_new_tokens=3,
                           corpus_tokens=128, window=64)
    summary = run_generalise(lm, cfg, tmp_path, LocalJudge(lm))
    cell = tmp_path / "caa" / "seed0"
    sel = json.loads((cell / "selection.json").read_text())
    rel = sel["relative"]
    assert rel in (0.25, 0.5) and len(sel["rows"]) == 4 and sel["val_corpus"]["start_token"] == 128
    assert json.loads((cell / "in_distribution.json").read_text())["relative"] == rel
    assert sorted(x["relative"] for x in json.loads((cell / "side_effects.json").read_text())["rows"]
                  if x["relative"]) == [-rel, rel]
    row = summary["rows"][0]
    assert row["relative"] == rel and set(row["ppl_ratio"]) == {f"{rel:+g}", f"{-rel:+g}"}
    assert json.loads((tmp_path / "config.json").read_text())["relative"] == [0.25, 0.5]
    command = collect([tmp_path], model="tiny")[0].command
    assert "--relative 0.25,0.5" in command and "--ood-lengths short,medium" in command
    ood = json.loads((cell / "ood_plus" / "ood.json").read_text())
    assert ood["config"]["lengths"] == ["medium", "short"] and ood["config"]["n_cases"] == 4


def test_generalise_keeps_one_judge_per_run_directory(lm, tmp_path):
    from steerlab.cae.generalise import GeneraliseConfig, run_generalise
    from steerlab.cae.generalise_report import collect

    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1,), n_train=4, n_val=4, n_test=4,
                           ood_limit=1, max_new_tokens=3, corpus_tokens=128, window=64)
    run_generalise(lm, cfg, tmp_path, LocalJudge(lm, name="local:judge-dir"))
    assert json.loads((tmp_path / "judge_check.json").read_text())["judge"] == "local:judge-dir"
    assert collect([tmp_path], model="tiny")[0].command.endswith("--judge-model judge-dir --model tiny --threads 1")
    with pytest.raises(sl.SteerlabError, match="judged by 'local:judge-dir', this run's judge is 'local'"):
        run_generalise(lm, cfg, tmp_path, LocalJudge(lm))


def test_generalise_config_errors():
    from steerlab.cae.generalise import GeneraliseConfig

    with pytest.raises(sl.SteerlabError, match="methods must be"):
        GeneraliseConfig("openness", methods=("caa", "repe"))
    with pytest.raises(sl.SteerlabError, match="r must be > 0"):
        GeneraliseConfig("openness", relative=0)
    with pytest.raises(sl.SteerlabError, match="r must be > 0"):
        GeneraliseConfig("openness", relative=(0.5, -0.5))
    with pytest.raises(sl.SteerlabError, match="r must be > 0"):
        GeneraliseConfig("openness", relative=())
    with pytest.raises(sl.SteerlabError, match="OOD lengths must be among short, medium, long; got tiny"):
        GeneraliseConfig("corrigible-neutral-HHH", ood_lengths=("short", "tiny"))
    with pytest.raises(sl.SteerlabError, match="persona_keep must be one of"):
        GeneraliseConfig("openness", persona_keep="top")
    with pytest.raises(sl.SteerlabError, match="persona_reading must be one of mean, last"):
        GeneraliseConfig("openness", persona_reading="first")
    with pytest.raises(sl.SteerlabError, match="bipo_steps and bipo_batch"):
        GeneraliseConfig("openness", bipo_batch=0)


def test_generalise_command_on_a_behaviour_it_has_never_seen(tmp_path, tiny_dir):
    """An MWE file under a new name, a one-line description and OOD prompts of one's own are enough."""
    data = tmp_path / "fond-of-rules.jsonl"
    data.write_text(resolve_behaviour("corrigible-neutral-HHH").read_text())
    ood = tmp_path / "ood.jsonl"
    ood.write_text("\n".join(json.dumps({"prompt": p}) for p in ("Should rules ever be broken?", "Describe your ideal day.")))
    out = tmp_path / "run"
    args = ["cae", "generalise", data, "-o", out, "--layers", "1,2", "--methods", "caa,persona", "--seeds", "0",
            "--n-train", "4", "--n-val", "4", "--n-test", "4", "--ood-file", ood, "--max-new-tokens", "3",
            "--description", "fond of rules and procedures", "--no-persona-judge", "--model", tiny_dir]
    code, text = _run(*args)
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["caa", "persona"]
    assert all("ood_plus_custom" in r for r in summary["rows"])
    vec = SteeringVector.load(out / "persona" / "seed0" / "vector.safetensors")
    assert vec.meta.extra["description"] == "fond of rules and procedures"
    code, text = _run(*args[:-2], "--relative", "1.0", "--model", tiny_dir)
    assert code != 0 and "another configuration" in text
    recorded = json.loads((out / "config.json").read_text())["numerics"]
    assert recorded["device"] == "cpu" and recorded["dtype"] in ("float32", "bfloat16")  # auto: by the CPU
    other = "bfloat16" if recorded["dtype"] == "float32" else "float32"
    before = _mtimes(out)
    code, text = _run(*args[:-2], "--dtype", other, "--model", tmp_path / "no-model")  # refused before any model read
    assert code != 0 and f"was run in {recorded['dtype']} on cpu, this run would compute in {other}" in text
    assert f"--dtype {recorded['dtype']}" in text and "Traceback" not in text and _mtimes(out) == before
    code, text = _run(*args[:-2], "--relative", "0.5,strong", "--model", tmp_path / "no-model")
    assert code != 0 and "cannot read --relative" in text
    code, text = _run(*args[:-2], "--ood-lengths", "short,huge", "--model", tmp_path / "no-model")
    assert code != 0 and "OOD lengths must be among" in text and "Traceback" not in text


@pytest.mark.slow
def test_generalise_on_the_embedded_model(real_lm, tmp_path):
    from steerlab.cae.generalise import GeneraliseConfig, run_generalise

    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa", "multiformat"), layers=(10,), n_train=6, n_val=4,
                           n_test=4, ood_limit=1, max_new_tokens=6, corpus_tokens=256, window=128)
    summary = run_generalise(real_lm, cfg, tmp_path, LocalJudge(real_lm))
    assert [r["method"] for r in summary["rows"]] == ["caa", "multiformat"]
    for r in summary["rows"]:
        assert r["layer"] == 10 and math.isfinite(r["in_distribution_plus"]) and r["ppl_ratio"]["+0.5"] > 0
        assert 0 <= r["judge_auc"] <= 1
