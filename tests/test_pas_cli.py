"""`steerlab pas` end to end on a tiny saved model: files written, the vector carries its chosen layer,
strength and positions, and `steerlab generate --vector` steers with exactly those; bad input gives
one line naming the file/dataset and the item."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.vector import SteeringVector

runner = CliRunner()
WORDS = ["red", "blue", "green", "cat", "dog", "tree", "sun", "moon"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n):
    return [{"question": f"Question {i}?", "choices": [f"{WORDS[(i + j) % 8]} {j}" for j in range(2 + i % 2)],
             "answer": i % 2} for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(save_tiny):
    return save_tiny(max_positions=512)


def test_pas_writes_results_and_a_vector_that_generate_uses(model_dir, tmp_path, monkeypatch):
    data = _write(tmp_path / "toy.jsonl", _rows(20))
    out = tmp_path / "out"
    args = ["pas", "--data", str(data), "--model", str(model_dir), "--method", "ipas-wo,pasf", "--seeds", "2",
            "--layers", "1,2", "--strengths", "1,4", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    for f in ("results.json", "runs.csv", "grid.csv", "vector.safetensors", "vector_pasf.safetensors", "delta.png",
              "grid_ipas-wo.png", "letters_pasf.png"):
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["strengths"] == [-4.0, -1.0, 1.0, 4.0] and len(res["runs"]) == 2
    assert set(res["summary"]) == {"ipas-wo", "pasf"} and "ci_low" in res["summary"]["ipas-wo"]["delta"]
    assert len((out / "grid.csv").read_text().splitlines()) == 1 + 2 * 2 * 2 * 4
    vec = SteeringVector.load(out / "vector.safetensors")
    e = vec.meta
    assert vec.meta.method == "ipas-wo" and vec.layers == tuple(e.selected_layers)
    assert e.positions == "last_prompt" and e.strength in (-4.0, -1.0, 1.0, 4.0)
    assert "Delta" in r.output

    again = runner.invoke(app, args)  # refuses to overwrite
    assert again.exit_code == 1 and "already exists; pass --force" in again.output

    seen = {}

    def fake_generate(lm, prompts, steering=None, **kw):
        seen["steering"] = steering
        return ["ok"] * len(prompts)

    monkeypatch.setattr(importlib.import_module("steerlab.generation"), "generate", fake_generate)
    g = runner.invoke(app, ["generate", "Hello", "--vector", str(out / "vector.safetensors"), "--model", str(model_dir)])
    assert g.exit_code == 0, g.output
    s = seen["steering"]
    assert (s.strength, list(s.layers), s.positions) == (e.strength, list(e.selected_layers), "last_prompt")
    monkeypatch.undo()
    real = runner.invoke(app, ["generate", "Hello", "--vector", str(out / "vector.safetensors"), "--model",
                               str(model_dir), "--max-new-tokens", "3"])
    assert real.exit_code == 0, real.output

    tr = runner.invoke(app, ["pas-transfer", str(out / "vector.safetensors"), "--data", str(data), "--model",
                             str(model_dir), "--cap", "6", "--out", str(tmp_path / "tr.json")])
    assert tr.exit_code == 0, tr.output
    assert json.loads((tmp_path / "tr.json").read_text())["runs"][0]["n_items"] == 6


@pytest.mark.parametrize("rows, message", [
    ([{"question": "q", "choices": ["a", "b"], "answer": "c"}] * 3, r"line 1: gold answer 'c' is not among the choices"),
    ([{"question": "q", "choices": ["a", "a"], "answer": 0}], r"line 1: duplicate choice 'a'"),
    (_rows(3), r"toy: 3 items give train/validation/test splits of 3/0/0; PAS needs at least 2/1/1"),
    ([{"question": "q", "choices": [f"c{j}" for j in range(27)], "answer": 0}] * 6,
     r"toy item 0: 27 choices but only 26 answer letters"),
])
def test_bad_data_is_one_line_naming_file_and_item(model_dir, tmp_path, rows, message):
    data = _write(tmp_path / "toy.jsonl", rows)
    r = runner.invoke(app, ["pas", "--data", str(data), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                            "--layers", "1", "--strengths", "1", "--seeds", "1"])
    assert r.exit_code == 1
    assert "error:" in r.output and re.search(message, r.output.replace("\n", " ")), r.output


def test_bad_options(model_dir, tmp_path):
    data = _write(tmp_path / "toy.jsonl", _rows(10))
    for extra, message in ((["--method", "caa"], "unknown PAS method 'caa'"),
                           (["--strengths", "x"], "cannot read strengths"),
                           (["--layers", "99"], "layer")):
        r = runner.invoke(app, ["pas", "--data", str(data), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                                *extra])
        assert r.exit_code == 1 and message in r.output, r.output
    r = runner.invoke(app, ["pas", "--data", "bbq-race-x-ses", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "has no local data" in r.output
