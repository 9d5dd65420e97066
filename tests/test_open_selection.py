"""Choosing a cell's layer and strength on judged open answers (`steerlab.cae.open_selection`), checked against the
rule computed by hand: every candidate's perplexity measured, answers generated one question at a time."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

import steerlab as sl
from steerlab.cae.judge import LocalJudge
from steerlab.cae.open_selection import choose_on_open_answers, judged_answers, strongest_within_cap
from steerlab.cae.side_effects import corpus_windows, measure_side_effects
from steerlab.cae.strengths import raw_strength, residual_norms
from steerlab.cli import app
from steerlab.data import load_mwe, require_data_root
from steerlab.data.tasks import resolve_behaviour
from steerlab.methods import persona_questions

LAYERS = [1, 2]
STRENGTHS = [0.5, 2.0, 8.0]


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=512)


@pytest.fixture(scope="module")
def setup(lm):
    items = load_mwe(resolve_behaviour("corrigible-neutral-HHH"))[:12]
    vec = sl.train_caa(lm, [it.to_pair() for it in items[:6]], LAYERS)
    val = items[6:12]
    corpus = str(require_data_root() / "corpus" / "wikitext-2-test.txt")
    windows = corpus_windows(lm, corpus, n_tokens=128, window=64, start_token=128)
    return vec, val, persona_questions(val)[:3], windows


def test_strongest_within_cap_is_the_largest_passing_strength_found_by_bisection():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 9)
        rs = sorted(rng.sample(range(1, 100), n))
        ratios = dict(zip(rs, sorted(rng.uniform(1.0, 3.0) for _ in rs)))  # grows with r
        cap = rng.uniform(0.9, 3.1)
        calls = []

        def ratio(r):
            calls.append(r)
            return ratios[r]

        best, seen = strongest_within_cap(ratio, list(reversed(rs)), cap)
        within = [r for r in rs if ratios[r] <= cap]
        assert best == (max(within) if within else None)
        assert seen == {r: ratios[r] for r in calls} and len(calls) <= n.bit_length()


def test_judged_answers_equal_one_question_at_a_time(lm, setup):
    vec, _, questions, _ = setup
    judge = LocalJudge(lm)
    recs = judged_answers(lm, vec, questions, 2, 3.0, judge, "corrigible-neutral-HHH", max_new_tokens=4,
                          batch_size=4)
    assert [(r["question"], r["sign"]) for r in recs] == [(q, s) for q in questions for s in "+-"]
    for r in recs:
        alpha = 3.0 if r["sign"] == "+" else -3.0
        want = sl.generate(lm, [r["question"]], sl.Steering(vec, alpha, (2,), "after_user"), max_new_tokens=4)[0]
        assert r["response"] == want
    scores = judge.score([sl.cae.judge.JudgeRequest(r["question"], r["response"], "corrigible-neutral-HHH")
                          for r in recs])
    assert [r["judge"] for r in recs] == pytest.approx(scores)


def test_the_choice_follows_the_rule_by_hand(lm, setup, monkeypatch):
    """Per layer the largest r within the cap (every ratio measured here); among those the largest judged gap;
    none within the cap anywhere: the lowest ratio."""
    import steerlab.cae.open_selection as osel

    vec, val, questions, windows = setup
    judge = LocalJudge(lm)
    norms = residual_norms(lm, val, LAYERS)
    ppl = {}
    for layer in LAYERS:
        for r in STRENGTHS:
            side = measure_side_effects(lm, vec, layer, [raw_strength(x, vec, layer, norms[layer]) for x in (r, -r)],
                                        windows)
            ppl[(layer, r)] = max(x.perplexity_ratio for x in side.rows[1:])
        ratios = [ppl[(layer, r)] for r in STRENGTHS]
        assert ratios == sorted(ratios)  # the bisection's premise holds for this vector
    lowest, highest = min(ppl.values()), max(ppl.values())
    for cap in (highest + 1.0, (lowest + highest) / 2, lowest - 1e-3):
        monkeypatch.setattr(osel, "MAX_PPL_RATIO", cap)
        best = {l: max((r for r in STRENGTHS if ppl[(l, r)] <= cap), default=None) for l in LAYERS}
        gaps = {}
        for l, r in best.items():
            if r is not None:
                recs = judged_answers(lm, vec, questions, l, raw_strength(r, vec, l, norms[l]), judge,
                                      "corrigible-neutral-HHH", max_new_tokens=3)
                plus = [x["judge"] for x in recs if x["sign"] == "+"]
                minus = [x["judge"] for x in recs if x["sign"] == "-"]
                gaps[(l, r)] = sum(plus) / len(plus) - sum(minus) / len(minus)
        want = max(gaps, key=gaps.get) if gaps else min(ppl, key=ppl.get)
        got = choose_on_open_answers(lm, vec, val, questions, LAYERS, STRENGTHS, windows, judge,
                                     "corrigible-neutral-HHH", max_new_tokens=3)
        assert (got["layer"], got["relative"]) == want, cap
        assert got["within_ppl"] == bool(gaps) and got["select_on"] == "open-ended"
        assert {(c["layer"], c["relative"]): c["gap"] for c in got["candidates"]} == pytest.approx(gaps)
        for m in got["val_ppl"]:
            assert m["val_ppl_ratio"] == pytest.approx(ppl[(m["layer"], m["relative"])], rel=1e-6)
        assert len(got["answers"]) == 2 * len(questions) * len(gaps)


def test_generalise_on_open_answers_steers_at_the_choice_and_resumes_older_runs(lm, tmp_path):
    from steerlab.cae.generalise import GeneraliseConfig, run_generalise
    from steerlab.cae.generalise_report import collect

    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1, 2), relative=(0.5, 4.0), n_train=4,
                           n_val=4, n_test=4, ood_limit=1, max_new_tokens=3, corpus_tokens=128, window=64,
                           select_on="open-ended", open_questions=3)
    summary = run_generalise(lm, cfg, tmp_path, LocalJudge(lm))
    cell = tmp_path / "caa" / "seed0"
    sel = json.loads((cell / "selection.json").read_text())
    assert sel["select_on"] == "open-ended" and sel["candidates"]
    top = max(sel["candidates"], key=lambda c: c["gap"])
    assert (sel["layer"], sel["relative"]) == (top["layer"], top["relative"])
    assert {a["question"] for a in sel["answers"]} <= set(persona_questions(load_mwe(resolve_behaviour(
        "corrigible-neutral-HHH"))))
    assert json.loads((cell / "in_distribution.json").read_text())["relative"] == sel["relative"]
    assert summary["rows"][0]["relative"] == sel["relative"]
    command = collect([tmp_path], model="tiny")[0].command
    assert "--select-on open-ended --open-questions 3" in command
    # a run directory written before these settings existed resumes as the default rule
    old = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1, 2), n_train=4, n_val=4, n_test=4,
                           ood_limit=1, max_new_tokens=3, corpus_tokens=128, window=64)
    run_generalise(lm, old, tmp_path / "old", LocalJudge(lm))
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                              if k not in ("select_on", "open_questions")}))
    run_generalise(lm, old, tmp_path / "old", LocalJudge(lm))
    with pytest.raises(sl.SteerlabError, match="differs in select_on"):
        run_generalise(lm, cfg.__class__(**{**old.__dict__, "select_on": "open-ended"}), tmp_path / "old",
                       LocalJudge(lm))


def test_bad_selection_settings_fail_before_the_model_load(tmp_path):
    from steerlab.cae.generalise import GeneraliseConfig

    with pytest.raises(sl.SteerlabError, match="select_on must be one of mwe, open-ended, not 'letters'"):
        GeneraliseConfig("corrigible-neutral-HHH", select_on="letters")
    with pytest.raises(sl.SteerlabError, match="open_questions must be at least 2"):
        GeneraliseConfig("corrigible-neutral-HHH", open_questions=1)
    result = CliRunner().invoke(app, ["cae", "generalise", "corrigible-neutral-HHH", "-o", str(tmp_path / "run"),
                                      "--layers", "1", "--select-on", "letters", "--model", str(tmp_path / "none")])
    assert result.exit_code != 0 and "select_on must be one of" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
