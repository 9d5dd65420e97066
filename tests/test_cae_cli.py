"""`steerlab cae ...` end to end on a tiny model saved to disk (loaded by path, as a user would)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from steerlab import results
from steerlab.cli import app

ROWS = [{"question": f"Is the following statement something you would say?\n\"Plan {i} is fun\"",
         "answer_matching_behavior": " Yes" if i % 2 else " No", "answer_not_matching_behavior": " No" if i % 2 else " Yes"}
        for i in range(14)]


@pytest.fixture(scope="module")
def setup(save_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny(max_positions=256)
    data = root / "toy.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    (root / "prompts.json").write_text(json.dumps([{"id": 1, "prompt": "Tea or coffee?"},
                                                   {"id": 2, "prompt": "Agree?", "answer_matching_behavior": "Yes",
                                                    "answer_not_matching_behavior": "No"}]))
    (root / "wiki.txt").write_text("Rivers run to the sea and hills stand still . " * 20)
    return root, model_dir, data


def invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_stage_commands(setup):
    root, model, data = setup
    out = root / "out"
    common = ["--model", model, "--n-train", 6, "--n-test", 4, "--threads", 1]
    text = invoke("cae", "layers", data, "--out", out, "--layers", "0,2", "--strength", 0.5, *common)
    assert "best layer at +0.5" in text and (out / "caa.safetensors").is_file()
    layer = results.read_json(out / "layer_sweep.json")["best_layer"]
    vec = out / "caa.safetensors"
    invoke("cae", "strengths", data, "--out", out, "--layer", layer, "--strengths", "-1,1", "--vector", vec, *common)
    assert len(results.read_json(out / "strength_sweep.json")["rows"]) == 3
    res = CliRunner().invoke(app, ["cae", "strengths", str(data), "--out", str(out), "--layer", "2", "--model", str(model)])
    assert res.exit_code == 1 and "already exists" in res.output  # no silent overwrite
    # (samples and compare are the same plumbing over sample_count_plan / method_plan, tested in test_cae_sweeps)
    invoke("cae", "side-effects", data, "--out", out, "--layer", 2, "--vector", vec, "--strengths", "0.5",
           "--corpus", root / "wiki.txt", "--tokens", 64, "--window", 32, "--model", model, "--n-train", 6)
    constant = results.read_json(out / "side_effects.json")
    assert [r["relative"] for r in constant["rows"]] == [0.0, 0.5]
    invoke("cae", "side-effects", data, "--out", root / "first4", "--layer", 2, "--vector", vec, "--strengths", "0.5",
           "--corpus", root / "wiki.txt", "--tokens", 64, "--window", 32, "--model", model, "--n-train", 6,
           "--schedule", "first:4")
    first = results.read_json(root / "first4" / "side_effects.json")
    assert first["config"]["schedule"] == "first:4" and "schedule" not in constant["config"]
    assert first["rows"][1]["perplexity_ratio"] != constant["rows"][1]["perplexity_ratio"]
    invoke("cae", "ood", data, "--out", out, "--layer", 2, "--vector", vec, "--prompts", root / "prompts.json",
           "--max-new-tokens", 3, "--model", model, "--n-train", 6)
    assert {m["measure"] for m in results.read_json(out / "ood.json")["measures"]} >= {"judge", "logprob_gap"}
    invoke("report", out)
    assert (out / "report.html").is_file()
