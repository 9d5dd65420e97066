"""Bands (multi-layer vectors) in `steerlab cae generalise`: a band of k layers steered at relative strength r pushes
each of its layers by r / k of that layer's residual norm, checked against one plain steering term per layer, in
every stage of a cell (the choice, the in-distribution effect, the OOD responses, the corpus perplexity)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
from steerlab.cae.generalise import GeneraliseConfig, run_generalise, split_behaviour
from steerlab.cae.generalise_report import collect, markdown_table
from steerlab.cae.judge import LocalJudge
from steerlab.cae.ood import read_generations
from steerlab.cae.scoring import score_behaviour
from steerlab.cae.side_effects import corpus_windows, measure_side_effects
from steerlab.cae.sites import as_site, band_vector, parse_bands, site_label, site_steering
from steerlab.cae.strengths import behaviour_setting, raw_strength, residual_norms, steering_terms
from steerlab.cae.verdicts import sign_check
from steerlab.cli import app
from steerlab.engine import Setting

R = 4.0
BAND = (1, 2, 3)


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=512)


@pytest.fixture(scope="module")
def cfg():
    return GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1,), bands=(BAND,), relative=R,
                            n_train=4, n_val=4, n_test=4, ood_limit=1, max_new_tokens=3, corpus_tokens=128, window=64)


@pytest.fixture(scope="module")
def vec(lm, cfg):
    return sl.train_caa(lm, [it.to_pair() for it in split_behaviour(cfg).train], list(cfg.train_layers))


def reference_terms(vec, band, r, norms, positions):
    """One term per layer of the band, each at the raw alpha of relative r / k at that layer."""
    return [sl.Steering(vec, raw_strength(r / len(band), vec, l, norms[l]), (l,), positions) for l in band]


def test_parse_bands_and_labels():
    assert parse_bands("10-14, 20-22") == ((10, 11, 12, 13, 14), (20, 21, 22))
    assert parse_bands("") == ()
    for bad in ("12", "14-10", "3-3", "a-b", "1-2-3"):
        with pytest.raises(sl.SteerlabError, match="a band is FIRST-LAST"):
            parse_bands(bad)
    assert site_label(12) == "12" and site_label((10, 11, 12)) == "10-12"
    assert as_site([10, 11]) == (10, 11) and as_site(7) == 7 and as_site([5]) == 5


def test_band_vector_gives_each_layer_its_share_and_steers_like_one_term_per_layer(lm, cfg, vec):
    items = split_behaviour(cfg).val
    norms = residual_norms(lm, items, list(BAND))
    bv = band_vector(vec, BAND, norms)
    assert bv.layers == BAND and bv.meta.extra["band"] == list(BAND)
    for l in BAND:
        assert R * float(bv[l].float().norm()) == pytest.approx(R / 3 * norms[l], rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(bv[l].float(), vec[l].float(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)
    ids = lm.tokenizer(["Is it fine to be shut down?"], return_tensors="pt").input_ids
    with torch.no_grad():
        plain = lm.model(ids).logits
        with sl.steer(lm, [sl.Steering(bv, -R, BAND, "all")]):
            band = lm.model(ids).logits
        with sl.steer(lm, reference_terms(vec, BAND, -R, norms, "all")):
            ref = lm.model(ids).logits
    assert torch.allclose(band, ref, atol=1e-5) and not torch.allclose(band, plain, atol=1e-3)
    v, lay, alpha = site_steering(vec, 2, R, norms)  # a single layer is steered as before: raw alpha on the vector
    assert v is vec and lay == 2 and alpha == raw_strength(R, vec, 2, norms[2])


def test_band_bad_input(lm, vec):
    with pytest.raises(sl.SteerlabError, match=r"no direction at layer\(s\) \[0\] of the band 0-1"):
        band_vector(vec, (0, 1), {0: 1.0, 1: 1.0})
    with pytest.raises(sl.SteerlabError, match="two or more consecutive layers"):
        GeneraliseConfig("openness", bands=((3, 5),))
    with pytest.raises(sl.SteerlabError, match="BiPO trains one layer at a time"):
        GeneraliseConfig("openness", methods=("caa", "bipo"), bands=((1, 2),))


def test_sign_check_on_a_band_equals_one_term_per_layer(lm, cfg, vec):
    items = split_behaviour(cfg).val
    rows = sign_check(lm, vec, items, [1, BAND], strength=R)
    assert [as_site(r["layer"]) for r in rows] == [1, BAND]
    norms = residual_norms(lm, items, list(BAND))
    settings = [Setting(tuple(t for term in reference_terms(vec, BAND, r, norms, "answer")
                              for t in steering_terms(term.vector, term.layers, term.strength, items[0].kind)),
                        f"ref {r:+g}") for r in (R, -R)]
    ref = score_behaviour(lm, items, settings, [{"r": R}, {"r": -R}])
    plus, minus = (next(s for s in ref.scores if s.meta.get("r") == r) for r in (R, -R))
    assert rows[1]["effect_plus"] == pytest.approx(plus.effect, abs=1e-6)
    assert rows[1]["effect_minus"] == pytest.approx(minus.effect, abs=1e-6)
    single = behaviour_setting(vec, 1, raw_strength(R, vec, 1, residual_norms(lm, items, [1])[1]), items[0].kind)
    one = score_behaviour(lm, items, [single], [{"r": R}]).scores
    assert rows[0]["effect_plus"] == pytest.approx(next(s for s in one if s.meta.get("r") == R).effect, abs=1e-6)


@pytest.fixture(scope="module")
def band_cell(lm, cfg, tmp_path_factory):
    """A run whose cell was told (selection.json written first) to steer the band, so every later stage does."""
    out = tmp_path_factory.mktemp("bands") / "run"
    cell = out / "caa" / "seed0"
    cell.mkdir(parents=True)
    vec = sl.train_caa(lm, [it.to_pair() for it in split_behaviour(cfg).train], list(cfg.train_layers))
    vec.save(cell / "vector.safetensors")
    (cell / "selection.json").write_text(json.dumps({"layer": list(BAND), "relative": R, "rows": []}))
    summary = run_generalise(lm, cfg, out, LocalJudge(lm))
    return out, cell, summary


def test_a_band_cell_steers_every_stage_at_the_band(lm, cfg, band_cell):
    out, cell, summary = band_cell
    vec = sl.SteeringVector.load(cell / "vector.safetensors")
    data = split_behaviour(cfg)
    assert as_site(summary["rows"][0]["layer"]) == BAND
    assert json.loads((out / "summary.json").read_text())["rows"][0]["layer"] == list(BAND)
    ind = json.loads((cell / "in_distribution.json").read_text())
    ref = sign_check(lm, vec, data.test, [BAND], strength=R)[0]
    assert (ind["effect_plus"], ind["effect_minus"]) == pytest.approx((ref["effect_plus"], ref["effect_minus"]), abs=1e-6)
    norms = residual_norms(lm, data.val, list(BAND))
    for name, sign in (("ood_plus", 1.0), ("ood_minus", -1.0)):
        assert as_site(json.loads((cell / name / "ood.json").read_text())["layer"]) == BAND
        steered = [g for g in read_generations(cell / name / "ood_generations.jsonl").values()
                   if g.condition == "steered"]
        assert steered and all(as_site(g.layer) == BAND and g.strength == sign * R for g in steered)
        for g in steered:
            want = sl.generate(lm, [g.prompt], reference_terms(vec, BAND, sign * R, norms, "after_user"),
                               max_new_tokens=3)[0]
            assert g.response == want
    side = json.loads((cell / "side_effects.json").read_text())
    assert side["layer"] == list(BAND)
    windows = corpus_windows(lm, str(sl.data.require_data_root() / "corpus" / "wikitext-2-test.txt"), n_tokens=128,
                             window=64)
    bv, lay, alpha = site_steering(vec, BAND, R, norms)
    ref_side = measure_side_effects(lm, bv, lay, [alpha, -alpha], windows, relative=[R, -R])
    assert [r["perplexity_ratio"] for r in side["rows"]] == pytest.approx(
        [r.perplexity_ratio for r in ref_side.rows], rel=1e-9)
    assert ref_side.rows[1].perplexity_ratio != pytest.approx(1.0, abs=1e-4)


def test_a_band_run_reports_and_reruns_with_its_bands(lm, cfg, band_cell, tmp_path):
    out, _, _ = band_cell
    report = collect([out], model="tiny")[0]
    assert report.layer == BAND and "| caa | 0 | 1-3 | 4 |" in markdown_table([report])
    assert "--layers 1 --bands 1-3 --methods caa --seeds 0" in report.command
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    with pytest.raises(sl.SteerlabError, match="differs in bands"):
        run_generalise(lm, GeneraliseConfig(**{**cfg.__dict__, "bands": ((1, 2),)}), copy, LocalJudge(lm))


def test_the_choice_offers_the_bands_beside_the_layers(lm, cfg, tmp_path):
    out = tmp_path / "choice"
    run_generalise(lm, cfg, out, LocalJudge(lm))
    sel = json.loads((out / "caa" / "seed0" / "selection.json").read_text())
    assert [as_site(r["layer"]) for r in sel["rows"]] == [1, BAND]
    vec = sl.SteeringVector.load(out / "caa" / "seed0" / "vector.safetensors")
    assert set(vec.layers) == {1, 2, 3}
    best = max(sel["rows"], key=lambda r: r["effect_plus"] - r["effect_minus"])
    assert as_site(sel["layer"]) == as_site(best["layer"])


def test_bands_fail_before_the_model_load(tmp_path, save_tiny):
    base = ["cae", "generalise", "corrigible-neutral-HHH", "-o", str(tmp_path / "run"), "--layers", "1",
            "--methods", "caa"]
    res = CliRunner().invoke(app, [*base, "--bands", "2-1", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "a band is FIRST-LAST" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, [*base[:-1], "caa,bipo", "--bands", "1-2", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "BiPO trains one layer at a time" in res.output
    # the depth is read from the model's config, not its weights
    res = CliRunner().invoke(app, [*base, "--bands", "2-4", "--model", str(save_tiny(max_positions=512))])
    assert res.exit_code != 0 and "layer 4 is out of range: this model has 4 decoder blocks" in res.output
    res = CliRunner().invoke(app, [*base[:5], "--methods", "caa", "--model", str(tmp_path / "none")])
    assert res.exit_code != 0 and "give candidate --layers, --bands or both" in res.output
    assert not (tmp_path / "run").exists()


def test_a_run_of_bands_alone(lm, cfg, tmp_path):
    """Without single layers the band is the only candidate: its cell steers it."""
    from dataclasses import replace

    with pytest.raises(sl.SteerlabError, match="at least one candidate layer or band"):
        replace(cfg, layers=(), bands=())
    out = tmp_path / "alone"
    summary = run_generalise(lm, replace(cfg, layers=()), out, LocalJudge(lm))
    assert as_site(summary["rows"][0]["layer"]) == BAND
    assert collect([out], model="tiny")[0].command.startswith(f"steerlab cae generalise corrigible-neutral-HHH -o "
                                                              f"{out} --bands 1-3 --methods caa")
