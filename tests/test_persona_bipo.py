"""BiPO on the persona recipe's answers (`steerlab.methods.persona_bipo`): the pairs it makes from judged answers,
its training against BiPO run by hand on those pairs, its `cae generalise` cell (resumed from saved answers and
layers) and its command line."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from steerlab.cae.judge import LocalJudge
from steerlab.data import load_mwe
from steerlab.data.records import ContrastPair
from steerlab.data.tasks import resolve_behaviour
from steerlab.errors import DatasetError
from steerlab.generation import generate
from steerlab.methods.bipo import BiPOConfig, train_bipo_layers
from steerlab.methods.persona import PersonaConfig, PersonaSample, generate_samples, load_trait, persona_questions
from steerlab.methods.persona_bipo import check_persona_pairs, persona_pairs, train_persona_bipo_detailed
from steerlab.vector import SteeringVector


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=512)


@pytest.fixture(scope="module")
def questions():
    return persona_questions(load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:3])


def test_pairs_are_each_kept_positive_answer_with_each_kept_negative_answer_to_its_question():
    S = PersonaSample
    samples = [S("q1", "positive", "p1", 0.9, True), S("q1", "positive", "p2", 0.8, True),
               S("q1", "negative", "n1", 0.1, True), S("q1", "negative", "n2", 0.6, False),
               S("q2", "positive", "p3", 0.2, False), S("q2", "negative", "n3", 0.1, True),
               S("q3", "negative", "n4", 0.0, True), S("q3", "positive", "p4", 0.9, True)]
    assert persona_pairs(samples) == [ContrastPair("q1", "p1", "n1"), ContrastPair("q1", "p2", "n1"),
                                      ContrastPair("q3", "p4", "n4")]
    trait = load_trait("corrigible-neutral-HHH")
    check_persona_pairs(trait, samples, persona_pairs(samples))
    few = samples[4:]
    with pytest.raises(DatasetError, match="kept 1 positive and 2 negative answers, which pair up .* into 1 BiPO pairs"):
        check_persona_pairs(trait, few, persona_pairs(few))


def test_persona_bipo_is_bipo_on_the_judged_answers(lm, questions):
    """The vector is BiPO (run by hand here) on the pairs of the recipe's answers, layer by layer; the answers are
    the persona recipe's; the loss falls; a rerun with the seed gives the same vector; a judge's keep decisions
    decide the pairs."""
    trait = load_trait("corrigible-neutral-HHH")
    pc = PersonaConfig(samples_per_question=2, max_new_tokens=6, seed=3, batch_size=4)
    bc = BiPOConfig(lr=0.05, batch_size=2, max_steps=4, eval_every=2, patience=5, seed=3)
    res = train_persona_bipo_detailed(lm, trait, questions, [2, 1], pc, bc)
    assert [s.response for s in res.samples] == [s.response for s in generate_samples(lm, trait, questions, pc)]
    assert res.pairs == persona_pairs(res.samples) and len(res.pairs) == len(questions) * 2 * 2
    by_hand = train_bipo_layers(lm, res.pairs, [2, 1], bc)
    for layer in (1, 2):
        torch.testing.assert_close(res.vector[layer], by_hand[layer].vector[layer])
        assert min(h["val_loss"] for h in res.runs[layer].history) < math.log(2) - 1e-4
    meta = res.vector.meta
    assert meta.method == "persona-bipo" and meta.layers == (1, 2) and meta.strength == 1.0
    assert meta.extra["n_pairs"] == len(res.pairs) and meta.extra["trait"] == trait.name
    assert set(meta.extra["per_layer"]) == {"1", "2"} and meta.extra["per_layer"]["1"]["steps"] == 4
    again = train_persona_bipo_detailed(lm, trait, questions, [2, 1], pc, bc)
    torch.testing.assert_close(again.vector[2], res.vector[2])
    # The keep decisions (a judge's, here every third answer dropped) are the filter: only kept answers pair up.
    judged = [replace(s, kept=i % 3 != 0) for i, s in enumerate(res.samples)]
    kept = persona_pairs(judged)
    assert 0 < len(kept) < len(res.pairs)
    dropped = {s.response for s in judged if not s.kept}
    assert not any(p.positive in dropped or p.negative in dropped for p in kept)
    assert train_persona_bipo_detailed(lm, trait, questions, [1], pc, bc, samples=judged).pairs == kept


def test_generalise_cell_resumes_from_its_saved_answers_and_layers(lm, tmp_path):
    """A persona-BiPO cell saves its judged answers and each layer's run; with the vector and one layer's run
    deleted, a rerun generates nothing (the answers are read back) and retrains only that layer, to the same vector."""
    from steerlab.cae.generalise import PERSONA_SAMPLES, GeneraliseConfig, run_generalise

    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("persona-bipo",), layers=(1, 2), n_train=6, n_val=4,
                           n_test=4, seeds=(0,), ood_limit=2, max_new_tokens=4, corpus_tokens=128, window=64,
                           bipo_steps=2, bipo_batch=2, persona_questions=2, persona_samples=2, persona_tokens=4,
                           persona_judge=False)
    calls: list[int] = []

    def counting(lm_, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return generate(lm_, prompts, *args, **kwargs)

    summary = run_generalise(lm, cfg, tmp_path, LocalJudge(lm), generator=counting)
    assert [(r["method"], r["seed"]) for r in summary["rows"]] == [("persona-bipo", 0)]
    cell = tmp_path / "persona-bipo" / "seed0"
    samples = json.loads((cell / PERSONA_SAMPLES).read_text())
    assert len(samples) == 2 * 2 * 2 and calls[0] == len(samples)  # the first generation: the answers
    first = SteeringVector.load(cell / "vector.safetensors")
    assert first.meta.method == "persona-bipo" and first.meta.extra["n_pairs"] == 2 * 2 * 2
    kept = (cell / "bipo_layer1.safetensors").stat().st_mtime_ns
    (cell / "vector.safetensors").unlink()
    (cell / "bipo_layer2.safetensors").unlink()
    calls.clear()
    run_generalise(lm, cfg, tmp_path, LocalJudge(lm), generator=counting)
    assert calls == []  # neither the answers nor the OOD responses are generated again
    assert (cell / "bipo_layer1.safetensors").stat().st_mtime_ns == kept
    again = SteeringVector.load(cell / "vector.safetensors")
    for layer in (1, 2):
        torch.testing.assert_close(again[layer], first[layer])


def test_bands_refuse_the_per_layer_methods():
    from steerlab.cae.generalise import GeneraliseConfig

    with pytest.raises(Exception, match="run persona-bipo in a directory without --bands"):
        GeneraliseConfig("corrigible-neutral-HHH", methods=("caa", "persona-bipo"), layers=(), bands=((1, 2),))
