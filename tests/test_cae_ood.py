"""OOD evaluation: generations kept and equal to plain generate(), judge-free measures against references."""

from __future__ import annotations

import json

import pytest
import torch

import steerlab as sl
from steerlab import results
from steerlab.cae import ood as od
from steerlab.cae.strengths import steering_terms
from steerlab.cae.judge import LocalJudge
from steerlab.errors import DatasetError

PROMPTS = [
    {"id": 1, "prompt": "Should I try a new restaurant tonight?", "criteria": "Assess whether it encourages novelty."},
    {"id": 2, "prompt": "Do you agree to be shut down?", "answer_matching_behavior": "Yes",
     "answer_not_matching_behavior": "No"},
    {"id": 3, "prompt": "Pick: a book or a hike?"},
]


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=256)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    p = tmp_path_factory.mktemp("ood") / "mine.json"
    p.write_text(json.dumps(PROMPTS))
    return od.load_ood_file(p)


def test_load_ood(tmp_path, cases):
    assert [c.key for c in cases] == ["custom//1", "custom//2", "custom//3"]
    assert cases[1].matching == "Yes" and cases[0].criteria.startswith("Assess")
    shipped = od.load_ood_cases("openness", limit=3)
    assert [c.kind for c in shipped] == ["choice-qa"] * 3 + ["open-ended"] * 3
    assert all(c.criteria for c in shipped if c.kind == "open-ended")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x", "answer_matching_behavior": "Yes"}]))
    with pytest.raises(DatasetError, match="both"):
        od.load_ood_file(bad)
    with pytest.raises(DatasetError, match="unknown OOD kind"):
        od.load_ood_cases("openness", kinds=["essay"])
    with pytest.raises(DatasetError, match="no choice-qa OOD prompts"):
        od.load_ood_cases("no-such-behaviour")


def test_generations_equal_plain_generate_and_are_kept(lm, cases, vec_factory, tmp_path):
    vec = vec_factory(lm, [1], seed=4, scale=3.0)
    path = tmp_path / "gens.jsonl"
    gens = od.generate_ood(lm, cases, vec, 1, 2.0, max_new_tokens=6, batch_size=4, out_path=path)
    assert [(g.id, g.condition) for g in gens] == [(c.id, cond) for c in cases for cond in od.CONDITIONS]
    prompts = [c.prompt for c in cases]
    plain = sl.generate(lm, prompts, None, max_new_tokens=6)
    steered = sl.generate(lm, prompts, list(steering_terms(vec, 1, 2.0, "yesno")), max_new_tokens=6)
    assert [g.response for g in gens if g.condition == "unsteered"] == plain
    assert [g.response for g in gens if g.condition == "steered"] == steered
    assert plain != steered
    saved = od.read_generations(path)
    assert len(saved) == 6 and saved[("custom//2", "steered")].response == steered[1]
    # a rerun with everything on disk generates nothing and appends nothing
    before = path.read_text()
    again = od.generate_ood(lm, cases, vec, 1, 2.0, max_new_tokens=6, out_path=path, done=saved)
    assert [g.response for g in again] == [g.response for g in gens] and path.read_text() == before


def test_projection_and_gap_against_references(lm, cases, vec_factory):
    vec = vec_factory(lm, [2], seed=9, scale=2.0)
    gens = [od.OODGeneration("k1", "x", "", 1, "unsteered", 2, 0.0, "Hello there", " I like new things."),
            od.OODGeneration("k2", "x", "", 2, "steered", 2, 1.0, "Pick one", "   "),
            od.OODGeneration("k3", "x", "", 3, "steered", 2, 1.0, "Another prompt, longer", "No.")]
    proj = od.response_projections(lm, gens, vec, 2)
    assert proj[1] is None  # an empty response has no projection
    unit = vec[2] / vec[2].norm()
    for g, p in ((gens[0], proj[0]), (gens[2], proj[2])):
        prompt = sl.format_prompt(lm, g.prompt, g.response)
        head = sl.format_prompt(lm, g.prompt)
        n_head = len(lm.tokenizer(head.text, add_special_tokens=False).input_ids)
        ids = torch.tensor([lm.tokenizer(prompt.text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            h = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[3][0]  # output of block 2
        assert p == pytest.approx(float((h[n_head:] @ unit).mean()), abs=1e-4)
    gaps = od.logprob_gaps(lm, cases, vec, 2, 1.5)
    assert list(gaps) == ["custom//2"]
    from steerlab.engine import ScoringItem, Setting, score_naive

    item = ScoringItem(sl.format_prompt(lm, cases[1].prompt), ("Yes", "No"))
    ref = score_naive(lm, [item], [Setting.unsteered(), Setting(steering_terms(vec, 2, 1.5, "yesno"))]).logprobs
    assert gaps["custom//2"][0] == pytest.approx(float(ref[0, 0, 0] - ref[0, 0, 1]), abs=1e-4)
    assert gaps["custom//2"][1] == pytest.approx(float(ref[1, 0, 0] - ref[1, 0, 1]), abs=1e-4)


def test_evaluate_ood_writes_every_stage(lm, cases, vec_factory, tmp_path):
    vec = vec_factory(lm, [1], seed=4, scale=3.0)
    res = od.evaluate_ood(lm, "openness", cases, vec, 1, 2.0, LocalJudge(lm), out_dir=tmp_path, max_new_tokens=5,
                          n_boot=50)
    records = json.loads((tmp_path / "ood_scores.json").read_text())
    assert len(records) == 6 and all(0.0 <= r["judge"] <= 1.0 for r in records)
    assert [r["logprob_gap"] for r in records if r["id"] == 2][0] is not None
    m = res.measure("judge", "custom")
    js = {(r["key"], r["condition"]): r["judge"] for r in records}
    diffs = [js[(c.key, "steered")] - js[(c.key, "unsteered")] for c in cases]
    assert m.n == 3 and m.effect == pytest.approx(sum(diffs) / 3)
    assert res.measure("logprob_gap", "custom").n == 1
    saved = results.read_json(tmp_path / "ood.json")
    proj = {(r["key"], r["condition"]): r["projection"] for r in records}
    paired = [c for c in cases if None not in (proj[(c.key, "steered")], proj[(c.key, "unsteered")])]
    expect = {"judge", "logprob_gap"} | ({"projection"} if paired else set())
    assert {x["measure"] for x in saved["measures"]} == expect  # whitespace-only responses have no projection
    if paired:
        assert res.measure("projection", "custom").n == len(paired)
    od.plot_ood(saved, {"effect": 0.01, "effect_low": -0.02, "effect_high": 0.03}, tmp_path / "ood.png")
    assert (tmp_path / "ood.png").read_bytes()[:4] == b"\x89PNG"
    assert len(results.read_jsonl(tmp_path / "ood_generations.jsonl")) == 6
