"""`positions` of `steerlab cae generalise`: every steered pass of a cell (the choice, the in-distribution effect,
the OOD responses) adds the vector where the run says, checked against the plain computations at that policy."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

import steerlab as sl
from steerlab.cae.generalise import GeneraliseConfig, run_generalise, split_behaviour
from steerlab.cae.generalise_report import collect
from steerlab.cae.judge import LocalJudge
from steerlab.cae.ood import evaluate_ood, load_ood_cases, read_generations
from steerlab.cae.verdicts import sign_check
from steerlab.cli import app

R = 4.0


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=512)


@pytest.fixture(scope="module")
def run(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("positions") / "all"
    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("caa",), layers=(1, 2), relative=R, n_train=4,
                           n_val=4, n_test=4, ood_limit=1, max_new_tokens=3, corpus_tokens=128, window=64,
                           positions="all")
    run_generalise(lm, cfg, out, LocalJudge(lm))
    return cfg, out


def _effects(*rows: dict) -> list[float]:
    return [x for r in rows for x in (r["effect_plus"], r["effect_minus"])]


def test_choice_and_in_distribution_steer_at_the_runs_positions(lm, run):
    cfg, out = run
    cell = out / "caa" / "seed0"
    vec = sl.SteeringVector.load(cell / "vector.safetensors")
    data = split_behaviour(cfg)
    sel = json.loads((cell / "selection.json").read_text())
    want = sign_check(lm, vec, data.val, list(cfg.layers), strength=R, positions="all")
    assert _effects(*sel["rows"]) == pytest.approx(_effects(*want), abs=1e-6)
    answer = sign_check(lm, vec, data.val, list(cfg.layers), strength=R, positions="answer")
    assert _effects(*answer) != pytest.approx(_effects(*want), abs=1e-6)
    ind = json.loads((cell / "in_distribution.json").read_text())
    ref = sign_check(lm, vec, data.test, [sel["layer"]], strength=R, positions="all")[0]
    assert _effects(ind) == pytest.approx(_effects(ref), abs=1e-6)


def test_ood_responses_are_steered_on_the_prompt_too(lm, run):
    cfg, out = run
    cell = out / "caa" / "seed0"
    vec = sl.SteeringVector.load(cell / "vector.safetensors")
    layer = json.loads((cell / "selection.json").read_text())["layer"]
    differs = 0
    for name in ("ood_plus", "ood_minus"):
        assert json.loads((cell / name / "ood.json").read_text())["config"]["positions"] == "all"
        steered = [g for g in read_generations(cell / name / "ood_generations.jsonl").values()
                   if g.condition == "steered"]
        assert steered and all(g.positions == "all" for g in steered)
        for g in steered:
            term = sl.Steering(vec, g.strength, (layer,), "all")
            assert g.response == sl.generate(lm, [g.prompt], term, max_new_tokens=3)[0]
            at_answer = sl.Steering(vec, g.strength, (layer,), "after_user")
            differs += g.response != sl.generate(lm, [g.prompt], at_answer, max_new_tokens=3)[0]
    assert differs  # the prompt's steering changed some response, so the check above can tell the policies apart
    assert "--positions all" in collect([out], model="tiny")[0].command


def test_saved_responses_steered_elsewhere_are_not_reused(lm, run, tmp_path):
    cfg, out = run
    cell = out / "caa" / "seed0"
    shutil.copy(cell / "ood_plus" / "ood_generations.jsonl", tmp_path / "ood_generations.jsonl")
    saved = read_generations(tmp_path / "ood_generations.jsonl")
    g = next(g for g in saved.values() if g.condition == "steered")
    vec = sl.SteeringVector.load(cell / "vector.safetensors")
    cases = load_ood_cases("corrigible-neutral-HHH", kinds=cfg.ood_kinds, lengths=cfg.ood_lengths, limit=1)
    res = evaluate_ood(lm, "corrigible-neutral-HHH", cases, vec, g.layer, g.strength, LocalJudge(lm),
                       out_dir=tmp_path, positions="answer", max_new_tokens=3)
    steered = [r for r in res.records if r["condition"] == "steered"]
    assert steered and all(r["positions"] == "answer" for r in steered)
    unsteered = {r["key"]: r["response"] for r in res.records if r["condition"] == "unsteered"}
    assert unsteered == {k: s.response for (k, c), s in saved.items() if c == "unsteered"}


def test_a_run_directory_keeps_its_positions(lm, run):
    cfg, out = run
    with pytest.raises(sl.SteerlabError, match="differs in positions"):
        run_generalise(lm, GeneraliseConfig(**{**cfg.__dict__, "positions": "answer"}), out, LocalJudge(lm))


def test_unknown_positions_fail_before_the_model_load(tmp_path):
    with pytest.raises(sl.SteerlabError, match="positions must be one of answer, all, after_user, last_prompt"):
        GeneraliseConfig("corrigible-neutral-HHH", positions="prompt")
    result = CliRunner().invoke(app, ["cae", "generalise", "corrigible-neutral-HHH", "-o", str(tmp_path / "run"),
                                      "--layers", "1", "--positions", "prompt", "--model", str(tmp_path / "none")])
    assert result.exit_code != 0 and "positions must be one of" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_rerun_commands_name_the_model_unless_it_is_the_embedded_default(run, tmp_path):
    from dataclasses import replace

    from steerlab.models import EMBEDDED_MODEL_ID

    _, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = copy / "caa" / "seed0" / "vector.safetensors"
    vec = sl.SteeringVector.load(path)
    assert f"--model {vec.meta.model_id} --threads 1" in collect([copy])[0].command
    sl.SteeringVector(vec.directions, replace(vec.meta, model_id=EMBEDDED_MODEL_ID)).save(path, force=True)
    command = collect([copy])[0].command
    assert "--model" not in command and command.endswith("--positions all --threads 1")


def test_persona_reading_reaches_the_vector_and_the_rerun_command(lm, tmp_path):
    """`persona_reading="last"`: the cell's persona vector is read at each answer's last token (recorded in its
    metadata), and the printed rerun command names the reading."""
    out = tmp_path / "last"
    cfg = GeneraliseConfig("corrigible-neutral-HHH", methods=("persona",), layers=(1,), relative=R, n_train=4,
                           n_val=4, n_test=4, ood_limit=1, max_new_tokens=3, corpus_tokens=128, window=64,
                           persona_questions=2, persona_samples=1, persona_tokens=4, persona_judge=False,
                           persona_reading="last")
    run_generalise(lm, cfg, out, LocalJudge(lm))
    vec = sl.SteeringVector.load(out / "persona" / "seed0" / "vector.safetensors")
    assert vec.meta.position == "response-last"
    assert "--persona-reading last" in collect([out])[0].command
    with pytest.raises(sl.SteerlabError, match="differs in persona_reading"):
        run_generalise(lm, GeneraliseConfig(**{**cfg.__dict__, "persona_reading": "mean"}), out, LocalJudge(lm))
