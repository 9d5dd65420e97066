"""Strength schedules (`steerlab.schedules`): a term's strength weighted along the positions it steers, checked
against a hand-written hook that adds w(k) * alpha * v at the k-th steered position of each row, in a forward pass,
in greedy generation, in the scoring engine, in the corpus perplexity, and through `steerlab cae generalise`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
from steerlab.cae.generalise import GeneraliseConfig, run_generalise, split_behaviour
from steerlab.cae.generalise_report import collect
from steerlab.cae.judge import LocalJudge
from steerlab.cae.ood import read_generations
from steerlab.cae.side_effects import corpus_windows, measure_side_effects
from steerlab.cli import app
from steerlab.engine import ScoringItem, Setting, score, score_naive
from steerlab.layers import block_hidden, with_block_hidden
from steerlab.schedules import Schedule

LAYER = 2
ALPHA = 6.0
PROMPTS = ["Tell me about the sea.", "Hi"]


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=512)


@pytest.fixture(scope="module")
def vec(lm):
    """A unit-scale random direction at LAYER (the metadata of a CAA vector on the same model)."""
    from steerlab.data import load_pairs

    caa = sl.train_caa(lm, load_pairs("steerlab/resources/demo_contrast.jsonl")[:4], layers=[LAYER])
    g = torch.Generator().manual_seed(0)
    return sl.SteeringVector({LAYER: torch.randn(lm.hidden_size, generator=g)}, caa.meta)


def hand_hook(weights, start: torch.Tensor, pad: torch.Tensor, delta: torch.Tensor):
    """Adds weights(k) * delta at every real position p >= start of its row (k = p - start; positions row-relative,
    i.e. counted after the row's left pads), for a full forward (no cache)."""
    def hook(module, args, output):
        h = block_hidden(output)
        pos = torch.arange(h.shape[1])[None, :] - pad[:, None]
        k = pos - start[:, None]
        w = torch.where((pos >= 0) & (k >= 0), weights(k.clamp_min(0).float()), torch.zeros(()))
        return with_block_hidden(output, h + w[..., None].to(h.dtype) * delta.to(h.dtype))
    return hook


def hand_weights(spec: str):
    kind, _, span = spec.partition(":")
    if kind == "first":
        return lambda k: (k < int(span)).float()
    if kind == "decay":
        return lambda k: 0.5 ** (k / int(span))
    return lambda k: torch.ones_like(k)


def test_parse_and_weights():
    assert Schedule.parse(None).spec == "constant" and Schedule.parse(" First:8 ").spec == "first:8"
    assert Schedule.parse("decay:4") == Schedule("decay", 4)
    for bad in ("first", "first:0", "decay:-1", "linear:3", "first:2.5"):
        with pytest.raises(sl.SteerlabError, match="unknown strength schedule"):
            Schedule.parse(bad)
    k = torch.arange(6)
    assert Schedule.parse("first:2").weights(k).tolist() == [1, 1, 0, 0, 0, 0]
    assert Schedule.parse("decay:2").weights(k).tolist() == pytest.approx([0.5 ** (i / 2) for i in range(6)])
    assert Schedule.parse("constant").weights(k).tolist() == [1.0] * 6


def test_a_bad_schedule_is_one_clear_error(lm, vec):
    with pytest.raises(sl.SteerlabError, match="unknown strength schedule 'sometimes'"):
        sl.generate(lm, PROMPTS, sl.Steering(vec, ALPHA, (LAYER,), schedule="sometimes"), max_new_tokens=2)


@pytest.mark.parametrize("spec", ["first:3", "decay:2", "constant"])
@pytest.mark.parametrize("positions", ["after_user", "all"])
def test_a_scheduled_forward_equals_the_hand_hook(lm, vec, spec, positions):
    batch = sl.encode(lm, [sl.format_prompt(lm, p) for p in PROMPTS])
    pad = (batch.attention_mask.cumsum(1) == 0).sum(1)
    start = batch.after_user_start if positions == "after_user" else torch.zeros(len(PROMPTS), dtype=torch.long)
    with torch.no_grad():
        with sl.steer(lm, [sl.Steering(vec, ALPHA, (LAYER,), positions, schedule=spec)], batch=batch):
            ours = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        handle = lm.blocks[LAYER].register_forward_hook(hand_hook(hand_weights(spec), start, pad, ALPHA * vec[LAYER]))
        try:
            ref = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        finally:
            handle.remove()
    real = batch.attention_mask.bool()
    assert torch.allclose(ours[real], ref[real], atol=1e-5)


def hand_generate(lm, prompt: str, vec, spec: str, n: int) -> str:
    """Greedy decoding one token at a time, a full forward per token, steered by the hand hook from the end of the
    user's message on."""
    batch = sl.encode(lm, [sl.format_prompt(lm, prompt)])
    ids = batch.input_ids
    handle = lm.blocks[LAYER].register_forward_hook(
        hand_hook(hand_weights(spec), batch.after_user_start, torch.zeros(1, dtype=torch.long), ALPHA * vec[LAYER]))
    try:
        with torch.no_grad():
            for _ in range(n):
                nxt = lm.model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
                if int(nxt) == lm.tokenizer.eos_token_id:
                    break
    finally:
        handle.remove()
    return lm.tokenizer.decode(ids[0, batch.input_ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("spec", ["first:4", "decay:3"])
def test_scheduled_generation_equals_hand_decoding(lm, vec, spec):
    """Batched, left-padded, with the KV cache: each row counts its own steered positions."""
    ours = sl.generate(lm, PROMPTS, sl.Steering(vec, ALPHA, (LAYER,), "after_user", schedule=spec), max_new_tokens=8)
    assert ours == [hand_generate(lm, p, vec, spec, 8) for p in PROMPTS]
    constant = sl.generate(lm, PROMPTS, sl.Steering(vec, ALPHA, (LAYER,), "after_user"), max_new_tokens=8)
    assert ours != constant or spec == "decay:3"  # first:4 stops steering inside the 8 tokens


def test_the_engine_keeps_each_settings_schedule(lm, vec):
    items = [ScoringItem(sl.format_prompt(lm, p, ""), (" The sea is deep.", " No."), target=0) for p in PROMPTS]
    settings = [Setting.unsteered(),
                Setting((sl.Steering(vec, ALPHA, (LAYER,), "after_user"),)),
                Setting((sl.Steering(vec, ALPHA, (LAYER,), "after_user", schedule="first:2"),)),
                Setting((sl.Steering(vec, ALPHA, (LAYER,), "after_user", schedule="decay:1"),))]
    fast, naive = score(lm, items, settings).logprobs, score_naive(lm, items, settings).logprobs
    assert torch.allclose(fast, naive, atol=1e-4)
    assert not torch.allclose(fast[1], fast[2], atol=1e-3) and not torch.allclose(fast[2], fast[3], atol=1e-3)
    assert "first:2" in settings[2].label


def test_the_corpus_cost_counts_from_each_windows_first_token(lm, vec):
    windows = corpus_windows(lm, str(sl.data.require_data_root() / "corpus" / "wikitext-2-test.txt"), n_tokens=64,
                             window=32)
    first = measure_side_effects(lm, vec, LAYER, [ALPHA], windows, schedule="first:5")
    ids = windows.ids
    handle = lm.blocks[LAYER].register_forward_hook(
        hand_hook(hand_weights("first:5"), torch.zeros(len(ids), dtype=torch.long),
                  torch.zeros(len(ids), dtype=torch.long), ALPHA * vec[LAYER]))
    try:
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=ids).logits.float(), -1)[:, :-1]
    finally:
        handle.remove()
    nll = -lp.gather(2, ids[:, 1:, None]).squeeze(2).double().mean(1)
    assert first.per_window[ALPHA]["nll"] == pytest.approx(nll.tolist(), rel=1e-5)
    whole = measure_side_effects(lm, vec, LAYER, [ALPHA], windows)
    long = measure_side_effects(lm, vec, LAYER, [ALPHA], windows, schedule="first:32")
    assert long.rows[1].perplexity_ratio == pytest.approx(whole.rows[1].perplexity_ratio, rel=1e-9)
    assert first.config["schedule"] == "first:5" and "schedule" not in whole.config


def test_the_vllm_generator_refuses_mixed_schedules_before_starting(lm, vec):
    from steerlab.serve.engines.vllm import TextGenerator

    gen = TextGenerator()
    terms = [sl.Steering(vec, ALPHA, (LAYER,), schedule="first:2"), sl.Steering(vec, -ALPHA, (LAYER,))]
    with pytest.raises(sl.SteerlabError, match=r"the vllm engine: .*same schedule and positions \(here: first:2 at "
                                               r"after_user\)"):
        gen(lm, PROMPTS, terms)
    assert gen._engine is None


def test_generalise_steers_every_stage_on_the_schedule(lm, tmp_path):
    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1, 2), relative=4.0, n_train=4,
                           n_val=4, n_test=4, ood_limit=1, max_new_tokens=4, corpus_tokens=128, window=64,
                           schedule="first:5")
    out = tmp_path / "run"
    run_generalise(lm, cfg, out, LocalJudge(lm))
    cell = out / "caa" / "seed0"
    v = sl.SteeringVector.load(cell / "vector.safetensors")
    layer = json.loads((cell / "selection.json").read_text())["layer"]
    for name in ("ood_plus", "ood_minus"):
        assert json.loads((cell / name / "ood.json").read_text())["config"]["schedule"] == "first:5"
        steered = [g for g in read_generations(cell / name / "ood_generations.jsonl").values()
                   if g.condition == "steered"]
        assert steered and all(g.schedule == "first:5" for g in steered)
        for g in steered:
            term = sl.Steering(v, g.strength, (layer,), "after_user", schedule="first:5")
            assert g.response == sl.generate(lm, [g.prompt], term, max_new_tokens=4)[0]
    ind = json.loads((cell / "in_distribution.json").read_text())
    from steerlab.cae.verdicts import sign_check

    ref = sign_check(lm, v, split_behaviour(cfg).test, [layer], strength=4.0, schedule="first:5")[0]
    assert (ind["effect_plus"], ind["effect_minus"]) == pytest.approx((ref["effect_plus"], ref["effect_minus"]), abs=1e-6)
    assert "--schedule first:5" in collect([out], model="tiny")[0].command
    with pytest.raises(sl.SteerlabError, match="differs in schedule"):
        run_generalise(lm, GeneraliseConfig(**{**cfg.__dict__, "schedule": "constant"}), out, LocalJudge(lm))
    with pytest.raises(sl.SteerlabError, match="write the schedule as 'first:5'"):
        GeneraliseConfig("openness", schedule="First:5")


def test_cli_schedules_fail_before_the_model_load(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["generate", "hi", "--schedule", "first:2", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "give --vector too" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["generate", "hi", "--schedule", "slowly", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "unknown strength schedule 'slowly'" in res.output
    res = runner.invoke(app, ["cae", "generalise", "openness", "-o", str(tmp_path / "run"), "--layers", "1",
                              "--schedule", "decay:0", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "unknown strength schedule 'decay:0'" in res.output
    assert not (tmp_path / "run").exists()
    res = runner.invoke(app, ["cae", "side-effects", "openness", "-o", str(tmp_path / "se"), "--layer", "1",
                              "--schedule", "first:x", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "unknown strength schedule 'first:x'" in res.output
    assert not (tmp_path / "se").exists()
