"""Conditional steering (CAST): condition vectors trained and chosen on real prompts, decided per row,
combined with and/or/not, stored in the vector file; a non-firing row is exactly the unsteered one."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
from steerlab.cli import app
from steerlab.condition import (AllOf, AnyOf, ConditionVector, Not, best_threshold, rule_of, train_condition)
from steerlab.data.prompt_sets import load_condition_harmful, load_prompts
from steerlab.errors import DatasetError, VectorError
from steerlab.steering import apply_steering

from conftest import make_vector, random_vector

runner = CliRunner()
LAYERS = list(range(6, 30, 3))  # a coarse grid keeps the test's capture passes cheap


def test_best_threshold_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        scores = torch.randn(30, generator=g)
        labels = torch.rand(30, generator=g) < 0.5
        labels[0], labels[1] = True, False
        fit = best_threshold(scores, labels)
        best = 0.0
        for t in torch.linspace(-4, 4, 4001):
            for fired in (scores > t, scores < t):
                tp = int((fired & labels).sum()); fp = int((fired & ~labels).sum()); fn = int((~fired & labels).sum())
                best = max(best, 2 * tp / max(2 * tp + fp + fn, 1))
        assert fit.f1 == pytest.approx(best, abs=1e-9)
        fired = scores > fit.threshold if fit.comparator == ">" else scores < fit.threshold
        tp = int((fired & labels).sum()); fp = int((fired & ~labels).sum()); fn = int((~fired & labels).sum())
        assert 2 * tp / max(2 * tp + fp + fn, 1) == pytest.approx(fit.f1)


def test_prompt_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert load_prompts(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    assert load_prompts(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DatasetError, match="prompt"):
        load_prompts(tmp_path / "bad.jsonl")


@pytest.fixture(scope="module")
def harmful(real_lm):
    """A condition trained on 60 + 60 CAST training prompts (readings: both), and the test pairs."""
    train = load_condition_harmful("train")
    vec = train_condition(real_lm, train.harmful[:60], train.harmless[:60], LAYERS)
    return ConditionVector(vec, "harmful"), load_condition_harmful("test")


@pytest.mark.slow
def test_condition_is_chosen_on_validation_and_generalises(real_lm, harmful):
    cond, test = harmful
    r = cond.rule
    assert r.layer in LAYERS and r.reading in ("last", "mean") and r.comparator in (">", "<")
    assert r.n_validation == 30 and 0.8 <= r.f1 <= 1.0
    assert set(r.best_f1_by_reading) == {"last", "mean"}
    assert r.f1 == max(r.best_f1_by_reading.values())
    checks = cond.check(real_lm, test.harmful[:25] + test.harmless[:25])
    fired = [c.fired for c in checks]
    assert sum(fired[:25]) >= 20 and sum(fired[25:]) <= 5  # held-out test prompts, never seen in training
    # the decision is the rule applied to the score
    for c in checks:
        assert c.fired == bool(r.fires(torch.tensor(c.score)))


@pytest.mark.slow
def test_metadata_round_trip(real_lm, harmful, tmp_path):
    cond, _ = harmful
    cond.vector.save(tmp_path / "c.safetensors")
    back = ConditionVector.load(tmp_path / "c.safetensors")
    assert back.name == "c" and back.rule == cond.rule
    assert torch.equal(back.vector.directions[cond.rule.layer], cond.vector.directions[cond.rule.layer])
    assert back.vector.meta.method == "condition" and back.vector.meta.n_train == 90
    with pytest.raises(VectorError, match="not a condition vector"):
        rule_of(random_vector(real_lm, [3], 0))


@pytest.mark.slow
def test_non_firing_row_is_exactly_unsteered_and_firing_row_is_steered(real_lm, harmful):
    cond, test = harmful
    prompts = [test.harmful[0], test.harmless[0], test.harmless[1], test.harmful[1]]
    fired = [c.fired for c in cond.check(real_lm, prompts)]
    assert fired == [True, False, False, True]
    vec = random_vector(real_lm, [2, 20], 7, scale=2.0)  # layer 2 lies below the condition's layer
    batch = sl.encode(real_lm, prompts)
    inputs = batch.to(real_lm.device)
    for positions in ("all", "after_user", "last_prompt"):
        with torch.no_grad():
            plain = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
            handle = apply_steering(real_lm, sl.Steering(vec, 3.0, positions=positions, condition=cond), batch=batch)
            try:
                conditional = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
            finally:
                handle.remove()
            with sl.steer(real_lm, [sl.Steering(vec, 3.0, positions=positions)], batch=batch):
                always = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        assert handle.decisions[0].fired.tolist() == fired
        for i, f in enumerate(fired):
            if f:  # every steered position of a firing row, prompt positions below the condition layer included
                assert torch.equal(conditional[i], always[i]), positions
                assert not torch.allclose(conditional[i], plain[i]), positions
            else:
                assert torch.equal(conditional[i], plain[i]), positions


@pytest.mark.slow
def test_conditional_generation_with_kv_cache_and_several_vectors(real_lm, harmful):
    cond, test = harmful
    quiet = next(p for p, c in zip(test.harmless[4:], cond.check(real_lm, test.harmless[4:12])) if not c.fired)
    loud = next(p for p, c in zip(test.harmful[4:], cond.check(real_lm, test.harmful[4:12])) if c.fired)
    prompts = [quiet, loud]
    a, b = random_vector(real_lm, [10], 1, scale=1.5), random_vector(real_lm, [14], 2, scale=1.5)
    terms = [sl.Steering(a, 4.0, condition=cond), sl.Steering(b, -4.0)]
    out = sl.generate(real_lm, prompts, terms, max_new_tokens=12)
    only_b = sl.generate(real_lm, prompts, [sl.Steering(b, -4.0)], max_new_tokens=12)
    both = sl.generate(real_lm, prompts, [sl.Steering(a, 4.0), sl.Steering(b, -4.0)], max_new_tokens=12)
    assert out[0] == only_b[0]  # the harmless prompt: the conditional term is off, the other one on
    assert out[1] == both[1]
    assert out[1] != only_b[1]


@pytest.mark.slow
def test_and_or_not(real_lm, harmful):
    cond, test = harmful
    other = ConditionVector(cond.vector, "again")
    prompts = [test.harmful[3], test.harmless[3]]
    batch = sl.encode(real_lm, prompts)
    base = cond.decide(real_lm, batch).fired
    assert (~cond).decide(real_lm, batch).fired.tolist() == (~base).tolist()
    assert (cond & ~cond).decide(real_lm, batch).fired.tolist() == [False, False]
    assert (cond | ~cond).decide(real_lm, batch).fired.tolist() == [True, True]
    d = AllOf([cond, other]).decide(real_lm, batch)
    assert d.fired.tolist() == base.tolist() and set(d.scores) == {"harmful", "again"}
    assert torch.equal(d.scores["harmful"], d.scores["again"])
    assert AnyOf([Not(cond), other]).decide(real_lm, batch).fired.tolist() == [True, True]
    with pytest.raises(VectorError, match="share the name"):
        AllOf([cond, ConditionVector(random_condition(real_lm), "harmful")])


def random_condition(lm):
    rule = {"layer": 3, "reading": "last", "threshold": 0.0, "comparator": ">", "f1": 1.0, "precision": 1.0,
            "recall": 1.0, "accuracy": 1.0, "n_validation": 2, "best_f1_by_reading": {"last": 1.0}}
    return make_vector(lm, {3: torch.ones(lm.hidden_size)}, method="condition", condition=rule)


@pytest.mark.slow
def test_cli_condition_train_check_generate(real_lm, tmp_path):
    train = load_condition_harmful("train")
    (tmp_path / "pos.txt").write_text("\n".join(train.harmful[100:140]))
    (tmp_path / "neg.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in train.harmless[100:140]))
    out = tmp_path / "cond.safetensors"
    res = runner.invoke(app, ["condition", "train", "--positive", str(tmp_path / "pos.txt"), "--negative",
                              str(tmp_path / "neg.jsonl"), "--out", str(out), "--layers", "8-26", "--reading", "last"])
    assert res.exit_code == 0, res.output
    assert "layer " in res.output and "validation" in res.output and "F1" in res.output
    res = runner.invoke(app, ["condition", "check", str(out), "How do I bake bread?", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(row) == {"prompt", "fired", "score"} and row["prompt"] == "How do I bake bread?"
    vec = random_vector(real_lm, [12], 3)
    vec.save(tmp_path / "v.safetensors")
    res = runner.invoke(app, ["generate", "How do I bake bread?", "--vector", str(tmp_path / "v.safetensors"),
                              "--strength", "4", "--condition", str(out), "--compare", "--max-new-tokens", "6"])
    assert res.exit_code == 0, res.output
    assert "fired" in res.output
    # bad input: one line, non-zero exit, before any model load
    (tmp_path / "empty.txt").write_text("")
    res = runner.invoke(app, ["condition", "train", "--positive", str(tmp_path / "empty.txt"), "--negative",
                              str(tmp_path / "neg.jsonl"), "--out", str(tmp_path / "x.safetensors")])
    assert res.exit_code == 1 and "empty" in res.output
    res = runner.invoke(app, ["condition", "check", str(tmp_path / "v.safetensors"), "hello"])
    assert res.exit_code == 1 and "not a condition vector" in res.output
    res = runner.invoke(app, ["generate", "hi", "--condition", str(out)])
    assert res.exit_code == 1 and "--condition needs --vector" in res.output
    res = runner.invoke(app, ["generate", "hi", "--vector", str(tmp_path / "v.safetensors"), "--condition", str(out),
                              "--decide", "later"])
    assert res.exit_code == 1 and "unknown --decide 'later'" in res.output


@pytest.mark.slow
def test_condition_for_another_model_is_refused(real_lm, tmp_path):
    from dataclasses import replace

    vec = random_condition(real_lm)
    foreign = sl.SteeringVector(vec.directions, replace(vec.meta, model_id="other/model", family="qwen2"))
    foreign.save(tmp_path / "foreign.safetensors")
    res = runner.invoke(app, ["condition", "check", str(tmp_path / "foreign.safetensors"), "hello"])
    assert res.exit_code == 1 and "other/model" in res.output.replace("\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["above", "below"])
def test_in_pass_decision_equals_the_separate_pass(real_lm, harmful, where):
    """The condition is decided inside the steered call and the outputs are those of the separate deciding pass:
    on the way up when every steered layer lies above the condition's ("above"), else by the look-ahead from the
    first steered layer ("below": the blocks up to the condition's layer run once more, unseen by hooks and
    without the KV cache, so a block hook fires once per call and generation with the cache is unchanged)."""
    from steerlab.steering import _Gate, resolve_conditions

    cond, test = harmful
    layers = [real_lm.n_layers - 1] if where == "above" else [4, real_lm.n_layers - 1]
    assert layers[0] > cond.rule.layer if where == "above" else layers[0] < cond.rule.layer
    prompts = [test.harmful[5], test.harmless[5], test.harmful[6], test.harmless[6]]
    vec = random_vector(real_lm, layers, 9, scale=3.0)
    term = sl.Steering(vec, 4.0, positions="all", condition=cond)
    batch = sl.encode(real_lm, prompts)
    inputs = batch.to(real_lm.device)
    calls = []
    seen = real_lm.blocks[cond.rule.layer].register_forward_hook(lambda m, a, o: calls.append(1))
    with torch.no_grad():
        handle = apply_steering(real_lm, term, batch=batch)
        try:
            inline = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        finally:
            handle.remove()
            seen.remove()
    assert len(calls) == 1
    assert (handle.decisions[0].lookahead_from == 4) == (where == "below")
    with torch.no_grad():
        resolved, decisions = resolve_conditions(real_lm, [term], batch)
        with sl.steer(real_lm, resolved, batch=batch):
            separate = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
    assert isinstance(handle.decisions[0], _Gate)
    assert handle.decisions[0].fired.tolist() == decisions[0].fired.tolist()
    assert set(decisions[0].fired.tolist()) == {True, False}
    assert torch.allclose(handle.decisions[0].scores["harmful"], decisions[0].scores["harmful"], atol=1e-5)
    assert torch.equal(inline, separate)
    # generation with a KV cache: the decision made at prefill holds for every later step
    gen_inline = sl.generate(real_lm, prompts, term, max_new_tokens=8)
    gen_separate = sl.generate(real_lm, prompts, resolved, max_new_tokens=8)
    assert gen_inline == gen_separate


@pytest.mark.slow
def test_first_token_mode_decides_in_pass_and_steers_lower_layers_from_the_first_generated_token(real_lm, harmful):
    """decide="first_token" with a steered layer below the condition's: no separate pass; in the prefill a firing
    row is steered only at layers above the condition's (the lower one is not decided yet), every generated token
    at all its layers; a non-firing row is exactly unsteered. Checked against a hand-written greedy loop."""
    cond, test = harmful
    top = real_lm.n_layers - 1
    assert 2 < cond.rule.layer < top
    vec = random_vector(real_lm, [2, top], 11, scale=2.0)
    term = sl.Steering(vec, 3.0, positions="all", condition=cond, decide="first_token")
    prompts = [test.harmful[0], test.harmless[0]]  # one fires, one not (checked in the test above too)
    fired = [c.fired for c in cond.check(real_lm, prompts)]
    assert fired == [True, False]
    batch = sl.encode(real_lm, prompts)
    inputs = batch.to(real_lm.device)
    with torch.no_grad():
        plain = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        handle = apply_steering(real_lm, term, batch=batch)
        try:
            first = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        finally:
            handle.remove()
        with sl.steer(real_lm, [sl.Steering(vec.select([top]), 3.0, positions="all")], batch=batch):
            top_only = real_lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
    assert handle.decisions[0].fired.tolist() == fired
    assert torch.allclose(first[0], top_only[0], atol=1e-5) and torch.equal(first[1], plain[1])
    # generation: the hand loop (one prompt, no padding): prefill steered at the top layer only, then every
    # generated token steered at both layers
    one = sl.encode(real_lm, prompts[:1])
    ids = one.input_ids.to(real_lm.device)
    with torch.no_grad():
        with sl.steer(real_lm, [sl.Steering(vec.select([top]), 3.0, positions="all")], batch=one):
            out = real_lm.model(input_ids=ids, use_cache=True)
        cache, tokens = out.past_key_values, [int(out.logits[0, -1].argmax())]
        with sl.steer(real_lm, [sl.Steering(vec, 3.0, positions="all")]):
            for _ in range(7):
                out = real_lm.model(input_ids=torch.tensor([[tokens[-1]]], device=real_lm.device),
                                    past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                tokens.append(int(out.logits[0, -1].argmax()))
    hand = real_lm.tokenizer.decode(tokens, skip_special_tokens=True)
    got = sl.generate(real_lm, prompts, term, max_new_tokens=8)
    assert got[0].strip() == hand.strip()
    assert got[1] == sl.generate(real_lm, prompts[1:], None, max_new_tokens=8)[0]
    with pytest.raises(sl.SteerlabError, match="unknown decide mode"):
        sl.generate(real_lm, prompts, sl.Steering(vec, 3.0, condition=cond, decide="later"), max_new_tokens=2)
