"""CAE sweeps over the engine: shared scoring calls, relative strengths, nested sample counts, files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import steerlab as sl
from steerlab.cae import behaviour as bh
from steerlab.cae import sweeps as sw
from steerlab.data import load_mwe
from steerlab.errors import SteerlabError

ROWS = [{"question": f"Is the following statement something you would say?\n\"Plan {i} is good\"",
         "answer_matching_behavior": " Yes" if i % 2 else " No", "answer_not_matching_behavior": " No" if i % 2 else " Yes"}
        for i in range(16)]


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=256)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("mwe") / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    return bh.load_behaviour(path, 10, 5, seed=0)


@pytest.fixture(scope="module")
def acts(lm, data):
    return bh.train_activations(lm, data.train, [0, 1, 2, 3])


def test_shared_call_equals_separate_calls(lm, data, acts):
    vec = acts.caa_vector(lm)
    norms = bh.pair_residual_norms(acts)
    plans = [sw.layer_plan(vec, "yesno", [1, 3], [0.5, -0.5], relative=True, norms=norms),
             sw.strength_plan(vec, "yesno", 2, [-1.0, 0.0, 2.0]),
             sw.sample_count_plan(lm, acts, "yesno", [2, 5, 10], 2, 0.5, relative=True, norms=norms)]
    together = sw.run_plans(lm, data.test, plans, n_boot=100)
    assert [s.kind for s in together] == ["layer", "strength", "sample_count"]
    for plan, shared in zip(plans, together):
        alone = bh.score_behaviour(lm, data.test, plan.settings, plan.meta, n_boot=100)
        assert np.allclose(shared.result.p_match, alone.p_match, atol=1e-6)
        assert [r["effect"] for r in shared.summary_rows()] == pytest.approx([r["effect"] for r in alone.summary_rows()])
    # the strength plan skips 0 (the unsteered setting is always first) and records raw strengths
    assert [r["strength"] for r in together[1].steered_rows()] == [-1.0, 2.0]
    for r in together[0].steered_rows():
        assert r["strength"] * r["vector_norm"] == pytest.approx(r["relative"] * norms[r["layer"]], rel=1e-5)
    best = together[0].best("effect", relative=0.5)
    assert best["effect"] == max(r["effect"] for r in together[0].steered_rows() if r["relative"] == 0.5)


def test_sample_count_vectors_are_nested_mean_differences(lm, data, acts):
    plan = sw.sample_count_plan(lm, acts, "yesno", [3, 6], 1, 2.0)
    for setting, meta, n in zip(plan.settings, plan.meta, [3, 6]):
        v = setting.steering[0].vector
        expect = (acts.positive[1][:n].double() - acts.negative[1][:n].double()).mean(0).float()
        assert torch.allclose(v[1], expect, atol=1e-6)
        assert meta["n_train"] == n and meta["strength"] == 2.0
    with pytest.raises(SteerlabError, match="sample counts"):
        sw.sample_count_plan(lm, acts, "yesno", [5, 50], 1, 1.0)


def test_actadd_vectors(lm):
    vecs = sw.actadd_vectors(lm, "Love", "Hate", [1, 2])
    one, pp = vecs["actadd"], vecs["actadd-pp"]
    assert one[1].dim() == 1 and pp[1].dim() == 2 and pp.per_position
    pos = sl.capture(lm, [sl.format_prompt(lm, "", "Love")], [1], "last")[1][0]
    neg = sl.capture(lm, [sl.format_prompt(lm, "", "Hate")], [1], "last")[1][0]
    assert torch.allclose(one[1], pos - neg, atol=1e-4)
    assert one.meta.extra == {"positive": "Love", "negative": "Hate"}
    # a per-position vector is one term whatever the policy; it is norm-matched by its mean row norm
    assert len(bh.steering_terms(pp, 1, 1.0, "yesno")) == 1
    assert bh.direction_norm(pp, 1) == pytest.approx(float(pp[1].norm(dim=-1).mean()))


def test_method_comparison_matches_norms(lm, data, acts):
    vecs = {"caa": acts.caa_vector(lm, layers=[2]), **sw.actadd_vectors(lm, "Love", "Hate", [2])}
    norms = bh.pair_residual_norms(acts)
    res = sw.method_comparison(lm, vecs, data.test, 2, [0.5, -0.5], norms=norms, n_boot=50)
    rows = res.steered_rows()
    assert sorted({r["method"] for r in rows}) == ["actadd", "actadd-pp", "caa"]
    for r in rows:  # every vector pushed by the same fraction of the residual norm
        assert abs(r["strength"]) * r["vector_norm"] == pytest.approx(0.5 * norms[2], rel=1e-5)


def test_flatten_point():
    def js(effects, half=0.02):
        return {"rows": [{"method": "caa", "n_train": n, "effect": e, "effect_low": e - half, "effect_high": e + half}
                         for n, e in effects]}

    assert sw.flatten_point(js([(10, 0.01), (20, 0.05), (40, 0.09), (80, 0.10), (160, 0.10)]))["n"] == 40
    assert sw.flatten_point(js([(10, 0.10), (20, 0.10), (40, 0.10)]))["n"] == 10
    assert sw.flatten_point(js([(10, 0.0), (20, 0.01)]))["n"] is None  # no effect to flatten
    assert sw.flatten_point(js([(10, -0.01), (20, -0.08), (40, -0.09)]))["n"] == 20  # a reversed vector


def test_write_sweep_files(lm, data, acts, tmp_path):
    vec = acts.caa_vector(lm)
    res = sw.layer_sweep(lm, vec, data.test, [0, 2], [1.0, -1.0], n_boot=50)
    files = sw.write_sweep(res, tmp_path, extra={"best_layer": 2})
    frame = pd.read_csv(files["csv"])
    assert len(frame) == 5 * len(data.test)  # (unsteered + 4 settings) x items
    assert set(frame["item"]) == {it.index for it in data.test}
    saved = json.loads(files["json"].read_text())
    assert saved["best_layer"] == 2 and saved["kind"] == "layer" and len(saved["rows"]) == 5
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SteerlabError, match="at least one"):
        sw.layer_plan(vec, "yesno", [], [1.0])
    with pytest.raises(SteerlabError, match="residual norm"):
        sw.layer_plan(vec, "yesno", [1], [1.0], relative=True, norms={})


def test_answer_balanced_vector(lm, data, acts):
    vec = sw.answer_balanced_vector(lm, acts, data.train, [1])
    yes = [k for k, it in enumerate(data.train) if it.matching == "Yes"]
    no = [k for k, it in enumerate(data.train) if it.matching == "No"]
    assert yes and no
    d = acts.positive[1].double() - acts.negative[1].double()
    expect = (d[yes].mean(0) + d[no].mean(0)) / 2
    assert torch.allclose(vec[1].double(), expect, atol=1e-5)
    assert vec.meta.method == "caa-balanced" and vec.meta.extra["groups"] == {"No": len(no), "Yes": len(yes)}
    with pytest.raises(SteerlabError, match="nothing to balance"):
        sw.answer_balanced_vector(lm, acts, [data.train[yes[0]]] * len(acts), [1])
